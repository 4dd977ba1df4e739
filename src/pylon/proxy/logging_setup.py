"""Envoy-style log lines and Envoy's `-l/--log-level` names for Python logging."""

from __future__ import annotations

import logging
import os
import sys

LEVELS = {
    "trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
    "warn": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL, "off": logging.CRITICAL + 10,
}


def configure_logging(level: str, component: str) -> None:
    """`[2026-01-01 12:00:00.123][pid][info][component] message`, like Envoy's default format."""
    for number, name in ((logging.DEBUG, "debug"), (logging.INFO, "info"), (logging.WARNING, "warning"),
                         (logging.ERROR, "error"), (logging.CRITICAL, "critical")):
        logging.addLevelName(number, name)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"[%(asctime)s.%(msecs)03d][{os.getpid()}][%(levelname)s][{component}] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
