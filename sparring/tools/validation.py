"""Argument checking for tool calls: the raw JSON a model wrote, against the tool's JSON schema.

A small validator for the schema subset tool definitions use; its messages name the field, so a
model (or a person reading a transcript) sees exactly what was wrong.
"""

from __future__ import annotations

from typing import Any

import orjson

from sparring.tools.specs import ToolSpec

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


class ToolArgumentError(ValueError):
    """Arguments that are not valid JSON or do not fit the tool's schema."""


def parse_arguments(spec: ToolSpec, raw: str | dict[str, Any]) -> dict[str, Any]:
    """The call's arguments as a dict, checked against `spec`, or ToolArgumentError saying why not."""
    if isinstance(raw, dict):
        arguments = raw
    else:
        try:
            arguments = orjson.loads(raw or "{}")
        except orjson.JSONDecodeError as exc:
            raise ToolArgumentError(f"{spec.name}: arguments are not valid JSON ({exc}): {raw[:200]!r}") from None
    problem = schema_problem(arguments, spec.parameters, "arguments")
    if problem:
        raise ToolArgumentError(f"{spec.name}: {problem}")
    return arguments


def schema_problem(value: Any, schema: dict[str, Any], where: str) -> str | None:
    """The first way `value` breaks `schema`, or None."""
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        if not any(_is_type(value, name) for name in names):
            return f"{where} must be {' or '.join(names)}, got {type(value).__name__} {value!r}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where} must be one of {schema['enum']!r}, got {value!r}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{where} must be at least {schema['minimum']}, got {value}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{where} must be at most {schema['maximum']}, got {value}"
    if isinstance(value, dict):
        return _object_problem(value, schema, where)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problem = schema_problem(item, schema["items"], f"{where}[{i}]")
            if problem:
                return problem
    return None


def _object_problem(value: dict[str, Any], schema: dict[str, Any], where: str) -> str | None:
    properties = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            return f"{where} is missing the required field {name!r}"
    for name, item in value.items():
        if name in properties:
            problem = schema_problem(item, properties[name], f"{where}.{name}")
            if problem:
                return problem
        elif schema.get("additionalProperties") is False:
            return f"{where} has an unknown field {name!r}; allowed: {', '.join(properties) or 'none'}"
    return None


def _is_type(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES.get(name, (object,)))
