#!/bin/sh
# Usage: wordcount.sh [FILE] - print "COUNT WORD" lines for the words in FILE (or standard input),
# most frequent first, ties in alphabetical order.
set -eu
export LC_ALL=C  # byte-wise ranges and sorting, the same on every machine

if [ $# -gt 0 ]; then
  if [ ! -r "$1" ] || [ -d "$1" ]; then
    echo "wordcount.sh: cannot read $1" >&2
    exit 1
  fi
  exec <"$1"
fi

tr 'A-Z' 'a-z' | tr -cs 'a-z' '\n' | grep -v '^$' | sort | uniq -c | sort -k1,1nr -k2,2 |
  awk '{ print $1, $2 }'
