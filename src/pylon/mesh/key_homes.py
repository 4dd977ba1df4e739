"""Where a gateway pod's private keys live when its `inject.istio.io/templates` names `keyd` or `pkcs11`: what the
pod's agent is told (flags, environment), and the PKCS#11 token made for the pod.

Why the mesh makes the token: Intel's SDS server creates its token in the SGX toolkit when it is missing, with the
PINs of its own config; on one machine SoftHSM2 plays the toolkit, and each gateway pod gets a token of its own
(files under the pod's state directory, removed with it by `mesh down`), with random PINs kept in files only root
reads and passed to the agent by file (softhsm2-util takes them on its command line, for the moment it runs).
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pylon.mesh import netns

#: The token's label in each gateway pod (one token per pod).
TOKEN_LABEL = "pylon-gateway"
SOFTHSM2_UTIL = "softhsm2-util"


@dataclass(frozen=True)
class KeyPlacement:
    """What the pod's agent gets: flags naming the key home, and environment (SoftHSM2's config)."""

    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def make_token(directory: Path) -> KeyPlacement:
    """A SoftHSM2 token for one pod under `directory`; the agent flags and environment that use it."""
    directory.mkdir(mode=0o700, parents=True)
    (directory / "tokens").mkdir(mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    pin, so_pin = secrets.token_hex(12), secrets.token_hex(12)
    for name, value in (("pin", pin), ("so-pin", so_pin)):
        path = directory / name
        path.touch(mode=0o600)
        path.write_text(value + "\n")
    env = {"SOFTHSM2_CONF": str(conf)}
    try:
        subprocess.run([SOFTHSM2_UTIL, "--init-token", "--free", "--label", TOKEN_LABEL, "--pin", pin, "--so-pin",
                        so_pin], env=env, check=True, capture_output=True, text=True)  # fmt: skip
    except FileNotFoundError:
        raise netns.MeshError("the pkcs11 template needs SoftHSM2: apt-get install softhsm2") from None
    except subprocess.CalledProcessError as exc:
        raise netns.MeshError(f"softhsm2-util could not make the gateway's token: {exc.stderr.strip()}") from None
    return KeyPlacement(args=["--pkcs11-token", TOKEN_LABEL, "--pkcs11-pin-file", str(directory / "pin"),
                              "--pkcs11-so-pin-file", str(directory / "so-pin")], env=env)  # fmt: skip
