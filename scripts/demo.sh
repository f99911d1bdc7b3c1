#!/usr/bin/env bash
# A real import end to end, offline: the bundled local hub serves a generated
# model over HTTP, and artifact-import imports it into ./demo-output/tiny-model.
# Extra arguments go to `artifact-import import`, e.g. ./scripts/demo.sh --json
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh package  # the package alone; the test hub needs nothing more (aiohttp)
export HF_HUB_DISABLE_TELEMETRY=1

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

rm -rf demo-output/tiny-model
.venv/bin/artifact-import import hf://demo/tiny-model --to demo-output/tiny-model "$@"
echo >&2
echo "files in demo-output/tiny-model:" >&2
(cd demo-output/tiny-model && find . -type f | sort) >&2
