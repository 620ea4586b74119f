#!/usr/bin/env bash
# Removes what test runs may have left if a test process died hard: containers and volumes whose
# exercise-runner.instance label starts with "test-", loop devices backing test workspaces, and
# the build cgroups of test instances.
set -uo pipefail
for c in $(docker ps -aq --filter label=exercise-runner.managed=true); do
  inst="$(docker inspect -f '{{index .Config.Labels "exercise-runner.instance"}}' "$c" 2>/dev/null)"
  case "$inst" in test-*) docker rm -f "$c" >/dev/null 2>&1 ;; esac
done
for v in $(docker volume ls -q --filter label=exercise-runner.managed=true); do
  inst="$(docker volume inspect -f '{{index .Labels "exercise-runner.instance"}}' "$v" 2>/dev/null)"
  case "$inst" in test-*) docker volume rm "$v" >/dev/null 2>&1 ;; esac
done
losetup -a 2>/dev/null | grep 'exercise-runner-test-' | cut -d: -f1 | while read -r dev; do
  losetup -d "$dev" 2>/dev/null
done
# Build cgroups of test instances (named <instance>-<uuid>; rmdir only removes empty ones).
for d in /sys/fs/cgroup/*/exercise-runner-build/test-* /sys/fs/cgroup/exercise-runner-build/test-*; do
  [ -d "$d" ] && rmdir "$d" 2>/dev/null
done
# Databases made by tests/postgres.rs.
if [ -n "${RUNNER_TEST_POSTGRES_URL:-}" ] && command -v psql >/dev/null; then
  for db in $(psql "$RUNNER_TEST_POSTGRES_URL" -qtAX -c "SELECT datname FROM pg_database WHERE datname LIKE 'runner_test_%'" 2>/dev/null); do
    psql "$RUNNER_TEST_POSTGRES_URL" -qtAX -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1
  done
fi
exit 0
