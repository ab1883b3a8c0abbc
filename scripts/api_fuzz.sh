#!/usr/bin/env bash
# `make api-fuzz`: schemathesis (PyPI) against a running Gantry made from example-repo, with a
# token of the demo's agent. Every answer must be documented and valid, and none a 5xx.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
gantry="$here/.build/debug/gantry"
work="$(mktemp -d /tmp/gantry-api-fuzz.XXXXXX)"
state="$work/state"
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# The demo's repository and anchor, one pass, then Gantry with its API on a free port.
"$gantry" demo --state "$state" --example "$here/example-repo" --once > "$work/demo.log" 2>&1
"$gantry" run --repo "$state/demo-repo" --state "$state" --stop-on-exit --router-port 0 --api 127.0.0.1:0 \
  --api-rate 1000 --api-burst 1000 > "$work/run.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do [ -s "$state/api.address" ] && break; sleep 0.2; done
base="$(cat "$state/api.address")"
token="$("$gantry" token create --state "$state" --actor claude@payments --ttl 1h 2>/dev/null)"
echo "fuzzing $base (log: $work/run.log)"
schemathesis run "$here/docs/openapi.yaml" --url "$base" -H "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "${EXAMPLES:-30}" --request-timeout 120 "$@"
