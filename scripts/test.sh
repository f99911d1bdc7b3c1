#!/usr/bin/env bash
# Everything needed on a fresh machine, then the whole test suite (lint, types, tests).
# Installs Debian's clamav-daemon and redis-server if missing (the tests start their own clamd and Redis),
# the Python packages into .venv (moto's S3 server among them), and a Python 3.13 .venv-backendai with the
# real Backend.AI storage proxy for tests/backendai (fails if no Python 3.13 can be found: see
# scripts/setup-backendai.sh).
# Extra arguments go to pytest, e.g. ./scripts/test.sh -k resume -x
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v clamd >/dev/null 2>&1 || [ -x /usr/sbin/clamd ] || missing+=(clamav-daemon)  # malware scanning
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)  # the fleet's task store
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)  # the CDN the speed tests and benchmarks serve from
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (for the tests)..." >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

./scripts/setup.sh
./scripts/setup-backendai.sh
.venv/bin/ruff check artifact_import tests benchmarks
.venv/bin/mypy
# artifact_import/backendai needs the Backend.AI storage proxy's package: checked under Python 3.13.
.venv-backendai/bin/mypy --config-file= --strict --python-version 3.13 --follow-imports=silent artifact_import/backendai
.venv/bin/pytest "$@"
# Against the real storage proxy (Python 3.13). Its own conftest only: the main suite does not collect it.
# With arguments (-k ...) that select nothing here, pytest exits 5: not a failure.
status=0
.venv-backendai/bin/pytest --confcutdir tests/backendai tests/backendai "$@" || status=$?
if [ "$status" -ne 0 ] && { [ "$#" -eq 0 ] || [ "$status" -ne 5 ]; }; then
    exit "$status"
fi
