"""Reading JSONL files of tasks, records or rows: each line one JSON object, a bad one named by file and line."""

from __future__ import annotations

from typing import Any

import orjson

from sparring.core.errors import InputError


def json_object(line: bytes, where: str, what: str, error: type[InputError] = InputError) -> dict[str, Any]:
    """One line as a JSON object (`what` names it in the message: "a record", "a row"), else `error`."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise error(f"{where}: {what} must be a JSON object, got {type(value).__name__}")
    return value
