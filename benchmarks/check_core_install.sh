#!/usr/bin/env bash
# `pip install .` with no extras in a fresh virtualenv (not --system-site-packages), then the library on a tiny model
# and the `lorakit` script without the extras (benchmarks/core_smoke.py). Issue 13's packaging acceptance; a few
# minutes, so a make target (make check-core-install), not part of `make test`.
#   bash benchmarks/check_core_install.sh [VENV_DIR] [PIP_SPEC ...]    e.g. ... /tmp/v 'transformers==4.45.*'
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-$(mktemp -d)/venv}
shift || true
rm -rf "$venv"
python3 -m venv "$venv"
# the CPU build on this disk (an unpinned torch would pull a multi-GB CUDA build); then lorakit and its core only
# (the versions of requirements/test.lock, as `make test` uses them; pass PIP_SPEC to try others)
constraints=(-c requirements/test.lock)
[ $# -gt 0 ] && constraints=()
"$venv/bin/python" -m pip install -q torch==2.13.0 "$@"
"$venv/bin/python" -m pip install -q . "${constraints[@]}" "$@"
"$venv/bin/python" -m pip list 2>/dev/null | grep -iE "^(torch|transformers|safetensors|numpy|tokenizers) "
"$venv/bin/python" benchmarks/core_smoke.py
