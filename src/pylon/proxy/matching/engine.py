"""A resolved `config.matcher.Matcher` compiled into one callable (sans-IO, no protocol of its own).

`compile_matcher(config, vocabulary)` -> `match(data)`, answering the action the
tree leads to, `NO_MATCH` (None), or `INSUFFICIENT` when an input's data is
not there yet (a response header asked for while the request is decoded): the
caller asks again when it has more. `data` is whatever the caller's inputs
read; the engine only passes it on. The vocabulary maps each decoded input
Struct type to a factory of readers (`reader(data) -> str | None |
NOT_AVAILABLE`), each input matcher Struct type to a factory of predicates over
the value, and turns each decoded action into what `match` answers - so the
router, the HTTP filters and the listener each bring their own and the engine
stays the same.

As Envoy 1.40 evaluates a tree (source/common/matcher/*.h):

- `matcher_list`: field matchers in order; the first whose predicate holds
  gives its `on_match`; if that comes to no match (a nested matcher matched
  nothing, or keep_matching) the next field matcher is tried; at the end
  `on_no_match`. A predicate that cannot decide yet makes the whole list wait.
- predicates: a single input's value against a StringMatcher (an absent value
  matches nothing) or an input matcher; `and` stops at the first no or
  undecided; `or` is undecided only when nothing matched and one was undecided;
  `not` inverts a decided answer.
- `exact_match_map`: the value looked up; a hit that comes to no match, or a
  miss, takes `on_no_match`; an absent value takes `on_no_match` at once.
- `prefix_match_map`: every key that is a prefix of the value, longest first,
  until one comes to a match (Envoy's
  `prefix_map_matcher_resume_after_subtree_miss`, on by default); then
  `on_no_match`.
- a custom `IPMatcher` tree: see config/matcher.py `IPMatcher`.
- `keep_matching` never reaches the engine: Envoy 1.40 refuses it wherever
  pylon takes matchers (config/matcher.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from ipaddress import ip_address
from typing import Any, NamedTuple

from pylon.config.matcher import IPMatcher, Matcher, OnMatch, Predicate, TypedExtension
from pylon.proxy.router import _compile_string_matcher
from pylon.regex import RegexEngine, get_engine

NO_MATCH = None


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: `match` could not decide: an input's data is not available yet
INSUFFICIENT: Any = _Sentinel("INSUFFICIENT")
#: what an input reader answers when its data is not there yet (e.g. response headers while decoding)
NOT_AVAILABLE: Any = _Sentinel("NOT_AVAILABLE")

Reader = Callable[[Any], Any]  # data -> str | None (absent) | NOT_AVAILABLE
Match = Callable[[Any], Any]  # data -> action | NO_MATCH | INSUFFICIENT
_Test = Callable[[Any], "bool | None"]  # None: undecided


class Vocabulary(NamedTuple):
    """What a caller's matchers may say: input readers and input matchers by decoded Struct type, and how an
    action becomes what `match` answers (called once per action, at compile time)."""

    inputs: Mapping[type, Callable[[Any], Reader]]
    action: Callable[[Any], Any]
    input_matchers: Mapping[type, Callable[[Any, RegexEngine], Callable[[str], bool]]] = {}


def compile_matcher(config: Matcher, vocabulary: Vocabulary, regex_engine: RegexEngine | None = None) -> Match:
    """`config` (resolved: its typed extensions decoded) as one callable; ValueError for an input, input matcher
    or action outside `vocabulary` (the registry categories the owner resolved with should have refused it)."""
    return _Compiler(vocabulary, regex_engine if regex_engine is not None else get_engine()).tree(config)


class _Compiler:
    def __init__(self, vocabulary: Vocabulary, engine: RegexEngine) -> None:
        self.vocabulary = vocabulary
        self.engine = engine

    def tree(self, config: Matcher) -> Match:
        otherwise = self.on_match(config.on_no_match) if config.on_no_match is not None else _no_match
        if config.matcher_list is not None:
            return self.listed(config, otherwise)
        if config.matcher_tree is not None:
            return self.mapped(config, otherwise)
        return otherwise

    def listed(self, config: Matcher, otherwise: Match) -> Match:
        fields = tuple((self.predicate(f.predicate), self.on_match(f.on_match))
                       for f in config.matcher_list.matchers)  # type: ignore[union-attr]

        def match(data: Any) -> Any:
            for test, then in fields:
                verdict = test(data)
                if verdict is None:
                    return INSUFFICIENT
                if verdict:
                    result = then(data)
                    if result is not NO_MATCH:
                        return result
            return otherwise(data)

        return match

    def mapped(self, config: Matcher, otherwise: Match) -> Match:
        tree = config.matcher_tree
        read = self.reader(tree.input)  # type: ignore[union-attr]
        if tree.custom_match is not None:  # type: ignore[union-attr]
            return self.ip_ranges(tree.custom_match.typed_config, read, otherwise)  # type: ignore[union-attr]
        if tree.exact_match_map is not None:  # type: ignore[union-attr]
            exact = {key: self.on_match(on) for key, on in tree.exact_match_map.map.items()}  # type: ignore[union-attr]

            def match_exact(data: Any) -> Any:
                value = read(data)
                if value is NOT_AVAILABLE:
                    return INSUFFICIENT
                if value is not None:
                    then = exact.get(value)
                    if then is not None:
                        result = then(data)
                        if result is not NO_MATCH:
                            return result
                return otherwise(data)

            return match_exact
        by_prefix = {key: self.on_match(on) for key, on in tree.prefix_match_map.map.items()}  # type: ignore[union-attr]
        lengths = sorted({len(key) for key in by_prefix}, reverse=True)

        def match_prefix(data: Any) -> Any:
            value = read(data)
            if value is NOT_AVAILABLE:
                return INSUFFICIENT
            if value is not None:
                n = len(value)
                for length in lengths:  # longest first; a few lengths, one dict probe each
                    if length <= n:
                        then = by_prefix.get(value[:length])
                        if then is not None:
                            result = then(data)
                            if result is not NO_MATCH:
                                return result
            return otherwise(data)

        return match_prefix

    def ip_ranges(self, config: IPMatcher, read: Reader, otherwise: Match) -> Match:
        # (network, longest-first sort key, exclusive, then) per range; few ranges: a scan, not a trie
        ranges = []
        for index, range_matcher in enumerate(config.range_matchers):
            then = self.on_match(range_matcher.on_match)
            for cidr in range_matcher.ranges:
                network = cidr.network
                ranges.append((network, (-network.prefixlen, index), range_matcher.exclusive, then))

        def match_ip(data: Any) -> Any:
            value = read(data)
            if value is NOT_AVAILABLE:
                return INSUFFICIENT
            try:
                address = ip_address(value) if value is not None else None
            except ValueError:
                address = None
            if address is None:
                return otherwise(data)
            holding = sorted((entry for entry in ranges if address in entry[0]), key=lambda entry: entry[1])
            for i, (_, _, exclusive, then) in enumerate(holding):
                if i and exclusive:
                    continue
                result = then(data)
                if result is not NO_MATCH:
                    return result
            return otherwise(data)

        return match_ip

    def on_match(self, config: OnMatch) -> Match:
        if config.action is not None:
            action = self.vocabulary.action(config.action.typed_config)
            return lambda data: action
        return self.tree(config.matcher)  # type: ignore[arg-type]

    def predicate(self, config: Predicate) -> _Test:
        if config.single_predicate is not None:
            return self.single(config)
        if config.not_matcher is not None:
            inner = self.predicate(config.not_matcher)

            def negated(data: Any) -> bool | None:
                verdict = inner(data)
                return None if verdict is None else not verdict

            return negated
        if config.and_matcher is not None:
            every = tuple(self.predicate(p) for p in config.and_matcher.predicate)

            def all_of(data: Any) -> bool | None:
                for test in every:
                    verdict = test(data)
                    if not verdict:
                        return verdict  # False, or None: undecided
                return True

            return all_of
        anyone = tuple(self.predicate(p) for p in config.or_matcher.predicate)  # type: ignore[union-attr]

        def any_of(data: Any) -> bool | None:
            undecided = False
            for test in anyone:
                verdict = test(data)
                if verdict:
                    return True
                undecided |= verdict is None
            return None if undecided else False

        return any_of

    def single(self, config: Predicate) -> _Test:
        single = config.single_predicate
        read = self.reader(single.input)  # type: ignore[union-attr]
        if single.value_match is not None:  # type: ignore[union-attr]
            test = _compile_string_matcher(single.value_match, self.engine, as_bytes=False)  # type: ignore
        else:
            custom = single.custom_match.typed_config  # type: ignore[union-attr]
            factory = self.vocabulary.input_matchers.get(type(custom))
            if factory is None:
                raise ValueError(f"input matcher {type(custom).__name__} is not supported here")
            test = factory(custom, self.engine)

        def matches(data: Any) -> bool | None:
            value = read(data)
            if value is NOT_AVAILABLE:
                return None
            return value is not None and test(value)

        return matches

    def reader(self, config: TypedExtension) -> Reader:
        decoded = config.typed_config
        factory = self.vocabulary.inputs.get(type(decoded))
        if factory is None:
            raise ValueError(f"input {type(decoded).__name__} is not supported here")
        return factory(decoded)


def _no_match(data: Any) -> Any:
    return NO_MATCH
