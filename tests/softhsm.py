"""SoftHSM2 tokens of the tests' own: a config and token directory in a temp dir, never the system's tokens.

SoftHSM2 reads `SOFTHSM2_CONF` when a process initialises the library, so a test process points it at its
own directory once (`use_in_process`) and creates every token it needs there; child processes (agents,
proxies, pilot) get the same variable in their environment (`Tokens.env`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"
PIN, SO_PIN = "1234-user", "5678-so"


def require_softhsm() -> None:
    """Fail (not skip: the setup scripts install it) naming what is missing."""
    missing = [what for what, ok in (("softhsm2 (apt-get install softhsm2)",
                                      Path(LIBRARY).exists() and shutil.which("softhsm2-util")),
                                     ("python-pkcs11 (pip install python-pkcs11)", _has_pkcs11()))
               if not ok]  # fmt: skip
    if missing:
        pytest.fail(f"PKCS#11 tests need {' and '.join(missing)}; bash scripts/bootstrap.sh installs both")


def _has_pkcs11() -> bool:
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Tokens:
    """A SoftHSM2 config whose token directory is `directory / "tokens"`."""

    directory: Path

    @property
    def conf(self) -> Path:
        return self.directory / "softhsm2.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}

    def create(self, label: str, pin: str = PIN, so_pin: str = SO_PIN) -> str:
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", so_pin],
                       env=self.env, check=True, capture_output=True)  # fmt: skip
        return label

    def object_files(self) -> list[Path]:
        """One `.object` file per key object in every token (SoftHSM2's file store)."""
        return [p for p in (self.directory / "tokens").rglob("*.object") if p.name != "token.object"]


def make_tokens(directory: Path, *labels: str) -> Tokens:
    require_softhsm()
    (directory / "tokens").mkdir(parents=True, exist_ok=True)
    tokens = Tokens(directory)
    tokens.conf.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\n"
                           "log.level = ERROR\n")  # fmt: skip
    for label in labels:
        tokens.create(label)
    return tokens


def use_in_process(tokens: Tokens) -> None:
    """Point this process's SoftHSM2 at `tokens` (before the library is first initialised here)."""
    os.environ["SOFTHSM2_CONF"] = str(tokens.conf)
