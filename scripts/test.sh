#!/usr/bin/env bash
# Everything needed on a fresh machine, then the whole test suite (lint, types, tests).
# Extra arguments go to pytest, e.g. ./scripts/test.sh -k resume -x
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
.venv/bin/ruff check artifact_import tests benchmarks
.venv/bin/mypy
.venv/bin/pytest "$@"
