"""Google RE2, Envoy's default engine (`envoy.regex_engines.google_re2`), and RE2::Set for route tables.

Single patterns go through google-re2's compiled `_re2.RE2.Match` on UTF-8
bytes: its public `fullmatch`/`search` wrap every call in Python-level offset
bookkeeping (~3.6 µs a call here, against ~0.6 µs). Never loop over many RE2
patterns per request (~0.75 µs wrapper overhead each): a route table's
patterns go into one `re2.Set`, which answers for all of them in one pass.
"""

from __future__ import annotations

from typing import Sequence

import re2

DEFAULT_ENGINE = "envoy.regex_engines.google_re2"

# Envoy rejects patterns whose RE2 program is bigger than this
# (runtime key `re2.max_program_size.error_level`, default 100).
ENVOY_MAX_PROGRAM_SIZE = 100

#: The limit engines made from now on take (`set_max_program_size`: the bootstrap's runtime).
_max_program_size = ENVOY_MAX_PROGRAM_SIZE


def set_max_program_size(limit: int | None) -> None:
    """The RE2 program size limit of every engine made from now on (None: Envoy's default, 100).

    Envoy reads it from the runtime (`re2.max_program_size.error_level`) when it compiles a
    regex; a pylon process reads its bootstrap's runtime once, before any engine is made.
    """
    global _max_program_size
    _max_program_size = ENVOY_MAX_PROGRAM_SIZE if limit is None else limit

# RE2::Set's default memory budget (8 MiB) fails to compile a few thousand
# patterns, and when its DFA runs out of memory at match time RE2 reports "no
# match" (the Python wrapper hides the error). The budget is an upper bound on
# the lazily built DFA cache, not an allocation.
SET_MAX_MEM = 512 << 20

_ANCHOR_BOTH = re2._Anchor.ANCHOR_BOTH
_UNANCHORED = re2._Anchor.UNANCHORED


def _utf8_char_len(lead: int) -> int:
    return 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


class _RE2Regex:
    """One RE2 pattern with RE2's own global-replace rules (not Python's `re.sub` rules)."""

    __slots__ = ("pattern", "_groups", "_match", "_rewrites")

    def __init__(self, pattern: str, compiled: re2._Regexp) -> None:
        self.pattern = pattern
        self._groups = compiled.groups
        self._match = compiled._regexp.Match  # (anchor, utf8, pos, endpos) -> [(start, end)] per group
        # Parsed rewrite strings by source text; configs use a handful, so this stays tiny.
        self._rewrites: dict[str, tuple[bytes | int, ...]] = {}

    def fullmatch(self, s: str) -> bool:
        text = s.encode("utf-8", "surrogateescape")
        return self._match(_ANCHOR_BOTH, text, 0, len(text))[0][0] >= 0

    def sub(self, repl: str, s: str) -> str:
        rewrite = self._rewrites.get(repl)
        if rewrite is None:
            rewrite = self._rewrites[repl] = _parse_rewrite(repl, self._groups, self.pattern)
        match = self._match
        text = s.encode("utf-8", "surrogateescape")
        end_of_text = len(text)
        out: list[bytes] = []
        pos = 0
        last_end = -1
        replaced = False
        while pos <= end_of_text:
            spans = match(_UNANCHORED, text, pos, end_of_text)
            start, end = spans[0]
            if start < 0:
                break
            if pos < start:
                out.append(text[pos:start])
            if start == end and start == last_end:
                # RE2 forbids an empty match right where the previous match ended: step one character.
                step = _utf8_char_len(text[pos]) if pos < end_of_text else 1
                out.append(text[pos : pos + step])
                pos += step
                continue
            for piece in rewrite:
                if piece.__class__ is bytes:
                    out.append(piece)  # type: ignore[arg-type]
                else:
                    group_start, group_end = spans[piece]  # type: ignore[index]
                    if group_start >= 0:
                        out.append(text[group_start:group_end])
            pos = last_end = end
            replaced = True
        if not replaced:
            return s
        if pos < end_of_text:
            out.append(text[pos:])
        return b"".join(out).decode("utf-8", "surrogateescape")


def _parse_rewrite(repl: str, groups: int, pattern: str) -> tuple[bytes | int, ...]:
    """Split an RE2 rewrite string into literals and group numbers, rejecting what RE2 rejects."""
    pieces: list[bytes | int] = []
    literal: list[str] = []
    i = 0
    while i < len(repl):
        c = repl[i]
        if c != "\\":
            literal.append(c)
            i += 1
            continue
        nxt = repl[i + 1] if i + 1 < len(repl) else ""
        if nxt == "\\":
            literal.append("\\")
        elif nxt.isdigit() and nxt.isascii():
            group = int(nxt)
            if group > groups:
                raise ValueError(
                    f"rewrite {repl!r} refers to group \\{group} but regex {pattern!r} has {groups} group(s)"
                )
            if literal:
                pieces.append("".join(literal).encode())
                literal = []
            pieces.append(group)
        else:
            raise ValueError(f"invalid rewrite {repl!r}: a backslash must be followed by a digit or a backslash")
        i += 2
    if literal:
        pieces.append("".join(literal).encode())
    return tuple(pieces)


