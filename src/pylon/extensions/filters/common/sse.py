"""Server-Sent Events as Envoy 1.40's SSE parser reads a response body: events cut out of a stream of pieces (sans-IO).

Why: sse_to_metadata looks inside each event of a `text/event-stream` body as it streams by; the pieces a
body arrives in split events anywhere (mid-line, between a CR and its LF), so the framing keeps what it has
not yet cut and hands over each event once its blank line came. The rules are WHATWG's as Envoy applies them:
a line ends at LF, CR or CRLF (a CR last in what came so far waits for the next piece, unless the body ended);
a blank line ends an event; a UTF-8 byte order mark is dropped where an event starts (Envoy looks for one at
each event, not only at the stream's start); an event never ended by a blank line is dropped when the body
ends. In an event, a line starting with `:` is a comment; `name: value` drops one space after the colon; a
line without a colon is a field with an empty value; several `data` lines are joined with LF.

`max_event_size` (Envoy's default 8192, 0 for none): when what is held without a complete event grows past
it, all of it is dropped and counted (Envoy's `event_too_large`), and framing starts again with the next
piece - mid-event, as Envoy's does.
"""

from __future__ import annotations

_BOM = b"\xef\xbb\xbf"


def _line_end(buffer: bytes, start: int, end_stream: bool) -> tuple[int, int]:
    """(end of the line starting at `start`, start of the next); (-1, -1) while the line may still grow."""
    lf = buffer.find(b"\n", start)
    cr = buffer.find(b"\r", start, lf if lf >= 0 else len(buffer))
    if cr < 0:
        if lf >= 0:
            return lf, lf + 1
        return (len(buffer), len(buffer)) if end_stream else (-1, -1)
    if cr + 1 < len(buffer):
        return cr, cr + 2 if buffer[cr + 1] == 0x0A else cr + 1
    return (cr, cr + 1) if end_stream else (-1, -1)


def event_bounds(buffer: bytes, start: int, end_stream: bool, no_cr: bool = False) -> tuple[int, int, int] | None:
    """The next complete event from `start`: (its first byte, its end before the blank line, where the next one
    starts); None when none is complete yet (or, at the body's end, ever). `no_cr`: the caller knows `buffer` has
    no CR, so lines end at LF only and the blank line is the first LF LF (or an LF where the event starts)."""
    if buffer.startswith(_BOM, start):
        start += 3
    if no_cr:
        if buffer.startswith(b"\n", start):
            return start, start, start + 1
        blank = buffer.find(b"\n\n", start)
        return None if blank < 0 else (start, blank + 1, blank + 2)
    event_start = position = start
    size = len(buffer)
    while position < size:
        line_end, next_line = _line_end(buffer, position, end_stream)
        if line_end < 0:
            return None
        if line_end == position:
            return event_start, position, next_line
        position = next_line
    return None


def event_data(event: bytes) -> bytes | None:
    """An event's `data` field (its `data` lines joined with LF), None when it has none; other fields (id, event,
    retry) mean nothing to a metadata reader and are skipped."""
    data: list[bytes] | None = None
    for line in _lines(event):
        if line[:4] != b"data" or (len(line) > 4 and line[4] != 0x3A):  # not `data` nor `data:...`
            continue
        value = line[5:]
        if value[:1] == b" ":
            value = value[1:]
        if data is None:
            data = [value]
        else:
            data.append(value)
    return None if data is None else b"\n".join(data)


def _lines(event: bytes) -> list[bytes]:
    """An event's lines (LF, CR or CRLF ended; the last may have no end)."""
    if b"\r" not in event:
        return event.split(b"\n")  # a last empty piece (after the final LF) is no field
    lines: list[bytes] = []
    position = 0
    size = len(event)
    while position < size:
        line_end, next_line = _line_end(event, position, True)
        lines.append(event[position:line_end])
        position = next_line
    return lines


class EventFramer:
    """One body's events, cut as its pieces arrive; `max_event_size` bounds what is held without an event."""

    __slots__ = ("held", "max_event_size", "too_large")

    def __init__(self, max_event_size: int) -> None:
        self.held = b""
        self.max_event_size = max_event_size
        #: how many times held bytes were dropped for growing past max_event_size
        self.too_large = 0

    def feed(self, data: bytes, end_stream: bool) -> list[bytes]:
        """The events `data` completes (each without its blank line), in order."""
        buffer = self.held + data if self.held else data
        events: list[bytes] = []
        start = 0
        no_cr = b"\r" not in buffer
        while start < len(buffer):
            bounds = event_bounds(buffer, start, end_stream, no_cr)
            if bounds is None:
                if self.max_event_size and len(buffer) - start > self.max_event_size:
                    self.too_large += 1
                    start = len(buffer)
                break
            events.append(buffer[bounds[0]:bounds[1]])
            start = bounds[2]
        self.held = buffer[start:]
        return events
