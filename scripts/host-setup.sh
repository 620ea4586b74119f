#!/usr/bin/env bash
# Prepares this machine for exercise-runner, idempotently:
#   - installs the Docker engine (docker.io), gVisor (runsc) and crun from Debian's packages when
#     missing,
#   - registers runsc (with --network=none, see docs/ARCHITECTURE.md) and crun as Docker runtimes
#     beside runc, reloading a running dockerd with SIGHUP (no restart),
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
need_pkg crun crun
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

# 2. runsc and crun registered as runtimes beside runc. gVisor needs --network=none when dockerd
#    runs in the root network namespace of these machines; sandboxes have no network by default
#    anyway. crun needs no arguments. The file is rewritten only when an entry is missing or
#    differs, so a second run changes nothing.
DAEMON_JSON=/etc/docker/daemon.json
RUNSC_PATH="$(command -v runsc)"
CRUN_PATH="$(command -v crun)"
$SUDO mkdir -p /etc/docker
if $SUDO python3 - "$DAEMON_JSON" "$RUNSC_PATH" "$CRUN_PATH" <<'PY'
import json, os, sys
path, runsc, crun = sys.argv[1:4]
cfg = {}
if os.path.exists(path) and os.path.getsize(path) > 0:
    with open(path) as f:
        cfg = json.load(f)
wanted = {
    "runsc": {"path": runsc, "runtimeArgs": ["--network=none"]},
    "crun": {"path": crun},
}
runtimes = cfg.setdefault("runtimes", {})
if all(runtimes.get(name) == entry for name, entry in wanted.items()):
    sys.exit(1)  # nothing to change
runtimes.update(wanted)
with open(path + ".tmp", "w") as f:
    json.dump(cfg, f, indent=2)
os.replace(path + ".tmp", path)
PY
then
  say "registered runsc and crun in $DAEMON_JSON"
  if docker_ok; then
    # An engine that is already running reloads its runtimes on SIGHUP: no restart, running
    # containers are untouched.
    pid="$(pidof dockerd || true)"
    if [ -n "$pid" ]; then
      say "reloading dockerd ($pid) with SIGHUP"
      $SUDO kill -HUP "$pid"
    fi
  fi
fi

# 2b. crun and a hybrid cgroup layout. crun (1.8.1) refuses every container in hybrid mode (v1
#     controllers under /sys/fs/cgroup, a cgroup2 at /sys/fs/cgroup/unified) while the cgroup2
#     root still holds a controller ("cgroups in hybrid mode not supported, drop all controllers
#     from cgroupv2"). Machines whose init left a controller unmounted as v1 (hugetlb here) get it
#     bound to a v1 hierarchy of its own, as systemd's hybrid layout does: that empties the
#     cgroup2 root, changes nothing for runc or runsc, and touches no running container.
UNIFIED=/sys/fs/cgroup/unified
if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = "tmpfs" ] && [ "$(stat -fc %T "$UNIFIED" 2>/dev/null)" = "cgroup2fs" ]; then
  for ctrl in $(cat "$UNIFIED/cgroup.controllers"); do
    if ! grep -qE "^cgroup /sys/fs/cgroup/[^ ]+ cgroup [^ ]*\b$ctrl\b" /proc/mounts; then
      say "mounting the $ctrl cgroup controller as v1 at /sys/fs/cgroup/$ctrl (crun needs an empty cgroup2 root)"
      $SUDO mkdir -p "/sys/fs/cgroup/$ctrl"
      $SUDO mount -t cgroup -o "$ctrl" cgroup "/sys/fs/cgroup/$ctrl"
    fi
  done
  if [ -n "$(cat "$UNIFIED/cgroup.controllers")" ]; then
    say "warning: $UNIFIED still holds controllers ($(cat "$UNIFIED/cgroup.controllers")); crun sandboxes will fail"
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
for rt in runsc crun; do
  # A reload takes a moment to show in `docker info`.
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    if docker info --format '{{json .Runtimes}}' | grep -q "\"$rt\""; then break; fi
    sleep 0.2
  done
  if ! docker info --format '{{json .Runtimes}}' | grep -q "\"$rt\""; then
    say "warning: the running Docker engine does not list the $rt runtime; $rt sandboxes will fail"
  fi
done

# 4. Images made locally.
"$ROOT/scripts/make-images.sh"
say "ready: $(docker version --format 'engine {{.Server.Version}} (API {{.Server.APIVersion}})')"
