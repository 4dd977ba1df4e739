"""Sort profiler samples of a TLS-terminating proxy into where a handshake's CPU goes.

`handshake_profile.py` records the proxy with `perf record --call-graph dwarf`
(native frames, kernel included) and, for pylon, with `py-spy record --native`
(Python frames too). Each sample is one call stack; this module gives it one
category, so the categories add up to the whole.

Two kinds of rule, because they nest differently:

* crypto and libssl work (`FIRST_MATCH`): the sample belongs to the first
  rule that matches any frame of the stack, in the order listed. The order
  settles overlaps: the signature's own hashing and nonce are the signature's,
  random numbers drawn for the key share are RNG, and whatever else runs
  inside `SSL_do_handshake` is "handshake, other";
* everything else (`INNERMOST`): the frame closest to the leaf that matches a
  rule decides, so Python code that writes a response through the TLS
  transport is the transport's, and a garbage collection started while a
  connection is being set up is the collector's.

Only exported symbols are named in the distribution's libssl/libcrypto (no
debug symbols), so libssl's internal steps (ticket construction, the key
schedule's own functions) are recognised by the libcrypto entry points they
call: EVP_KDF/EVP_Q_mac for the key schedule, EVP_PKEY_generate/derive for the
key exchange. Envoy's binary is stripped: only its kernel and libc time split.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator

#: (category, frame substrings), first category whose substring is in any frame wins.
FIRST_MATCH: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("signature", ("EVP_DigestSignFinal", "EVP_DigestSignInit_ex", "pk_rsa_priv_enc", "pk_ec_sign", "pk_slot_run",
                   "mb_rsa_batch", "mb_ecdsa_batch", "libcrypto_mb", "pylon/keys/cryptomb.py")),
    ("RNG", ("RAND_bytes", "RAND_priv_bytes", "EVP_RAND_generate", "getrandom")),
    ("key exchange", ("EVP_PKEY_generate", "EVP_PKEY_keygen", "EVP_PKEY_derive", "EVP_PKEY_set1_encoded_public_key",
                      "EVP_PKEY_get1_encoded_public_key", "EC_POINT_mul", "X25519")),
    ("key schedule", ("EVP_KDF_", "EVP_Q_mac", "EVP_MAC_", "HMAC_", "EVP_DigestUpdate", "EVP_DigestFinal",
                      "EVP_MD_CTX_copy", "EVP_MD_fetch", "EVP_CipherInit_ex", "EVP_CIPHER_fetch")),
    ("certificate chain", ("X509_", "i2d_X509")),
    ("record encryption", ("EVP_EncryptUpdate", "EVP_DecryptUpdate", "EVP_CipherUpdate", "EVP_EncryptFinal",
                           "EVP_DecryptFinal", "EVP_CipherFinal", "CRYPTO_gcm128", "aesni_gcm")),
    (HANDSHAKE_OTHER := "handshake, other libssl/libcrypto", ("SSL_do_handshake", "SSLSocket_do_handshake", "SSLObject.do_handshake",
                                           "ngx_ssl_handshake", "tn_handshake")),
    ("SSL object set-up/teardown", ("SSL_new", "SSL_free", "SSLContext__wrap_bio", "PySSL_dealloc", "SSL_clear")),
)

#: (category, frame substrings), the matching frame nearest the leaf wins.
INNERMOST: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("kernel: accept/close", ("__x64_sys_accept", "__sys_accept", "do_accept", "__x64_sys_close", "__fput",
                              "tcp_close", "inet_release", "__x64_sys_shutdown", "sock_close")),
    ("kernel: socket I/O, other", ("[kernel", "do_syscall_64", "entry_SYSCALL")),
    ("Python GC", ("gc_collect_main", "collect_with_callback")),
    # perf cannot name Python functions: Python code running (bytecode) is one bucket there, which py-spy splits.
    (PYTHON_CODE := "Python code", ("_PyEval_EvalFrameDefault",)),
    ("TLS transport", ("SSLProtocol", "sslproto", "SSL_read", "SSL_write", "SSLSocket_read", "SSLSocket_write",
                       "MemoryBIO", "pylon/proxy/tls_transport.py", "BIO_", "ngx_ssl_", "SslSocket")),
    ("connection set-up/teardown", ("uv__server_io", "connection_made", "connection_lost", "pylon/proxy/balance/",
                                    "pylon/proxy/listener.py", "Worker.connection_", "_spawn", "ngx_event_accept",
                                    "ngx_close_connection", "ngx_http_init_connection", "ngx_http_close")),
    ("proxying the request", ("llhttp", "httptools", "pylon/proxy/", "ngx_http_")),
)

CATEGORIES = tuple(name for name, _ in FIRST_MATCH) + tuple(name for name, _ in INNERMOST) + ("other",)
#: The categories of Python code, among which py-spy's samples share out perf's "Python code".
PYTHON_CATEGORIES = ("TLS transport", "connection set-up/teardown", "proxying the request", "other")


#: A handshake parked by SSL_MODE_ASYNC runs on OpenSSL's own fibre stack, where unwinding ends inside libcrypto:
#: a stack of OpenSSL frames only, with no caller of OpenSSL's below it, is such a handshake's.
_OPENSSL_DSOS = ("libssl.so", "libcrypto.so")
_CALLER_DSOS = ("libpython", "uvloop", "_ssl.", "python3", "nginx", "envoy", "_keyhook")


def in_async_job(frames: list[str]) -> bool:
    """Whether the stack is one of a handshake running inside an OpenSSL ASYNC job (see above)."""
    return (any(dso in frame for frame in frames for dso in _OPENSSL_DSOS)
            and not any(dso in frame for frame in frames for dso in _CALLER_DSOS))


def classify(frames: list[str]) -> str:
    """The category of one stack, frames leaf first."""
    for name, needles in FIRST_MATCH:
        if any(needle in frame for frame in frames for needle in needles):
            return name
        if name == HANDSHAKE_OTHER and in_async_job(frames):
            return name
    for frame in frames:
        for name, needles in INNERMOST:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def perf_stacks(script_output: str) -> Iterator[tuple[list[str], int]]:
    """(frames leaf first, weight 1) for each sample of `perf script` output.

    A frame is "symbol (dso)"; kernel frames carry "[kernel.kallsyms]", so the
    kernel rules see them.
    """
    for block in script_output.split("\n\n"):
        lines = block.strip().splitlines()
        if len(lines) < 2:
            continue
        frames = []
        for line in lines[1:]:
            _, _, rest = line.strip().partition(" ")
            frames.append(re.sub(r"\+0x[0-9a-f]+", "", rest))
        yield frames, 1


def pyspy_stacks(raw: str) -> Iterator[tuple[list[str], int]]:
    """(frames leaf first, count) for each line of py-spy's `--format raw` (collapsed stacks, root first)."""
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            yield list(reversed(stack.split(";"))), int(count)


