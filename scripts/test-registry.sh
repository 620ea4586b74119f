#!/usr/bin/env bash
# Makes a Docker registry with basic auth available on 127.0.0.1:5000 for the deploy tests,
# idempotently and without systemd: installs Debian's docker-registry (distribution 2.8) and
# apache2-utils (htpasswd) when missing, writes its own config under
# /var/lib/exercise-runner-test-registry/ (not Debian's /etc/docker/registry), reuses a registry
# already answering on 127.0.0.1:5000 or starts one in the background (nohup, log in
# /var/log/exercise-runner/test-registry.log), checks that `docker login` works with the test
# credentials and logs out again (no credentials are left behind: the runner passes its own).
# Prints the registry address (`127.0.0.1:5000`) as the only line on stdout.
#
# Test credentials: user `deployer`, password `deployer-secret-42`.
set -euo pipefail
say() { printf '[test-registry] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
# Only the result goes to the caller's stdout (it is captured with $(...)): whatever the tools
# print goes to stderr (pg_ctlcluster, for one, says "Removed stale pid file." on stdout), and
# no server started here inherits the capture pipe (fd 3 is closed for the whole body), or the
# caller would wait for that server to exit.
exec 3>&1 1>&2
{
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

ADDR=127.0.0.1:5000
USER_NAME=deployer
PASSWORD=deployer-secret-42
DIR=/var/lib/exercise-runner-test-registry
CONFIG=$DIR/config.yml
HTPASSWD=$DIR/htpasswd
STORAGE=$DIR/storage
PIDFILE=$DIR/registry.pid
LOG_DIR=/var/log/exercise-runner
LOG=$LOG_DIR/test-registry.log
START_TIMEOUT=${TEST_REGISTRY_START_TIMEOUT:-30}

# --- packages -----------------------------------------------------------------------------------
missing=()
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  # Refresh the package lists only when apt does not know a package yet (once per run at most).
  apt_log=$(mktemp)
  for p in "${missing[@]}"; do
    if ! apt-cache show "$p" >/dev/null 2>&1; then
      $SUDO apt-get update -qq >"$apt_log" 2>&1 || { cat "$apt_log" >&2; die "apt-get update failed"; }
      break
    fi
  done
  # apt's chatter (debconf, needrestart) goes to a temporary log, shown only when it fails.
  $SUDO env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >"$apt_log" 2>&1 \
    || { cat "$apt_log" >&2; die "apt-get install ${missing[*]} failed"; }
  rm -f "$apt_log"
  # The package's maintainer script may start Debian's own registry service (config
  # /etc/docker/registry/config.yml, also on :5000) where no policy-rc.d forbids it; stop it so
  # the port is free for ours.
  if pgrep -f 'docker-registry serve /etc/docker/registry/config.yml' >/dev/null 2>&1; then
    say "stopping Debian's docker-registry service (started by the package install)"
    $SUDO /etc/init.d/docker-registry stop >&2 || true
  fi
fi
command -v docker >/dev/null 2>&1 || die "docker CLI not found (the Docker engine must be running)"

# --- config -------------------------------------------------------------------------------------
$SUDO mkdir -p "$DIR" "$STORAGE" "$LOG_DIR"
config_changed=0
tmp_config=$(mktemp)
trap 'rm -f "$tmp_config"' EXIT
cat >"$tmp_config" <<EOF
# Written by scripts/test-registry.sh (exercise-runner tests); changes are overwritten.
version: 0.1
log:
  level: info
  fields:
    service: exercise-runner-test-registry
storage:
  filesystem:
    rootdirectory: $STORAGE
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: $ADDR
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: exercise-runner-test-registry
    path: $HTPASSWD
EOF
if ! cmp -s "$tmp_config" "$CONFIG" 2>/dev/null; then
  say "writing $CONFIG"
  $SUDO install -m 0644 "$tmp_config" "$CONFIG"
  config_changed=1
fi
# bcrypt hashes are salted, so rewrite the file only when it does not accept the password already.
if ! htpasswd -vb "$HTPASSWD" "$USER_NAME" "$PASSWORD" >/dev/null 2>&1; then
  say "writing $HTPASSWD (user $USER_NAME)"
  htpasswd -Bbn "$USER_NAME" "$PASSWORD" | $SUDO tee "$HTPASSWD.new" >/dev/null
  $SUDO chmod 0644 "$HTPASSWD.new"
  $SUDO mv -f "$HTPASSWD.new" "$HTPASSWD"
  config_changed=1
fi

# --- server -------------------------------------------------------------------------------------
alive() { # running, not a zombie
  local st
  st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "${st%% *}" != Z ]
}
status() { curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$ADDR/v2/" || true; }
our_pid() {
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null || true)
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "serve $CONFIG" \
    && echo "$pid"
}

# A registry started by this script from an older config is restarted so it picks the new one up.
if [ "$config_changed" = 1 ] && pid=$(our_pid); then
  say "config changed; stopping the registry started earlier (pid $pid)"
  $SUDO kill "$pid" || true
  deadline=$((SECONDS + 10))
  while alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
fi

code=$(status)
case "$code" in
  401)
    say "reusing the registry already answering on $ADDR" ;;
  200)
    say "reusing the registry already answering on $ADDR (warning: it does not require auth)" ;;
  000)
    say "starting docker-registry serve $CONFIG (log: $LOG)"
    # setsid: its own session, so it outlives the shell (and process group) that ran this script.
    $SUDO setsid nohup docker-registry serve "$CONFIG" >>"$LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" | $SUDO tee "$PIDFILE" >/dev/null
    deadline=$((SECONDS + START_TIMEOUT))
    while :; do
      code=$(status)
      [ "$code" = 401 ] && break
      if ! alive "$pid" && [ "$code" = 000 ]; then
        tail -n 5 "$LOG" >&2 || true
        die "docker-registry exited before answering (see $LOG)"
      fi
      if [ $SECONDS -ge $deadline ]; then
        tail -n 5 "$LOG" >&2 || true
        die "registry did not answer 401 on http://$ADDR/v2/ within ${START_TIMEOUT}s (last: $code)"
      fi
      sleep 0.1
    done
    say "registry is up (pid $pid)" ;;
  *)
    die "something else answers on $ADDR (GET /v2/ gave HTTP $code); free the port" ;;
esac

# --- docker login check -------------------------------------------------------------------------
# A throwaway client config: the check never touches ~/.docker/config.json, and nothing is left
# even if it fails half-way. Logging out afterwards as well, as the contract asks.
login_config=$(mktemp -d)
trap 'rm -f "$tmp_config"; rm -rf "$login_config"' EXIT
if ! printf '%s' "$PASSWORD" | DOCKER_CONFIG=$login_config \
    docker login "$ADDR" -u "$USER_NAME" --password-stdin >/dev/null 2>"$login_config/err"; then
  cat "$login_config/err" >&2
  die "docker login $ADDR failed (is $ADDR an insecure registry for the daemon? 127.0.0.0/8 is by default)"
fi
DOCKER_CONFIG=$login_config docker logout "$ADDR" >/dev/null 2>&1 || true
# Also drop any credentials for the test registry from the default client config, so only
# credentials the runner passes itself can work in the tests.
docker logout "$ADDR" >/dev/null 2>&1 || true
say "docker login $ADDR as $USER_NAME works (logged out again)"

} 3>&-
echo "$ADDR" >&3
