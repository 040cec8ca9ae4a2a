"""An upstream's server-sent events, read as they arrive: split into events (never waiting for more than one),
each looked at once (is it output, the finish, the usage, an error?) and passed on byte for byte unless the
gateway must change it (the usage: energy added, or removed when the client did not ask for it): re-framed by
serve's `sse`, the one framing of an event in greenlm."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from greenlm.serve.sse import sse

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class EventSplitter:
    """Bytes in, whole events out (each with its blank-line ending)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        events = []
        while True:
            m = _BOUNDARY.search(self._buffer)
            if m is None:
                return events
            events.append(self._buffer[: m.end()])
            self._buffer = self._buffer[m.end() :]

    def rest(self) -> bytes:
        """What is left when the stream ends (an event without its blank line)."""
        rest, self._buffer = self._buffer, b""
        return rest


@dataclass
class Event:
    raw: bytes
    data: str | None = None  # the data lines joined (None: a comment, a ping, a field without data)
    obj: dict | None = None  # the data as a JSON object

    @property
    def done(self) -> bool:
        return self.data is not None and self.data.strip() == "[DONE]"

    @property
    def error(self) -> dict | None:
        return (
            self.obj.get("error")
            if self.obj is not None and isinstance(self.obj.get("error"), dict)
            else None
        )

    @property
    def usage(self) -> dict | None:
        usage = self.obj.get("usage") if self.obj is not None else None
        return usage if isinstance(usage, dict) else None

    @property
    def choices(self) -> list:
        choices = self.obj.get("choices") if self.obj is not None else None
        return choices if isinstance(choices, list) else []

    def output_text(self) -> str | None:
        """The output this chunk carries (text, reasoning, or a tool call's arguments); None when none."""
        found = None
        for choice in self.choices:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else None
            pieces = (
                [choice.get("text")]
                if delta is None
                else [delta.get("content"), delta.get("reasoning_content")]
            )
            if delta is not None and delta.get("tool_calls"):
                pieces.append(json.dumps(delta["tool_calls"]))
            text = "".join(p for p in pieces if isinstance(p, str))
            if text:
                found = (found or "") + text
        return found

    def finished(self) -> bool:
        return any(isinstance(c, dict) and c.get("finish_reason") for c in self.choices)

    def without_usage(self) -> str:
        """The event with its usage removed (the client did not ask for it), framed as serve frames one."""
        return sse({k: v for k, v in self.obj.items() if k != "usage"})


def parse(raw: bytes) -> Event:
    lines = raw.decode("utf-8", errors="replace").splitlines()
    data = [line[5:].lstrip(" ") if line.startswith("data:") else None for line in lines]
    data = [d for d in data if d is not None]
    if not data:
        return Event(raw)
    text = "\n".join(data)
    event = Event(raw, text)
    if not event.done:
        try:
            obj = json.loads(text)
        except ValueError:
            return event
        if isinstance(obj, dict):
            event.obj = obj
    return event
