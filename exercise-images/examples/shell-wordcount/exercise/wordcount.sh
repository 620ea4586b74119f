#!/bin/sh
# Usage: wordcount.sh [FILE] - print "COUNT WORD" lines for the words in FILE (or standard input).
# Write your script here.
echo "wordcount.sh: not written yet" >&2
exit 1
