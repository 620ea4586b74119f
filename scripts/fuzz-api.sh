#!/usr/bin/env bash
# Schema-driven fuzzing of the HTTP API: schemathesis generates requests from the runner's own
# OpenAPI document (GET /v1/openapi.json) against a live `runner serve` on 127.0.0.1, for the
# session, check, event and exercise routes, the usage figures and the operators' reads and
# stop-sessions (not drain: it would turn every later start into a 503; not builds and apps,
# whose git sources and registries are outside the machine), and fails on any 5xx, any status, content type or
# body the document does not describe. Valid and invalid input both (`--mode all`): bad input
# must be a documented 4xx JSON error; the stateful phase follows the document's links from a
# created session. Afterwards the runner must not have panicked, and every container it made
# must belong to a live session (bad input leaves no stray sandbox).
#
# Bounded and reproducible: deterministic generation (no seed needed), a few examples per
# operation, and an overall time limit (FUZZ_TIME_LIMIT_SECS, 240). Needs the built binary
# (`cargo build`), a Docker engine and the busybox test image (scripts/host-setup.sh).
# Usage: scripts/fuzz-api.sh [extra schemathesis arguments]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SCHEMATHESIS_VERSION=4.32.5
VENV="$ROOT/target/fuzz/venv"
BIN="$ROOT/target/debug/runner"
IMAGE=exercise-runner/busybox:latest
TOKEN="fuzz-token-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
INSTANCE="test-fuzz-$$" # swept by scripts/sweep-test-leftovers.sh like every test-* instance
LIMIT="${FUZZ_TIME_LIMIT_SECS:-240}"

[ -x "$BIN" ] || { echo "fuzz-api: $BIN is missing: run cargo build first" >&2; exit 1; }
docker image inspect "$IMAGE" >/dev/null 2>&1 \
  || { echo "fuzz-api: the test image $IMAGE is missing: run scripts/host-setup.sh" >&2; exit 1; }

# schemathesis in its own venv, reused while it has the pinned version.
if [ "$("$VENV/bin/schemathesis" --version 2>/dev/null | awk '{print $NF}')" != "$SCHEMATHESIS_VERSION" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

WORK="$(mktemp -d /tmp/exercise-runner-test-fuzz.XXXXXX)"
REPORT="$ROOT/target/fuzz/report"
rm -rf "$REPORT" && mkdir -p "$REPORT"
PID=""
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
  # Whatever the run made: containers and volumes of this instance.
  docker ps -aq --filter "label=exercise-runner.instance=$INSTANCE" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker volume ls -q --filter "label=exercise-runner.instance=$INSTANCE" | xargs -r docker volume rm >/dev/null 2>&1 || true
  cp "$WORK/runner.log" "$ROOT/target/fuzz/runner.log" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
RUNNER_LISTEN="127.0.0.1:$PORT" RUNNER_DATA_DIR="$WORK/data" RUNNER_API_TOKEN="$TOKEN" \
  RUNNER_INSTANCE="$INSTANCE" RUNNER_WORKSPACE_DRIVER=volume \
  RUNNER_RATE_LIMIT_PER_SEC=10000 RUNNER_RATE_LIMIT_BURST=10000 \
  RUNNER_SANDBOX_MEMORY_MB=64 RUNNER_SANDBOX_TMPFS_MB=8 RUNNER_SANDBOX_WORKSPACE_MB=16 \
  RUNNER_MAX_LIVE_SESSIONS=8 RUNNER_USAGE_INTERVAL_SECS=0 RUNNER_LOG="${RUNNER_LOG:-info}" \
  "$BIN" serve >"$WORK/runner.log" 2>&1 &
PID=$!

deadline=$((SECONDS + 60))
until curl -fsS "$BASE/healthz" >/dev/null 2>&1; do
  kill -0 "$PID" 2>/dev/null || { echo "fuzz-api: the runner exited at start:" >&2; cat "$WORK/runner.log" >&2; exit 1; }
  [ "$SECONDS" -lt "$deadline" ] || { echo "fuzz-api: the runner did not become healthy" >&2; exit 1; }
  sleep 0.2
done

# One real exercise, so the examples in the document reach a sandbox.
curl -fsS -X PUT "$BASE/v1/exercises/hello-shell" -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' -d "{\"image\": \"$IMAGE\"}" >/dev/null

status=0
# Run from target/fuzz so schemathesis's own files stay out of the tree.
(cd "$ROOT/target/fuzz" && timeout --signal=INT --kill-after=20 "$LIMIT" \
  "$VENV/bin/schemathesis" run "$BASE/v1/openapi.json" \
    --include-tag-regex '^(sessions|checks|events|webhooks|workspaces|exercises|usage|operators)$' \
    --exclude-operation-id-regex '^(drain_runner|undrain_runner|put_webhook|redeliver)$' \
    --checks "${FUZZ_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection}" \
    --header "Authorization: Bearer $TOKEN" \
    --mode all --max-examples "${FUZZ_MAX_EXAMPLES:-100}" --generation-deterministic \
    --phases examples,coverage,fuzzing,stateful --workers 2 --request-timeout 30 \
    --report junit,har --report-dir "$REPORT" --no-color "$@") || status=$?

if [ "$status" -eq 124 ]; then
  echo "fuzz-api: schemathesis did not finish within ${LIMIT}s" >&2
fi
if [ "$status" -ne 0 ]; then
  echo "fuzz-api: failed (schemathesis exit $status); the runner's log:" >&2
  grep -E 'ERROR|WARN|panicked' "$WORK/runner.log" | tail -40 >&2 || true
  exit 1
fi

# A panic in a connection's task drops that connection without a 5xx: the log is the witness.
if grep -q 'panicked at' "$WORK/runner.log"; then
  echo "fuzz-api: the runner panicked:" >&2
  grep -A3 'panicked at' "$WORK/runner.log" | head -20 >&2
  exit 1
fi

# No stray sandbox: every container of this instance belongs to a live session (a start may
# still be finishing, so poll briefly).
deadline=$((SECONDS + 30))
while :; do
  live="$(curl -fsS "$BASE/v1/sessions?state=starting,running,stopping&limit=1000" -H "Authorization: Bearer $TOKEN" \
    | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["sessions"]))')"
  containers="$(docker ps -aq --filter "label=exercise-runner.instance=$INSTANCE" | wc -l)"
  [ "$containers" -le "$live" ] && break
  [ "$SECONDS" -lt "$deadline" ] \
    || { echo "fuzz-api: $containers containers but $live live sessions: a request left a stray sandbox" >&2; exit 1; }
  sleep 0.5
done
echo "fuzz-api: ok ($live live sessions, $containers containers; report in target/fuzz/report)"