class GoogleRE2Engine:
    """Google RE2, Envoy's default engine, with Envoy's program-size limit."""

    name = DEFAULT_ENGINE

    def __init__(self, max_program_size: int | None = None) -> None:
        self.max_program_size = _max_program_size if max_program_size is None else max_program_size
        self._options = re2.Options()
        self._options.log_errors = False

    def compile(self, pattern: str) -> _RE2Regex:
        try:
            compiled = re2.compile(pattern, options=self._options)
        except re2.error as exc:
            detail = exc.args[0] if exc.args else exc
            if isinstance(detail, bytes):
                detail = detail.decode("utf-8", "replace")
            raise ValueError(f"invalid regex {pattern!r}: {detail}") from exc
        size = compiled.programsize
        if size > self.max_program_size:
            raise ValueError(_too_big(pattern, size, self.max_program_size))
        return _RE2Regex(pattern, compiled)

    def check(self, pattern: str) -> None:
        """`ValueError` (the message `compile` gives) unless RE2 takes `pattern` within the size limit.

        For route tables, whose patterns are only checked one by one and then
        compiled together: a route update re-checks every unchanged pattern of its
        table, in the supervisor and in each worker, so the verdicts are memoized
        per process (5,000 patterns: ~35 ms of RE2 compiles, ~120 ms through
        `re2.compile`; ~1 ms from the memo).
        """
        key = (pattern, self.max_program_size)
        error = _verdicts.get(key, _UNSEEN)
        if error is _UNSEEN:
            error = self._verdict(pattern)
            if len(_verdicts) >= _VERDICTS_MAX:
                _verdicts.clear()  # patterns come from configs: bound the memo, keep it simple
            _verdicts[key] = error
        if error is not None:
            raise ValueError(error)

    def _verdict(self, pattern: str) -> str | None:
        try:
            compiled = re2._re2.RE2(pattern.encode("utf-8"), self._options)
        except UnicodeEncodeError as exc:  # a lone surrogate: `compile` fails on it too
            return f"invalid regex {pattern!r}: {exc}"
        if not compiled.ok():
            detail = compiled.error()
            if isinstance(detail, bytes):
                detail = detail.decode("utf-8", "replace")
            return f"invalid regex {pattern!r}: {detail}"
        size = compiled.ProgramSize()
        return _too_big(pattern, size, self.max_program_size) if size > self.max_program_size else None

    def compile_set(self, patterns: Sequence[str], labels: Sequence[str], background: bool = False) -> RE2Set:
        # Each pattern alone first: its errors (and Envoy's program-size limit) name it. RE2::Set
        # compiles quickly (5,000 patterns: ~35 ms), so `background` changes nothing here.
        for pattern, label in zip(patterns, labels):
            try:
                self.check(pattern)
            except ValueError as exc:
                raise ValueError(f"{label}: {exc}") from None
        return RE2Set(patterns)


def _too_big(pattern: str, size: int, limit: int) -> str:
    return f"regex {pattern!r}: RE2 program size of {size} > max program size of {limit}"


#: (pattern, max program size) -> None (RE2 takes it) or the error message; see `GoogleRE2Engine.check`
_verdicts: dict[tuple[str, int], str | None] = {}
_VERDICTS_MAX = 100_000
_UNSEEN = object()


class RE2Set:
    """Patterns in one RE2::Set anchored at both ends: one DFA pass finds every full match."""

    __slots__ = ("fallbacks", "_match")

    def __init__(self, patterns: Sequence[str]) -> None:
        options = re2.Options()
        options.log_errors = False
        options.max_mem = SET_MAX_MEM
        rset = re2.Set(re2._Anchor.ANCHOR_BOTH, options)
        try:
            for pattern in patterns:
                rset.Add(pattern)
            rset.Compile()
        except re2.error as exc:
            raise ValueError(f"RE2::Set of {len(patterns)} patterns: {exc}") from None
        self.fallbacks: tuple[tuple[int, str], ...] = ()
        self._match = rset._set.Match  # bytes -> list of indices

    def matches(self, s: str) -> list[int]:
        found = self._match(s.encode("utf-8", "surrogateescape"))
        if len(found) > 1:
            found.sort()
        return found
