#!/usr/bin/env bash
# Prepares this machine for exercise-runner, idempotently:
#   - installs the Docker engine (docker.io) and gVisor (runsc) from Debian's packages when missing,
#   - registers runsc as a Docker runtime (with --network=none, see docs/ARCHITECTURE.md),
#   - starts dockerd when no engine answers (machines without systemd),
#   - makes the images the service and its tests need locally, never pulling from a registry.
# Safe to run again and again: every step checks before it acts.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_DIR="${RUNNER_HOST_LOG_DIR:-/var/log/exercise-runner}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

say() { printf '[host-setup] %s\n' "$*" >&2; }

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    say "apt-get update"
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  say "installing: $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

need_pkg() { # need_pkg COMMAND-OR-FILE PACKAGE
  if ! command -v "$1" >/dev/null 2>&1 && [ ! -e "$1" ]; then apt_install "$2"; fi
}

docker_ok() { timeout 10 docker info >/dev/null 2>&1; }

# 1. Packages.
need_pkg dockerd docker.io
need_pkg runsc runsc
need_pkg /bin/busybox busybox-static
need_pkg mkfs.ext4 e2fsprogs
need_pkg losetup mount
need_pkg debootstrap debootstrap
need_pkg python3 python3
need_pkg git git
need_pkg tar tar
# The README's quick start (and the test that runs it as written) uses curl.
need_pkg curl curl
# The IDE front-end is built from npm packages (ide-agent/build.rs); its tests drive a real
# headless Chromium.
need_pkg node nodejs
need_pkg npm npm
need_pkg chromium chromium

# 2. runsc registered as a runtime. gVisor needs --network=none when dockerd runs in the root
#    network namespace of these machines; sandboxes have no network by default anyway.
DAEMON_JSON=/etc/docker/daemon.json
RUNSC_PATH="$(command -v runsc)"
$SUDO mkdir -p /etc/docker
if ! grep -q '"runsc"' "$DAEMON_JSON" 2>/dev/null; then
  say "registering runsc in $DAEMON_JSON"
  $SUDO python3 - "$DAEMON_JSON" "$RUNSC_PATH" <<'PY'
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
cfg = {}
if os.path.exists(path) and os.path.getsize(path) > 0:
    with open(path) as f:
        cfg = json.load(f)
cfg.setdefault("runtimes", {})["runsc"] = {"path": runsc, "runtimeArgs": ["--network=none"]}
with open(path, "w") as f:
    json.dump(cfg, f, indent=2)
PY
  if docker_ok; then
    # An engine that is already running reloads its runtimes on SIGHUP.
    pid="$(pidof dockerd || true)"
    if [ -n "$pid" ]; then $SUDO kill -HUP "$pid"; fi
  fi
fi

# 3. A running engine.
if ! docker_ok; then
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    say "starting docker with systemd"
    $SUDO systemctl start docker
  else
    say "starting dockerd (no systemd here); log: $LOG_DIR/dockerd.log"
    $SUDO mkdir -p "$LOG_DIR"
    $SUDO sh -c "nohup dockerd >>'$LOG_DIR/dockerd.log' 2>&1 </dev/null &"
  fi
  deadline=$((SECONDS + 60))
  until docker_ok; do
    if [ $SECONDS -ge $deadline ]; then
      say "dockerd did not answer within 60 s; last log lines:"
      tail -n 30 "$LOG_DIR/dockerd.log" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
fi
if ! docker info --format '{{json .Runtimes}}' | grep -q runsc; then
  say "warning: the running Docker engine does not list the runsc runtime; runsc sandboxes will fail"
fi

# 4. Images made locally.
"$ROOT/scripts/make-images.sh"
say "ready: $(docker version --format 'engine {{.Server.Version}} (API {{.Server.APIVersion}})')"
