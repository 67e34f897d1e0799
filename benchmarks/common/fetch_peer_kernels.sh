#!/usr/bin/env bash
# Fetch the in-tree Gemma4 routing kernels of vLLM and SGLang from their PyPI
# wheels (no dependencies) and unpack just their source files into
# .cache/peer_kernels/ (ignored by git; carried to the GPU machine with the
# device tool's `carry`). Nothing of theirs is committed to this repository.
set -euo pipefail
cd "$(dirname "$0")/../.."
VLLM_VERSION=${VLLM_VERSION:-0.33.0}
SGLANG_VERSION=${SGLANG_VERSION:-0.5.23}
PY=${PYTHON:-.venv/bin/python}
OUT=.cache/peer_kernels
mkdir -p .cache/wheels "$OUT"

fetch() {  # dist version member dest
  local dist=$1 version=$2 member=$3 dest=$4
  if [[ -f $dest ]]; then echo "have $dest"; return; fi
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .cache/wheels "$dist==$version"
  local wheel
  wheel=$(ls .cache/wheels/"${dist//-/_}"-"$version"-*.whl | head -1)
  mkdir -p "$(dirname "$dest")"
  unzip -p "$wheel" "$member" > "$dest"
  echo "unpacked $member from $(basename "$wheel") -> $dest"
}

fetch vllm "$VLLM_VERSION" vllm/model_executor/models/gemma4.py \
  "$OUT/vllm-$VLLM_VERSION/gemma4.py"
fetch sglang "$SGLANG_VERSION" sglang/kernels/ops/moe/gemma4_routing.py \
  "$OUT/sglang-$SGLANG_VERSION/gemma4_routing.py"
