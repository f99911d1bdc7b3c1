#!/usr/bin/env bash
# A real import end to end, offline: the bundled local hub serves a generated
# model over HTTP, and artifact-import imports it into ./demo-output/tiny-model
# (or $DEMO_OUTPUT). Run it again: the files are already there, nothing is fetched.
# Extra arguments go to `artifact-import import`, e.g. ./scripts/demo.sh --json
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh package  # the package alone; the test hub needs nothing more (aiohttp)
export HF_HUB_DISABLE_TELEMETRY=1
out="${DEMO_OUTPUT:-demo-output/tiny-model}"

hub_log=$(mktemp)
.venv/bin/python -m tests.hub serve --demo --repo demo/tiny-model >"$hub_log" 2>&1 &
hub_pid=$!
# The hub removes the blobs it generated when it is stopped; wait for it to have done so.
trap 'kill "$hub_pid" 2>/dev/null && wait "$hub_pid" 2>/dev/null; rm -f "$hub_log"' EXIT
for _ in $(seq 100); do
    grep -q '"url"' "$hub_log" && break
    kill -0 "$hub_pid" 2>/dev/null || { cat "$hub_log" >&2; exit 1; }
    sleep 0.1
done
HF_ENDPOINT=$(.venv/bin/python -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["url"])' "$hub_log")
export HF_ENDPOINT
echo "local hub at $HF_ENDPOINT serving demo/tiny-model" >&2

# What an earlier run left is kept: importing again shows that nothing is fetched twice.
.venv/bin/artifact-import import hf://demo/tiny-model --to "$out" "$@"
cat >&2 <<NEXT

files in $out:
$(cd "$out" && find . -type f -not -path './.artifact-import/*' | sort | sed 's|^\./|  |')
  (and .artifact-import/manifest.json: the source, the commit, each file's size, sha256 and verdicts)

next:
  .venv/bin/artifact-import verify $out     # reads every file back against the manifest
  ./scripts/demo.sh                        # again: every file is already there, nothing is fetched
  .venv/bin/artifact-import --help         # the command (or: source .venv/bin/activate; artifact-import --help)
the hub by hand (it needs the venv, and the command needs HF_ENDPOINT to find it):
  .venv/bin/python -m tests.hub serve --demo --port 8765 &
  HF_ENDPOINT=http://127.0.0.1:8765 .venv/bin/artifact-import import hf://demo/tiny-model --to ./tiny-model
NEXT
