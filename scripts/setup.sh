#!/usr/bin/env bash
# Create .venv (if needed) and install artifact-import into it: with its test tools (default), or the
# package alone (`setup.sh package`, what the demo needs). Safe to run again: nothing is installed when
# pyproject.toml has not changed since the last install of the same kind.
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-test}"
case "$what" in
    test) spec='.[test]' ;;
    package) spec='.' ;;
    *) echo "usage: scripts/setup.sh [test|package]" >&2; exit 2 ;;
esac

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: artifact-import needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    # Debian and Ubuntu ship venv's pip bootstrap (ensurepip) apart, in python3-venv: without it `-m venv`
    # leaves a .venv without pip, and says so in terms of ensurepip.
    if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        echo "error: $PYTHON cannot make a virtual environment (no ensurepip); on Debian or Ubuntu:" >&2
        echo "  sudo apt-get install python3-venv    (or python$version-venv)" >&2
        echo "then run this again." >&2
        exit 2
    fi
    "$PYTHON" -m venv .venv
elif ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    echo "error: .venv has no pip (a virtual environment made without python3-venv?):" >&2
    echo "  rm -rf .venv; sudo apt-get install python3-venv; then run this again." >&2
    exit 2
fi
stamp=$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')
installed() { [ -f ".venv/.installed-$1" ] && [ "$(cat ".venv/.installed-$1")" = "$stamp" ]; }
# The test install holds the package too.
if installed "$what" || installed test; then
    exit 0
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
echo "$stamp" > ".venv/.installed-$what"
