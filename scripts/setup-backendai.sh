#!/usr/bin/env bash
# Create .venv-backendai (if needed): Python 3.13 with the real Backend.AI storage proxy
# (backend-ai-storage-proxy 26.9.6) and this project, for tests/backendai. Safe to run again: nothing is
# installed when pyproject.toml has not changed since the last install.
# Python 3.13 is $PYTHON313, else pyenv's newest 3.13, else python3.13 on PATH; without one this fails.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python313() {
    if [ -n "${PYTHON313:-}" ]; then
        echo "$PYTHON313"
        return
    fi
    if command -v pyenv >/dev/null 2>&1; then
        local version
        version=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.13(\.[0-9]+)?$' | sort -V | tail -n 1 || true)
        if [ -n "$version" ]; then
            PYENV_VERSION="$version" pyenv which python
            return
        fi
    fi
    command -v python3.13 || true
}

PY313=$(find_python313)
if [ -z "$PY313" ] || ! "$PY313" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
    echo "error: tests/backendai need Python 3.13 (the Backend.AI storage proxy requires it) and none was found:" >&2
    echo "  install it (pyenv install 3.13) or set PYTHON313=/path/to/python3.13" >&2
    exit 2
fi
if [ ! -x .venv-backendai/bin/python ]; then
    "$PY313" -m venv .venv-backendai
fi
stamp=$(.venv-backendai/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')
if [ -f .venv-backendai/.installed ] && [ "$(cat .venv-backendai/.installed)" = "$stamp" ]; then
    exit 0
fi
echo "installing backend-ai-storage-proxy 26.9.6 into .venv-backendai (a minute or two the first time)..." >&2
.venv-backendai/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv-backendai/bin/python -m pip install --quiet --disable-pip-version-check -e '.[backendai-test]'
.venv-backendai/bin/python -m pip check >/dev/null
echo "$stamp" > .venv-backendai/.installed
