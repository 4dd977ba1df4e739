"""The active stream's lifecycle as three small state machines (h11's style), codec-agnostic.

A `Stream` (stream.py) holds one state per side: the client's request
(`rq_state`), the current upstream attempt (`up_state`) and the response to the
client (`rs_state`). Codec events move them: an HTTP/2 codec would drive the
same states through the same stream methods as the HTTP/1 codec does.

The hot path pays nothing for this: a transition is a plain attribute store of
a small int (the `RQ_*`, `UP_*`, `RS_*` constants, exact ints so the
interpreter's fast comparisons apply), with no check. The allowed transitions
are data here (`REQUEST`, `UPSTREAM`, `RESPONSE`); `checked` makes a stream
class whose every state change is validated against them and logged, which the
sans-IO tests use to replay what a stream did (tests/proxy/test_stream_states.py).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, TypeVar


class RequestState(IntEnum):
    """The client's request, as the stream receives it."""

    RECEIVING_HEADERS = 0
    RECEIVING_BODY = 1  # the head is complete (a bodiless request passes through on its way to DONE)
    DONE = 2  # the whole request arrived


class UpstreamState(IntEnum):
    """The current upstream attempt (a retry starts a new one from RESET)."""

    IDLE = 0  # no attempt yet (a local reply before any upstream leaves it here)
    CONNECTING = 1  # waiting for a pooled or new connection
    SENDING = 2  # connected; the request is still going out
    AWAITING_RESPONSE = 3  # the whole request went out
    RECEIVING_RESPONSE = 4  # the response head came (maybe early, while SENDING)
    DONE = 5  # the response is complete
    UPGRADED = 6  # the upstream switched protocols (101): the connection is a tunnel's now
    RESET = 7  # the attempt ended without a whole response: reset, connect failure, timeout, abandoned


class ResponseState(IntEnum):
    """The response to the client."""

    NOT_STARTED = 0  # nothing decided: a local reply or a retry is still possible
    HELD = 1  # the upstream's head is held for whole-body filters: decided, nothing sent
    SENDING_BODY = 2  # the head went to the client (for a 101: the tunnel runs)
    DONE = 3  # the whole response went out (a local reply goes here at once)
    RESET = 4  # the stream ended without a whole response (client gone, reset after the head, ...)


RQ_HEADERS, RQ_BODY, RQ_DONE = (s.value for s in RequestState)
(UP_IDLE, UP_CONNECTING, UP_SENDING, UP_AWAITING, UP_RECEIVING, UP_DONE, UP_UPGRADED,
 UP_RESET) = (s.value for s in UpstreamState)
RS_NOT_STARTED, RS_HELD, RS_SENDING, RS_DONE, RS_RESET = (s.value for s in ResponseState)

R, U, S = RequestState, UpstreamState, ResponseState
#: Allowed transitions of each machine, from each state (a state absent as a key is final).
REQUEST: dict[RequestState, frozenset[RequestState]] = {
    R.RECEIVING_HEADERS: frozenset({R.RECEIVING_BODY}),
    R.RECEIVING_BODY: frozenset({R.DONE}),
}
UPSTREAM: dict[UpstreamState, frozenset[UpstreamState]] = {
    U.IDLE: frozenset({U.CONNECTING}),
    # UPGRADED: a CONNECT the proxy terminates (connect.py) has no request to send; the connection is the answer
    U.CONNECTING: frozenset({U.SENDING, U.AWAITING_RESPONSE, U.UPGRADED, U.RESET}),
    U.SENDING: frozenset({U.AWAITING_RESPONSE, U.RECEIVING_RESPONSE, U.UPGRADED, U.RESET}),
    U.AWAITING_RESPONSE: frozenset({U.RECEIVING_RESPONSE, U.UPGRADED, U.RESET}),
    U.RECEIVING_RESPONSE: frozenset({U.DONE, U.RESET}),
    U.RESET: frozenset({U.CONNECTING}),  # a retry
}
RESPONSE: dict[ResponseState, frozenset[ResponseState]] = {
    S.NOT_STARTED: frozenset({S.HELD, S.SENDING_BODY, S.DONE, S.RESET}),
    # A held response that outgrows the buffer is dropped unsent: the stream may still answer 500 itself.
    S.HELD: frozenset({S.NOT_STARTED, S.SENDING_BODY, S.RESET}),
    S.SENDING_BODY: frozenset({S.DONE, S.RESET}),
}
del R, U, S

#: The stream attribute each machine lives in, with its states and table.
MACHINES: dict[str, tuple[type[IntEnum], dict[Any, frozenset[Any]]]] = {
    "rq_state": (RequestState, REQUEST),
    "up_state": (UpstreamState, UPSTREAM),
    "rs_state": (ResponseState, RESPONSE),
}


class ForbiddenTransition(Exception):
    """A stream changed a state in a way its table does not allow."""


def check(attribute: str, old: int, new: int) -> None:
    """Raise ForbiddenTransition unless `attribute` may go from `old` to `new`."""
    states, table = MACHINES[attribute]
    if states(new) not in table.get(states(old), frozenset()):
        raise ForbiddenTransition(f"{attribute}: {states(old).name} -> {states(new).name}")


StreamT = TypeVar("StreamT", bound=type)


def checked(stream_cls: StreamT) -> StreamT:
    """A subclass of `stream_cls` whose state changes are validated and logged (`transitions`, in order, as
    (attribute, old, new) with the enum members): the checked mode for tests. The first store of each state
    (the constructor's) must be the machine's initial state; storing the current state again is no change. It sees
    the stores of an interpreted stream class only: a compiled Stream stores its states in C fields, past
    `__setattr__` (stream.pxd)."""

    class CheckedStream(stream_cls):  # type: ignore[valid-type, misc]
        def __setattr__(self, name: str, value: Any) -> None:
            machine = MACHINES.get(name)
            if machine is not None:
                states = machine[0]
                try:
                    old = getattr(self, name)
                except AttributeError:
                    if value != 0:
                        raise ForbiddenTransition(f"{name} starts as {states(value).name}") from None
                    self.__dict__.setdefault("transitions", [])
                else:
                    if old != value:
                        check(name, old, value)
                        self.transitions.append((name, states(old), states(value)))
            super().__setattr__(name, value)

    CheckedStream.__name__ = CheckedStream.__qualname__ = f"Checked{stream_cls.__name__}"
    return CheckedStream  # type: ignore[return-value]
