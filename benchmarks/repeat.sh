#!/usr/bin/env bash
# Run one test N times in a row, stopping at the first failure (a flaky test is a bug to find).
# Usage: bash benchmarks/repeat.sh N TEST_ID   (e.g. 30 "tests/test_workers.py::test_three_workers_share_one_total[sqlite]")
set -u
cd "$(dirname "$0")/.."
count=$1; test_id=$2
mkdir -p logs
for i in $(seq 1 "$count"); do
  start=$(date +%s)
  if .venv/bin/pytest -q -p no:cacheprovider "$test_id" > logs/repeat-last.log 2>&1; then
    echo "run $i passed in $(( $(date +%s) - start )) s"
  else
    echo "run $i FAILED (output: logs/repeat-failed.log)"; cp logs/repeat-last.log logs/repeat-failed.log; exit 1
  fi
done
echo "$count passed in a row"
