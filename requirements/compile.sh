#!/usr/bin/env bash
# Regenerate requirements/test.lock: every package `make test` and `make demo` install, transitive ones included,
# at the newest releases pyproject.toml's ranges allow today (`make lock`). pip-tools runs in its own venv.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${LOCK_VENV:-.venv-lock}
test -x "$tools/bin/pip-compile" || { python3 -m venv "$tools" && "$tools/bin/pip" install -q pip-tools; }
"$tools/bin/pip-compile" -q --upgrade --extra test --strip-extras --allow-unsafe --annotation-style=line \
    --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
    -o requirements/test.lock pyproject.toml requirements/test.in
# the extras name lorakit itself (lorakit[all]); the Makefile installs the checkout with -e, not a path of this machine
sed -i '/^lorakit @ /d' requirements/test.lock
echo "requirements/test.lock: $(grep -c '==' requirements/test.lock) packages pinned"
