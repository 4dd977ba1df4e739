"""redis_proxy `faults`: which fault, if any, a command gets (Envoy's FaultManager, its rules read from Envoy).

A fault naming commands applies to those (case-insensitively); one naming none applies to every command, after
the command's own. One roll per command, 0-99, against the running sum of the candidate faults' numerators: so
an ERROR fault at 5% for all and a DELAY at 10% for GET give a GET a delay 10% and an error 5% of the time. As in
Envoy the numerator is read as a percentage whatever the denominator, and without runtime (pylon's runtime has
no redis keys) `default_value` is what applies.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

ALL = ""


@dataclass(frozen=True, slots=True)
class Fault:
    error: bool  # else a delay
    delay: float
    percent: int


class Faults:
    def __init__(self, configs: list[Any], rng: random.Random) -> None:
        self.rng = rng
        by_command: dict[str, list[Fault]] = {}
        for config in configs:
            assert config.fault_enabled is not None
            fault = Fault(config.fault_type == "ERROR", float(config.delay or 0.0),
                          config.fault_enabled.default_value.numerator)
            for command in [c.lower() for c in config.commands] or [ALL]:
                by_command.setdefault(command, []).append(fault)
        for command, faults in by_command.items():
            if command != ALL:
                faults.extend(by_command.get(ALL, []))
        self.by_command = by_command

    def pick(self, command: str) -> Fault | None:
        if not self.by_command:
            return None
        faults = self.by_command.get(command, self.by_command.get(ALL))
        if not faults:
            return None
        roll = self.rng.randrange(100)
        running = 0
        for fault in faults:
            running += fault.percent
            if roll < running:
                return fault
        return None
