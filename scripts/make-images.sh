#!/usr/bin/env bash
# Makes the images exercise-runner needs on a machine with no registry, when they are missing.
#   exercise-runner/busybox:latest   FROM scratch + busybox-static, a tiny sandbox image for tests
#                                    and for trying the service out.
# Images are rebuilt only when their recipe changes (the recipe's hash is a label on the image).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf '[make-images] %s\n' "$*" >&2; }

build_busybox() {
  local name="exercise-runner/busybox:latest"
  local recipe="$ROOT/exercise-images/busybox"
  local hash
  hash="$(cat "$recipe/Dockerfile" /bin/busybox | sha256sum | cut -c1-16)"
  if [ "$(docker image inspect -f '{{index .Config.Labels "exercise-runner.recipe"}}' "$name" 2>/dev/null || true)" = "$hash" ]; then
    return
  fi
  say "building $name"
  local ctx
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' RETURN
  cp "$recipe/Dockerfile" "$ctx/"
  cp /bin/busybox "$ctx/busybox"
  DOCKER_BUILDKIT=0 docker build -q --label "exercise-runner.recipe=$hash" -t "$name" "$ctx" >/dev/null
}

build_busybox
