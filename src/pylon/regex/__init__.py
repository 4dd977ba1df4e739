"""Regex engines by Envoy-style name, and the process-wide default engine.

Every place pylon matches a regex (route `safe_regex`, header and query
matchers, `regex_rewrite`, SAN matchers) asks this package for an engine, so
the engine is one choice: the bootstrap's `default_regex_engine`, as in Envoy,
where it is a process-wide singleton set once from the bootstrap. Engines:

- `envoy.regex_engines.google_re2` (default): google-re2; route tables use RE2::Set;
- `envoy.regex_engines.hyperscan`: route tables in one Hyperscan database;
- `pylon.regex_engines.re`: Python's `re` (no extra library; tables loop).

All give Envoy's answers (RE2 syntax, full match, RE2's rewrite rules): a pattern
an engine cannot serve with RE2's meaning is served by RE2, with a warning.
Compile everything at config time: `compile()`/`compile_set()` are the expensive calls.
"""

from __future__ import annotations

from typing import Callable

from pylon.regex.base import PatternSet, Regex, RegexEngine
from pylon.regex.python_re import ENGINE_NAME as PYTHON_RE_ENGINE
from pylon.regex.python_re import PythonReEngine
from pylon.regex.re2_engine import DEFAULT_ENGINE, ENVOY_MAX_PROGRAM_SIZE, GoogleRE2Engine, set_max_program_size

__all__ = [
    "DEFAULT_ENGINE",
    "ENVOY_MAX_PROGRAM_SIZE",
    "HYPERSCAN_ENGINE",
    "PYTHON_RE_ENGINE",
    "GoogleRE2Engine",
    "PatternSet",
    "PythonReEngine",
    "Regex",
    "RegexEngine",
    "engine_names",
    "get_engine",
    "register_engine",
    "set_default_engine",
]

HYPERSCAN_ENGINE = "envoy.regex_engines.hyperscan"


def _hyperscan() -> RegexEngine:
    # Imported on first use: the library is only loaded by configs that choose it.
    try:
        from pylon.regex.hyperscan_engine import HyperscanEngine
    except ImportError as exc:
        raise ValueError(f"{HYPERSCAN_ENGINE} needs the hyperscan package: {exc}") from None
    return HyperscanEngine()


_ENGINES: dict[str, Callable[[], RegexEngine]] = {
    DEFAULT_ENGINE: GoogleRE2Engine,
    HYPERSCAN_ENGINE: _hyperscan,
    PYTHON_RE_ENGINE: PythonReEngine,
}
_default: RegexEngine | None = None


def register_engine(name: str, factory: Callable[[], RegexEngine]) -> None:
    """Make an engine available by name (extensions call this when they are imported)."""
    _ENGINES[name] = factory


def engine_names() -> list[str]:
    """The names `get_engine` accepts, sorted."""
    return sorted(_ENGINES)


def get_engine(name: str | None = None) -> RegexEngine:
    """The engine called `name` (a new instance), or the process default when `name` is None.

    `ValueError` lists the known names, or says why a known engine cannot load.
    """
    global _default
    if name is None:
        if _default is None:
            _default = GoogleRE2Engine()
        return _default
    try:
        factory = _ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown regex engine {name!r}; known: {', '.join(engine_names())}") from None
    return factory()


def set_default_engine(name: str | None, max_program_size: int | None = None) -> RegexEngine:
    """Make `name` (None: Google RE2) the engine `get_engine()` returns from now on, as Envoy's
    bootstrap `default_regex_engine` does; returns it. `ValueError` leaves the default unchanged.

    `max_program_size` is the RE2 program size limit of the engines made from now on (the
    runtime's `re2.max_program_size.error_level`; None: Envoy's default, 100).
    """
    global _default
    set_max_program_size(max_program_size)
    engine = get_engine(name or DEFAULT_ENGINE)
    _default = engine
    return engine
