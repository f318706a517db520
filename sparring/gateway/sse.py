"""Server-sent events as a relay reads them: whole events out of network reads, and each event's data.

vLLM separates events by a blank line (`\\n\\n`) and puts each chunk on one `data:` line; a network
read may end anywhere, so partial events wait in the buffer for the next read.
"""

from __future__ import annotations

DONE = b"[DONE]"


class EventSplitter:
    """Feeds on raw bytes; hands back every event completed so far (without its separator)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, piece: bytes) -> list[bytes]:
        """The events this read completed, in order."""
        self._buffer += piece
        events = []
        while (end := self._buffer.find(b"\n\n")) != -1:
            events.append(self._buffer[:end])
            self._buffer = self._buffer[end + 2 :]
        return events


def event_data(event: bytes) -> bytes | None:
    """The payload of a `data:` event, or None for any other event (a comment, a named event)."""
    if not event.startswith(b"data:"):
        return None
    return event[5:].lstrip()


def data_event(data: bytes) -> bytes:
    """One `data:` event, separator included."""
    return b"data: " + data + b"\n\n"
