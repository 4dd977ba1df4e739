"""`python -m pylon.compiled build|status`: compile the hot modules, or say which run compiled."""

from __future__ import annotations

import sys
from typing import Sequence

from pylon.compiled import MODULES, status
from pylon.compiled.build import build


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["build"]:
        done = build()
        print(f"pylon.compiled: {len(done)} compiled, {len(MODULES) - len(done)} already built")
    elif args == ["status"]:
        for name, state in status().items():
            print(f"{name:40} {state}")
    else:
        raise SystemExit("usage: python -m pylon.compiled build|status")


main()
