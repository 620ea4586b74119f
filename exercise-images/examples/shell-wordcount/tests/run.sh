#!/bin/sh
# Hidden tests of shell-wordcount. Usage: run.sh PATH/TO/wordcount.sh
# Each cases/NAME.in is fed to the script (as a file argument and on stdin) and the output must
# equal cases/NAME.out. The script is run with `sh` (dash): it has to be POSIX shell.
set -u
script=${1:?usage: run.sh PATH/TO/wordcount.sh}
cases="$(dirname "$0")/cases"
out="$(mktemp)"; err="$(mktemp)"
trap 'rm -f "$out" "$err"' EXIT
failed=0 passed=0

check() { # check NAME MODE: compare the script's output for cases/NAME.in with cases/NAME.out
  if [ "$2" = file ]; then
    timeout 5 sh "$script" "$cases/$1.in" >"$out" 2>"$err"
  else
    timeout 5 sh "$script" <"$cases/$1.in" >"$out" 2>"$err"
  fi
  status=$?
  if [ "$status" -eq 0 ] && diff -u "$cases/$1.out" "$out" >/dev/null; then
    passed=$((passed + 1)); echo "ok   $1 ($2)"
  else
    failed=$((failed + 1)); echo "FAIL $1 ($2): exit status $status"
    diff -u --label expected --label actual "$cases/$1.out" "$out" | head -n 20
    head -n 5 "$err"
  fi
}

for input in "$cases"/*.in; do
  name=$(basename "$input" .in)
  check "$name" file
  check "$name" stdin
done

# A file that cannot be read: an error message and a non-zero status.
timeout 5 sh "$script" /nonexistent/words.txt >"$out" 2>"$err"
status=$?
if [ "$status" -ne 0 ] && [ -s "$err" ]; then
  passed=$((passed + 1)); echo "ok   missing file"
else
  failed=$((failed + 1)); echo "FAIL missing file: want a non-zero status and a message on stderr (status $status)"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
