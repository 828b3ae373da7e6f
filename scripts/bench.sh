#!/usr/bin/env bash
# Every benchmark in bench/, one after the other (`make bench`). Each prints ratios against a
# baseline measured in the same run. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
for b in bench/bench_*.py; do
  echo "=== $b"
  "$PY" -m "bench.$(basename "$b" .py)"
done
