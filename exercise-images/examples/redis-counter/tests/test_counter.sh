#!/bin/sh
# Hidden tests of redis-counter. Usage: test_counter.sh PATH/TO/counter.sh
# Talks to the sandbox's own Redis (the runner waits for the "redis" service before a check).
set -u
script=${1:?usage: test_counter.sh PATH/TO/counter.sh}
failed=0 passed=0
# Keys unique to this run, so a learner's own experiments do not change the outcome.
a="test-$$-a" b="test-$$-b"

redis() { redis-cli -h 127.0.0.1 -p 6379 --raw "$@"; }
expect() { # expect DESCRIPTION WANT GOT
  if [ "$2" = "$3" ]; then passed=$((passed + 1)); echo "ok   $1"
  else failed=$((failed + 1)); echo "FAIL $1: want '$2', got '$3'"; fi
}
run() { timeout 5 sh "$script" "$@" 2>/dev/null; }

if [ "$(redis ping 2>&1)" != PONG ]; then
  echo "FAIL redis is not answering on 127.0.0.1:6379"; exit 1
fi
redis del "counter:$a" "counter:$b" >/dev/null

expect "first increment prints 1"      1 "$(run "$a")"
expect "second increment prints 2"     2 "$(run "$a")"
expect "increment by 5 prints 7"       7 "$(run "$a" 5)"
expect "negative steps work"           4 "$(run "$a" -3)"
expect "value is stored in Redis"      4 "$(redis get "counter:$a")"
expect "counters are independent"      1 "$(run "$b")"

run "$a" abc >/dev/null; status=$?
expect "non-integer BY fails"          yes "$([ "$status" -ne 0 ] && echo yes || echo "no (status $status)")"
expect "non-integer BY changes nothing" 4 "$(redis get "counter:$a")"

redis del "counter:$a" "counter:$b" >/dev/null
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
