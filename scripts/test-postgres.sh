#!/usr/bin/env bash
# Makes a PostgreSQL server available on 127.0.0.1:5432 for the tests that run the runner on
# PostgreSQL (the production database), idempotently: installs Debian's postgresql when missing,
# starts its cluster (no systemd here), and creates the role `runner_test` (may create databases;
# each test makes its own). Prints the URL for RUNNER_TEST_POSTGRES_URL on stdout.
set -euo pipefail
say() { printf '[test-postgres] %s\n' "$*" >&2; }
# Only the result goes to the caller's stdout (it is captured with $(...)): whatever the tools
# print goes to stderr (pg_ctlcluster, for one, says "Removed stale pid file." on stdout), and
# no server started here inherits the capture pipe (fd 3 is closed for the whole body), or the
# caller would wait for that server to exit.
exec 3>&1 1>&2
{
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v pg_lsclusters >/dev/null 2>&1; then
  say "installing postgresql"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
read -r ver name port status _ < <(pg_lsclusters --no-header | head -n1)
if [ -z "${ver:-}" ]; then
  ver="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
  say "creating cluster $ver/main"
  $SUDO pg_createcluster "$ver" main >/dev/null
  name=main port=5432 status=down
fi
if [ "$status" != "online" ]; then
  say "starting cluster $ver/$name"
  $SUDO pg_ctlcluster "$ver" "$name" start
fi
psql_admin() {
  if [ -z "$SUDO" ]; then runuser -u postgres -- psql -p "$port" -qtAX "$@"; else sudo -u postgres psql -p "$port" -qtAX "$@"; fi
}
deadline=$((SECONDS + 30))
until psql_admin -c 'SELECT 1' >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || { say "PostgreSQL did not answer"; exit 1; }
  sleep 0.3
done
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'runner_test'")" != "1" ]; then
  psql_admin -c "CREATE ROLE runner_test LOGIN CREATEDB PASSWORD 'runner_test'"
fi
} 3>&-
echo "postgres://runner_test:runner_test@127.0.0.1:${port}/postgres" >&3
