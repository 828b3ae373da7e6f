#!/usr/bin/env bash
# The whole test suite, as CI and a newcomer run it (`make test`). Needs root: the root-marked tests
# load BPF programs into the running kernel. Services the tests need are started by their fixtures
# through the project's own scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [[ $EUID -ne 0 ]]; then
  echo "test.sh: not root: kernel tests will be skipped (run as root for the full suite)" >&2
fi
"$VENV/bin/ruff" check agent contract ingest blindspot tests bench grafana
"$VENV/bin/lint-imports"  # the layers: [tool.importlinter] in pyproject.toml
"$VENV/bin/mypy"  # files and settings: [tool.mypy] in pyproject.toml
exec "$VENV/bin/pytest" -ra --durations=15 "$@" tests
