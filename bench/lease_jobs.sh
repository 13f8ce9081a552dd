#!/usr/bin/env bash
# Run benchmark commands on a lent GPU machine (after `. bench/lease_setup.sh`), one after the other, each
# logging to WORK_FOLDER/<n>.log, with their start times in WORK_FOLDER/phases.log for bench/lease_poll.sh.
# bench/README.md lists the commands that made each committed result (WORK_FOLDER/results: their files).
# Usage: bash bench/lease_jobs.sh WORK_FOLDER 'COMMAND' ...   (one quoted command line each; `&` inside one
# runs its parts side by side, e.g. on GPU 0 and GPU 1, and `wait` ends it)
set -u
WORK=${1:?a work folder}
shift
mkdir -p "$WORK/results"
n=0
for command in "$@"; do
  n=$((n + 1))
  echo "== $(date -u +%H:%M:%S) $n: $command" >> "$WORK/phases.log"
  WORK=$WORK bash -c "$command" > "$WORK/$n.log" 2>&1
  echo "exit $?" >> "$WORK/$n.log"
done
echo "== $(date -u +%H:%M:%S) done" >> "$WORK/phases.log"
