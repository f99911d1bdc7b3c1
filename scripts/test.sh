#!/usr/bin/env bash
# Everything needed on a fresh machine, then the whole test suite (lint, types, tests).
# Installs Debian's clamav-daemon and redis-server if missing (the tests start their own clamd and Redis),
# and the Python packages into .venv (moto's S3 server among them).
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
.venv/bin/ruff check artifact_import tests benchmarks
.venv/bin/mypy
.venv/bin/pytest "$@"
