"""config.common.mutation_rules.v3.HeaderMutation lists: Envoy's ordered header edits, compiled once (sans-IO).

Unlike a route's `*_headers_to_add` (one level: removals first, then every add decided against the headers as
they were), a mutation list runs one mutation after another on the live headers, as Envoy's HeaderMutations
does: `remove` drops a name, `remove_on_match` every header whose name its StringMatcher matches, and `append`
is one HeaderValueOption under its `append_action` (ADD_IF_ABSENT and OVERWRITE_IF_EXISTS look at the headers the
earlier mutations left). A value may use the substitution formats pylon's route header rules know
(proxy/headers.py: `%REQ(...)%`, `%DOWNSTREAM_REMOTE_ADDRESS%`...): each append is compiled as a one-entry level
of those rules, so both share one formatter and one set of refusals. Pseudo-headers and `host` are refused, as
the route rules refuse them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pylon.config.envoy import EnvoyStruct, HeaderValueOption, HttpText, StringMatcher, _exactly_one
from pylon.config.errors import FieldError
from pylon.proxy.headers import Downstream, HeaderList, HeaderOps, RequestLookup, compile_header_level
from pylon.proxy.router import _compile_string_matcher
from pylon.regex import get_engine


class RemoveOnMatch(EnvoyStruct, kw_only=True):
    """config.common.mutation_rules.v3.HeaderMutation.RemoveOnMatch."""

    key_matcher: StringMatcher | None = None

    def __post_init__(self) -> None:
        if self.key_matcher is None:
            raise FieldError("key_matcher", "missing required field")


class HeaderMutation(EnvoyStruct, kw_only=True):
    """config.common.mutation_rules.v3.HeaderMutation: oneof action {remove, append, remove_on_match}."""

    remove: HttpText | None = None
    append: HeaderValueOption | None = None
    remove_on_match: RemoveOnMatch | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "remove", "append", "remove_on_match")
        if self.remove is not None and (not self.remove or self.remove.startswith(":")
                                        or self.remove.lower() == "host"):
            raise FieldError("remove", f"header {self.remove!r} may not be removed (pseudo-headers and host are "
                             "off limits)")


#: one compiled mutation: (headers, downstream, request lookup) -> None, editing the headers in place
_Step = Callable[[HeaderList, "Downstream | None", "RequestLookup | None"], None]


def _removal(name: bytes) -> _Step:
    return lambda headers, downstream, request: headers.remove(name)


def _removal_on_match(matches: Callable[[Any], bool]) -> _Step:
    def step(headers: HeaderList, downstream: Downstream | None, request: RequestLookup | None) -> None:
        headers.items = [item for item in headers.items if not matches(item[0])]
    return step


def _addition(ops: HeaderOps) -> _Step:
    return lambda headers, downstream, request: ops.apply(headers, downstream, request)


class HeaderMutations:
    """A compiled mutation list; `apply` edits a HeaderList in place, in the configured order."""

    __slots__ = ("steps", "empty", "reads_request")

    def __init__(self, mutations: Sequence[HeaderMutation], field: str) -> None:
        steps: list[_Step] = []
        reads_request = False
        for i, mutation in enumerate(mutations):
            if mutation.remove is not None:
                steps.append(_removal(mutation.remove.lower().encode()))
            elif mutation.append is not None:
                try:
                    ops = HeaderOps([compile_header_level([mutation.append], [])])
                except ValueError as exc:
                    raise FieldError(f"{field}[{i}].append", str(exc)) from None
                reads_request = reads_request or ops.reads_request
                steps.append(_addition(ops))
            else:
                assert mutation.remove_on_match is not None and mutation.remove_on_match.key_matcher is not None
                steps.append(_removal_on_match(_compile_string_matcher(mutation.remove_on_match.key_matcher,
                                                                       get_engine(), as_bytes=True)))
        self.steps = tuple(steps)
        self.empty = not steps
        #: True when a value reads the request (%REQ(...)%): the caller passes a lookup
        self.reads_request = reads_request

    def apply(self, headers: HeaderList, downstream: Downstream | None = None,
              request: RequestLookup | None = None) -> None:
        for step in self.steps:
            step(headers, downstream, request)
