"""Import a PEM private key into a PKCS#11 token in a short-lived child process.

Why a child: storing an RSA key in a token (C_CreateObject) takes its primes and exponents as separate big
integers, so whoever imports must parse the key into them. Python cannot wipe the ints and bytes that parsing
leaves behind, so a long-lived process that imported a key would keep its primes in freed heap memory for as long
as it runs. The child parses, stores, and exits; the kernel drops its memory with it. The parent (a gateway's
agent) only ever holds the PEM text it was sent, and the token refuses to give the key back (sensitive, not
extractable).

Protocol (stdin -> stdout, one exchange): a JSON line `{"library", "token", "label", "pin"}`, then the PEM;
the answer is one JSON line, `{"ok": true, "key_type": "rsa"|"ecdsa"}` or `{"ok": false, "what", "message"}`
with `what` as Pkcs11Error names it (library, token, pin, key, key_type).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping

from pylon.keys.pkcs11 import Pkcs11Error

#: How long the child may take (start-up, library, token login, C_CreateObject) before it counts as failed.
TIMEOUT_S = 60.0


def import_in_child(library: str, token_label: str, pin: str, key_label: str, key_pem: bytes,
                    env: Mapping[str, str] | None = None) -> str:  # fmt: skip
    """Store `key_pem` in the token under `key_label` through a child process; the key type ("rsa" or "ecdsa").
    Raises Pkcs11Error naming what is at fault. Blocking: call it off an event loop."""
    header = json.dumps({"library": library, "token": token_label, "label": key_label, "pin": pin}).encode()
    try:
        done = subprocess.run([sys.executable, "-m", "pylon.keys.pkcs11_import"], input=header + b"\n" + key_pem,
                              capture_output=True, timeout=TIMEOUT_S, env=dict(env) if env is not None else None)
    except subprocess.TimeoutExpired:
        raise Pkcs11Error("token", f"importing key {key_label!r} into token {token_label!r} took over "
                                   f"{TIMEOUT_S:g}s") from None  # fmt: skip
    try:
        answer = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise Pkcs11Error("library", f"the PKCS#11 import process exited {done.returncode}: {' | '.join(tail)}"
                          ) from None  # fmt: skip
    if not answer.get("ok"):
        raise Pkcs11Error(answer.get("what", "token"), answer.get("message", "import failed"))
    return str(answer["key_type"])


def _main() -> int:
    """The child: read the request, import, answer, exit (see the module's doc)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from pylon.keys.pkcs11 import import_key, open_token

    data = sys.stdin.buffer.read()
    header, _, pem = data.partition(b"\n")
    request = json.loads(header)
    try:
        try:
            private = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise Pkcs11Error("key", "not an unencrypted PEM private key") from None
        if not isinstance(private, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise Pkcs11Error("key_type", "pylon imports RSA and P-256 ECDSA keys into tokens only")
        token = open_token(request["library"], request["token"], request["pin"])
        key = import_key(token, request["label"], private)
        answer = {"ok": True, "key_type": key.key_type}
    except Pkcs11Error as exc:
        answer = {"ok": False, "what": exc.what, "message": exc.message}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
