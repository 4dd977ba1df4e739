"""RE2 syntax to the dialects of Hyperscan (PCRE) and Python's `re`, keeping RE2's meaning.

Envoy's regexes are RE2 regexes; another engine may only serve one if it gives
the same answer for every input. Most RE2 syntax reads the same in PCRE and in
Python, but a few constructs mean something else there, silently:

- `$` (without multi-line mode) is "end of text" in RE2, but also matches
  before a final `\\n` in PCRE and Python: it becomes `\\z` / `\\Z`.
- `\\s` is `[\\t\\n\\f\\r ]` in RE2; PCRE and Python add `\\v` (and PCRE more):
  it is spelled out. `\\v` is one character in RE2 but a class in PCRE.
- `\\Q...\\E` (literal text) is unknown to Python: its text is escaped instead.
- Case-insensitive matching (`(?i)`) folds Unicode in RE2 (`k` matches the
  Kelvin sign) but only ASCII in Hyperscan without UCP and in `re.ASCII`.
- `{,n}` is a literal in RE2 but a quantifier in Python 3.11; `[[:alpha:]]`
  is a POSIX class in RE2 but a nested set in Python; `\\C` is "any byte".

Constructs that cannot be carried over raise `Untranslatable` with the reason;
the caller then serves that pattern with RE2 (and says so once). Everything
else the target engine rejects (lookaround does not exist in RE2, but some
RE2 syntax is unknown elsewhere) surfaces as that engine's compile error.
"""

from __future__ import annotations

import re
from typing import Literal

Dialect = Literal["pcre", "python"]

_SPACE = r"\t\n\f\r "
# Inline flag groups: (?flags) or (?flags:...), flags from RE2's set.
_FLAGS = re.compile(r"\(\?([imsU-]+)[):]")


class Untranslatable(ValueError):
    """The pattern uses RE2 syntax the target engine would read differently."""


def translate(pattern: str, dialect: Dialect) -> str:
    """`pattern` (RE2 syntax, already accepted by RE2) in `dialect`, with RE2's meaning."""
    for flags in _FLAGS.findall(pattern):
        on = flags.split("-", 1)[0]
        if "i" in on:
            raise Untranslatable("case-insensitive matching folds Unicode in RE2 but not here")
        if "m" in on:
            raise Untranslatable("multi-line mode is not translated")
        if "U" in on and dialect == "python":
            raise Untranslatable("(?U) (ungreedy) has no Python equivalent")
    end = r"\z" if dialect == "pcre" else r"\Z"
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    class_start = -1  # index in `pattern` just after "[" or "[^"
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            e = pattern[i + 1]
            i += 2
            if e == "Q":
                stop = pattern.find("\\E", i)
                text = pattern[i:] if stop < 0 else pattern[i:stop]
                out.append("".join(_literal(ch) for ch in text))
                i = n if stop < 0 else stop + 2
            elif e == "E":
                pass  # a stray \E is ignored by RE2
            elif e == "s":
                out.append(_SPACE if in_class else f"[{_SPACE}]")
            elif e == "S":
                if in_class:
                    raise Untranslatable(r"\S inside a character class")
                out.append(f"[^{_SPACE}]")
            elif e == "z":
                out.append(end)
            elif e == "C":
                raise Untranslatable(r"\C (any byte) has no equivalent")
            elif e == "v":
                out.append(r"\x0b")
            elif e in "pP" and dialect == "python":
                raise Untranslatable(r"Unicode classes (\p, \P) are unknown to Python's re")
            elif e == "x" and dialect == "python" and pattern.startswith("{", i):
                close = pattern.index("}", i)
                out.append(_literal(chr(int(pattern[i + 1 : close], 16))))
                i = close + 1
            else:
                out.append("\\" + e)
            continue
        i += 1
        if in_class:
            if c == "]" and i - 1 != class_start:
                in_class = False
            elif c == "[" and pattern.startswith(":", i) and dialect == "python":
                raise Untranslatable("POSIX classes ([:alpha:]) are unknown to Python's re")
            elif c == "[" and dialect == "python":
                c = r"\["  # a literal in RE2; Python warns it may become a nested set
            out.append(c)
            continue
        if c == "[":
            in_class = True
            if pattern.startswith("^", i):
                out.append("[^")
                i += 1
            else:
                out.append("[")
            class_start = i
            continue
        if c == "$":
            out.append(end)
            continue
        if c == "{" and dialect == "python" and pattern.startswith(",", i):
            raise Untranslatable("{,n} is a literal in RE2 but a quantifier in Python's re")
        out.append(c)
    return "".join(out)


def _literal(ch: str) -> str:
    """One character as a literal, escaped so that either dialect reads it as itself, in a class or not."""
    if ch.isalnum() or ch == "_" or ord(ch) > 0x7F:
        return ch
    return "\\x%02x" % ord(ch)
