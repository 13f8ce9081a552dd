#!/usr/bin/env bash
# One polling call on a lent GPU machine: wait until WORK_FOLDER/phases.log shows PATTERN (e.g. "done") or
# SECONDS pass, print the logs' last lines, and always pack WORK_FOLDER into $OUT: a lease lapses 30 s after
# a call ends, and files left on the machine can be lost (run 4's were).
# Usage: bash bench/lease_poll.sh WORK_FOLDER PATTERN SECONDS
WORK=${1:?work folder} PATTERN=${2:?pattern in phases.log} LIMIT=${3:-540}
start=$(date +%s)
while [ $(( $(date +%s) - start )) -lt "$LIMIT" ] && ! grep -q "$PATTERN" "$WORK/phases.log" 2>/dev/null; do sleep 10; done
cat "$WORK/phases.log" 2>/dev/null
for log in "$WORK"/*.log; do echo "--- $log"; grep -h "^\[[0-9]" "$log" | tail -n 20 | cut -c1-220; tail -n 2 "$log" | cut -c1-300; done
(cd "$WORK" && tar czf "${OUT:?}/results_$(date -u +%H%M%S).tgz" --exclude='checkpoint-*' .) && ls -la "$OUT"
