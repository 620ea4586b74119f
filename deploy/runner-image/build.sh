#!/usr/bin/env bash
# Usage: deploy/runner-image/build.sh [RUNNER_BINARY]
# Builds exercise-runner/runner:<hash> on the engine DOCKER_HOST names (the local one by
# default) from this directory's recipe and a runner binary (default: $RUNNER_BINARY, else
# target/debug/runner of this checkout), and tags it :latest too. <hash> is the first 16 hex
# digits of the SHA-256 of the recipe files and the binary, also kept as the image's
# `exercise-runner.recipe` label: an image that is up to date is not rebuilt. Makes
# debian:bookworm-slim with debootstrap first when the engine lacks it (no registry here), the
# way `runner images build-base` does. Prints the image reference on stdout, logs on stderr.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
say() { printf '[runner-image] %s\n' "$*" >&2; }
exec 3>&1 1>&2

BINARY="${1:-${RUNNER_BINARY:-$ROOT/target/debug/runner}}"
REPO=exercise-runner/runner
DEBIAN=debian:bookworm-slim
[ -x "$BINARY" ] || { say "no runner binary at $BINARY (cargo build -p runner --bin runner, or set RUNNER_BINARY)"; exit 1; }

# The Debian base, made from Debian's packages when missing.
if ! docker image inspect "$DEBIAN" >/dev/null 2>&1; then
  say "$DEBIAN is missing: making it with debootstrap (about a minute)"
  tree="$(mktemp -d /var/tmp/runner-image-debootstrap.XXXXXX)"
  trap 'rm -rf "$tree"' EXIT
  debootstrap --variant=minbase bookworm "$tree" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} >/dev/null
  find "$tree/var/lib/apt/lists" "$tree/var/cache/apt/archives" -maxdepth 1 -type f -delete
  tar -C "$tree" --numeric-owner -c . | docker import -c 'CMD ["bash"]' - "$DEBIAN" >/dev/null
  rm -rf "$tree"
  trap - EXIT
  say "imported $DEBIAN"
fi

# The recipe's hash covers every file of the build context and the Debian image it starts from.
recipe_files=("$HERE/Dockerfile")
hash="$({ cat "${recipe_files[@]}" "$BINARY"; docker image inspect -f '{{.Id}}' "$DEBIAN"; } | sha256sum | cut -c1-16)"
image="$REPO:$hash"
if [ "$(docker image inspect -f '{{index .Config.Labels "exercise-runner.recipe"}}' "$image" 2>/dev/null || true)" != "$hash" ]; then
  say "building $image from $BINARY"
  ctx="$(mktemp -d /var/tmp/runner-image-ctx.XXXXXX)"
  trap 'rm -rf "$ctx"' EXIT
  cp "${recipe_files[@]}" "$ctx/"
  cp "$BINARY" "$ctx/runner"
  chmod 755 "$ctx/runner"
  if ! DOCKER_BUILDKIT=0 docker build --label "exercise-runner.recipe=$hash" -t "$image" "$ctx" >"$ctx/build.log" 2>&1; then
    tail -n 40 "$ctx/build.log" >&2
    say "docker build failed"
    exit 1
  fi
  rm -rf "$ctx"
  trap - EXIT
else
  say "$image is up to date"
fi
docker tag "$image" "$REPO:latest"
# Earlier builds (each a binary layer of ~70 MB) go; one a container still uses stays.
for old in $(docker images "$REPO" --format '{{.Repository}}:{{.Tag}}'); do
  if [[ "$old" =~ ^$REPO:[0-9a-f]{16}$ ]] && [ "$old" != "$image" ]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
done
echo "$image" >&3
