#!/bin/sh
# Usage: counter.sh NAME [BY] - add BY (default 1) to the Redis counter NAME, print the new value.
set -eu
name=${1:?usage: counter.sh NAME [BY]}
by=${2:-1}

# Check BY here: redis-cli's exit status does not tell an error reply from a value.
case ${by#-} in
  '' | *[!0-9]*) echo "counter.sh: BY must be an integer, not '$by'" >&2; exit 2 ;;
esac

redis-cli -h 127.0.0.1 -p 6379 --raw INCRBY "counter:$name" "$by"
