#!/usr/bin/env bash
# One polling call on a lent GPU machine: wait until WORK_FOLDER/phases.log shows PATTERN (e.g.
# "done") or SECONDS pass, print the phases and the logs' last lines, and ALWAYS pack what exists so
# far into $OUT, so that the files come back with this call. A lease lapses 30 s after a call ends:
# results left on the machine between calls can be lost (run 4's were, bench/README.md).
# Usage: bash bench/lease_poll.sh WORK_FOLDER PATTERN SECONDS
WORK=${1:?work folder} PATTERN=${2:?pattern in phases.log} LIMIT=${3:-540}
start=$(date +%s)
while [ $(( $(date +%s) - start )) -lt "$LIMIT" ] && ! grep -q "$PATTERN" "$WORK/phases.log" 2>/dev/null; do
  sleep 10
done
cat "$WORK/phases.log" 2>/dev/null
for log in "$WORK"/*.log; do echo "--- $log"; grep -h "^\[[0-9]" "$log" | tail -n 20 | cut -c1-220; tail -n 2 "$log" | cut -c1-300; done
stamp=$(date -u +%H%M%S)
( cd "$WORK" && tar czf "${OUT:?}/results_$stamp.tgz" --exclude='*.pickle.gz' --exclude='checkpoint-*' . )
find "$WORK" -name '*.pickle.gz' -size -15M -exec cp {} "$OUT/" \;
ls -la "$OUT"