def split(stacks: Iterable[tuple[list[str], int]]) -> dict[str, float]:
    """Each category's share (0..1) of the samples."""
    counts: Counter[str] = Counter()
    for frames, weight in stacks:
        counts[classify(frames)] += weight
    total = sum(counts.values())
    return {name: counts[name] / total if total else 0.0 for name in CATEGORIES}


def python_split(stacks: Iterable[tuple[list[str], int]]) -> dict[str, float]:
    """Shares (0..1) of the Python categories among py-spy samples that fall in one of them (samples in crypto,
    libssl, the kernel or the collector are perf's to count)."""
    counts: Counter[str] = Counter()
    for frames, weight in stacks:
        name = classify(frames)
        if name in PYTHON_CATEGORIES:
            counts[name] += weight
    total = sum(counts.values())
    return {name: counts[name] / total if total else 0.0 for name in PYTHON_CATEGORIES}


def combine(native: dict[str, float], python: dict[str, float] | None) -> dict[str, float]:
    """perf's shares with its "Python code" share handed out by py-spy's split (when there is one)."""
    out = {name: share for name, share in native.items() if name != PYTHON_CODE}
    code = native.get(PYTHON_CODE, 0.0)
    if python is None or not any(python.values()):
        out[PYTHON_CODE] = code
        return out
    for name, share in python.items():
        out[name] = out.get(name, 0.0) + code * share
    return out
