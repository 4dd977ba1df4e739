"""Which encoding a response gets: the compressor filters' shared choice from a request's Accept-Encoding (sans-IO).

All compressor filters of a chain take part in one choice per stream (Envoy's
`chooseEncoding`, made by the first of them to ask and cached for the others):

- the candidates are the chain's compressors in filter order, less those whose
  content types leave out the response's (`content-type` up to ";", any case);
  of several with one encoding, only the first counts (registered in that
  order);
- Accept-Encoding is read token by token (split on ",", empties skipped): the
  coding is the text before ";", trimmed, compared case-sensitively; a `q=`
  parameter (its name in any case) that is no number drops the token; q=0
  removes that coding from the candidates;
- nothing parsed, or no candidates left: identity, counted as not valid;
- otherwise, over the tokens in order, among the candidates, `identity` and
  `*`, the highest q wins; on a tie the later token wins only if its coding's
  filter says `choose_first` (`identity` and `*` never do, nor become
  candidates: Envoy 1.40 answers "*, *" with its first filter's encoding);
- a winning q of 0 (nothing acceptable): identity, not valid; `identity`:
  identity; `*`: the first candidate; else that coding.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

IDENTITY = "identity"
WILDCARD = "*"

#: how the choice came about: each compressor filter counts one of these (`header_<kind>`)
VALID, IDENTITY_KIND, WILDCARD_KIND, NOT_VALID = "valid", "identity", "wildcard", "not_valid"

# What absl::SimpleAtof reads: a decimal or exponent float, inf or nan (Python's float() would also take "1_0").
_FLOAT = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)", re.IGNORECASE)


class Candidate(NamedTuple):
    """One compressor filter of the chain, as the choice sees it."""

    encoding: str
    content_types: frozenset[str]  # lower-cased
    choose_first: bool


class Decision(NamedTuple):
    encoding: str
    kind: str


def _q_value(text: str) -> float | None:
    text = text.strip()
    return float(text) if _FLOAT.fullmatch(text) else None


def parse(accept_encoding: str) -> list[tuple[str, float]]:
    """The (coding, q) pairs of an Accept-Encoding value, as Envoy reads them (unparseable q: token dropped)."""
    pairs = []
    for token in accept_encoding.split(","):
        if not token:
            continue
        coding, _, params = token.partition(";")
        q = 1.0
        name, eq, value = params.partition("=")
        if eq and name.strip().lower() == "q":
            parsed = _q_value(value)
            if parsed is None:
                continue
            q = parsed
        pairs.append((coding.strip(), q))
    return pairs


def choose(accept_encoding: str, content_type: str | None, chain: Sequence[Candidate]) -> Decision:
    """The encoding for a response with `content_type` (None: no header) to a request with `accept_encoding`."""
    media = content_type.split(";", 1)[0].strip().lower() if content_type else ""
    allowed: dict[str, bool] = {}  # coding -> its filter's choose_first, in the order of registration
    for candidate in chain:
        if media and media not in candidate.content_types:
            continue
        allowed.setdefault(candidate.encoding, candidate.choose_first)
    pairs = parse(accept_encoding)
    for coding, q in pairs:
        if not q:
            allowed.pop(coding, None)
    if not pairs or not allowed:
        return Decision(IDENTITY, NOT_VALID)
    choice, best = IDENTITY, 0.0
    for coding, q in pairs:
        if coding in allowed or coding == IDENTITY or coding == WILDCARD:
            if q > best or (q == best and allowed.get(coding, False)):
                choice, best = coding, q
    if not best:  # (a NaN q never wins a comparison, so it cannot be the best)
        return Decision(IDENTITY, NOT_VALID)
    if choice == IDENTITY:
        return Decision(IDENTITY, IDENTITY_KIND)
    if choice == WILDCARD:
        return Decision(next(iter(allowed)), WILDCARD_KIND)  # the first registered
    return Decision(choice, VALID)
