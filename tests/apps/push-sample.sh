#!/usr/bin/env bash
# Builds the sample course web app (tests/apps/sample) in its test variants and pushes them to the
# test registry (scripts/test-registry.sh), logged in with the test credentials:
#   REGISTRY/sample/web:v1            VERSION=v1
#   REGISTRY/sample/web:v2            VERSION=v2
#   REGISTRY/sample/web:v3-broken     VERSION=v3, BROKEN_MIGRATION=1 (/app/migrate exits 1)
#   REGISTRY/sample/web:v4-unhealthy  VERSION=v4, UNHEALTHY=1 (/up answers 404)
# Then removes the local REGISTRY/... tags (so tests prove the runner pulls). Each build is also
# tagged exercise-runner-test/sample-web:TAG, which keeps the whole image (and so the build cache)
# alive: a re-run rebuilds nothing, pushes nothing new and the digests stay the same.
# Idempotent. Prints the pushed references on stdout, one a line.
# Usage: tests/apps/push-sample.sh [REGISTRY]   (default 127.0.0.1:5000)
set -euo pipefail
say() { printf '[push-sample] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

REGISTRY=${1:-127.0.0.1:5000}
USER_NAME=${TEST_REGISTRY_USER:-deployer}
PASSWORD=${TEST_REGISTRY_PASSWORD:-deployer-secret-42}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONTEXT=$HERE/sample
REPO=$REGISTRY/sample/web
CACHE_REPO=exercise-runner-test/sample-web

docker image inspect exercise-runner/busybox:latest >/dev/null 2>&1 \
  || die "image exercise-runner/busybox:latest is missing (scripts/make-images.sh builds it)"

# tag|build args
variants=(
  "v1|--build-arg VERSION=v1"
  "v2|--build-arg VERSION=v2"
  "v3-broken|--build-arg VERSION=v3 --build-arg BROKEN_MIGRATION=1"
  "v4-unhealthy|--build-arg VERSION=v4 --build-arg UNHEALTHY=1"
)

# Credentials live in a throwaway client config for the duration of the pushes only; we log out
# and delete it at the end, even on failure. ~/.docker/config.json is never written.
DOCKER_CONFIG=$(mktemp -d)
export DOCKER_CONFIG
pushed_tags=()
cleanup() {
  docker logout "$REGISTRY" >/dev/null 2>&1 || true
  rm -rf "$DOCKER_CONFIG"
  local t
  # Only the registry-named tag goes; the image stays under its cache tag.
  for t in "${pushed_tags[@]}"; do docker image rm "$REPO:$t" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

say "logging in to $REGISTRY as $USER_NAME"
if ! printf '%s' "$PASSWORD" | docker login "$REGISTRY" -u "$USER_NAME" --password-stdin \
    >/dev/null 2>"$DOCKER_CONFIG/login.err"; then
  cat "$DOCKER_CONFIG/login.err" >&2
  die "docker login $REGISTRY failed (run scripts/test-registry.sh first)"
fi

refs=()
for v in "${variants[@]}"; do
  tag=${v%%|*}
  read -r -a args <<<"${v#*|}"
  ref=$REPO:$tag
  say "building $ref (${args[*]})"
  log=$(mktemp)
  if ! DOCKER_BUILDKIT=0 docker build -q "${args[@]}" \
      --label "exercise-runner.test-app=sample" -t "$CACHE_REPO:$tag" -t "$ref" "$CONTEXT" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; die "build of $ref failed"
  fi
  pushed_tags+=("$tag")   # from here on the local tag is ours to remove
  say "pushing $ref"
  if ! docker push "$ref" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; die "push of $ref failed"
  fi
  digest=$(sed -n 's/.*digest: \(sha256:[0-9a-f]*\).*/\1/p' "$log" | tail -n1)
  rm -f "$log"
  say "pushed $ref${digest:+ ($digest)}"
  refs+=("$ref")
done

cleanup
pushed_tags=()
trap - EXIT
say "logged out of $REGISTRY; local tags removed (build cache kept)"
printf '%s\n' "${refs[@]}"
