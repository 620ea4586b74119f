#!/usr/bin/env bash
# Removes what test runs may have left if a test process died hard: containers, volumes and images
# whose exercise-runner.instance label starts with "test-", loop devices backing test workspaces,
# the build cgroups of test instances, and the build network's firewall rules and chains.
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
# Images tests made (labelled with their instance).
for i in $(docker images -q --filter label=exercise-runner.instance | sort -u); do
  inst="$(docker image inspect -f '{{index .Config.Labels "exercise-runner.instance"}}' "$i" 2>/dev/null)"
  case "$inst" in test-*) docker rmi -f "$i" >/dev/null 2>&1 ;; esac
done
# Docker networks of test instances (tests/builds.rs makes an operator-style build network).
for n in $(docker network ls -q --filter label=exercise-runner.instance); do
  inst="$(docker network inspect -f '{{index .Labels "exercise-runner.instance"}}' "$n" 2>/dev/null)"
  case "$inst" in test-*) docker network rm "$n" >/dev/null 2>&1 ;; esac
done
# The runner's own build network and its firewall rules: every test runner makes them (they are
# shared by all instances on a host, so they carry no instance label). A test machine runs no
# production runner; a runner that starts again makes both again.
if [ "$(docker network inspect -f '{{index .Labels "exercise-runner.managed"}}' exercise-runner-build 2>/dev/null)" = true ]; then
  docker network rm exercise-runner-build >/dev/null 2>&1
fi
for bin in iptables ip6tables; do
  command -v "$bin" >/dev/null || continue
  for chain in INPUT DOCKER-USER FORWARD; do
    "$bin" -w -S "$chain" 2>/dev/null | grep -F -- '--comment "exercise-runner build isolation"' | sed 's/^-A /-D /' |
      while read -r rule; do eval "\"$bin\" -w $rule" 2>/dev/null; done
  done
  # The runner's own chains (the jumps to them went with the rules above).
  for chain in ER-BUILD-INPUT ER-BUILD-FORWARD; do
    "$bin" -w -F "$chain" 2>/dev/null && "$bin" -w -X "$chain" 2>/dev/null
  done
done
# The local fleet of tests/fleet.rs (its engines, namespaces, bridge, firewall rule and data),
# should the test have ended without taking it down.
FLEET_NAME=ertest "$(dirname "${BASH_SOURCE[0]}")/fleet-down" >/dev/null 2>&1 || true
# Databases made by tests/postgres.rs.
if [ -n "${RUNNER_TEST_POSTGRES_URL:-}" ] && command -v psql >/dev/null; then
  for db in $(psql "$RUNNER_TEST_POSTGRES_URL" -qtAX -c "SELECT datname FROM pg_database WHERE datname LIKE 'runner_test_%'" 2>/dev/null); do
    psql "$RUNNER_TEST_POSTGRES_URL" -qtAX -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1
  done
fi
exit 0
