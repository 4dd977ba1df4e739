#!/usr/bin/env bash
# Set up everything pylon needs on a fresh Debian machine of this kind; safe to run again.
# Debian packages (we are root): the load tools, peers and profiler (perf) the tests and benchmarks use, and the
# compiler and OpenSSL headers that build the private-key hook and TLS driving (src/pylon/keys/keyhook.c, tlsconn.c), the libnghttp2 headers that
# build the HTTP/2 codec's binding (src/pylon/proxy/http/h2_shim.c), and iproute2 + nftables
# for the capture tests (network namespaces of our own with REDIRECT rules), nghttpd (nghttp2-server: a third-party
# HTTP/2 upstream for the upstream HTTP/2 tests), and softhsm2 + opensc for PKCS#11 tokens
# (workload and CA keys kept in a token; the tests make their own tokens in temp dirs, never the system's).
# redis-server: the upstream of the redis_proxy tests (started on a free port per test, nothing saved).
# Python: a virtualenv in .venv with pylon installed editable, plus test, bench and compile extras, made from Debian's
# CPython 3.11 (python3.11, -venv for the venv module, -dev for the headers the cffi modules build against). Debian
# builds it with PGO and LTO and links libpython into the executable; a plain source build (what pyenv makes by
# default: no PGO/LTO, a shared libpython) runs pylon's Python ~11% slower (benchmarks/h1_request_cost.py), and the
# proxy serves 10-15% fewer requests per CPU-second on it (benchmarks/results/proxy_ab-interpreter.md).
# PYTHON=... picks another interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(wrk nginx-light nghttp2-client nghttp2-server curl openssl ca-certificates gcc libssl-dev linux-perf iproute2 nftables softhsm2
      opensc libnghttp2-dev redis-server python3.11 python3.11-venv python3.11-dev)
missing=()
for pkg in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-/usr/bin/python3.11}
# The interpreter a venv was made from, as a real path (python3 and python3.11 are often one file).
base_of='import os, sys; print(os.path.realpath(sys._base_executable))'
base=$("$PYTHON" -c "$base_of")
if [ -x .venv/bin/python ] && [ "$(.venv/bin/python -c "$base_of")" != "$base" ]; then
  echo "bootstrap: .venv was made from another interpreter; making it anew from $base"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv from $base"
  "$PYTHON" -m venv .venv
fi
# Reinstall only when the project's dependencies or its native parts (cffi modules and their C sources) changed.
stamp=.venv/.pylon-installed
want=$(cat pyproject.toml setup.py src/pylon/keys/_build.py src/pylon/keys/keyhook.c src/pylon/keys/tlsconn.c src/pylon/proxy/http/_h2_build.py \
       src/pylon/proxy/http/h2_shim.c | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing pylon and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test,bench,compile]'
  echo "$want" > "$stamp"
fi
# The data path's hot modules compiled by Cython from their current source (src/pylon/compiled); only what has no
# build yet is compiled (about a minute for all of them), and an edited module runs interpreted until then.
.venv/bin/python -m pylon.compiled build
