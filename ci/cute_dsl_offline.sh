#!/usr/bin/env bash
# `make cute-offline`: compile a CuTe-DSL kernel for sm_90a without a GPU, once per
# nvidia-cutlass-dsl pin that a vLLM release ships (4.6.0: vLLM 0.26.0; 4.8.0: 0.34.0),
# and check the cubins (ci/cute_dsl_offline_compile.py; docs/design/cute-dsl-offline.md).
# Not part of `make test`: it needs ~210 MB of wheels, cached in .cache/cute-dsl/wheels/.
# Each pin gets its own venv (.cache/cute-dsl/venv-<pin>/), rebuilt only when its
# requirement list changes. PINS="4.6.0" limits the run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=.cache/cute-dsl
WHEELS=$ROOT/wheels
PY=${PYTHON:-python3.11}
PINS=${PINS:-4.6.0 4.8.0}
mkdir -p "$WHEELS"

requirements() {
  local pin=$1
  printf '%s\n' "nvidia-cutlass-dsl==$pin" "nvidia-cutlass-dsl-libs-base==$pin" \
    "nvidia-cutlass-dsl-libs-core==$pin" "nvidia-cutlass-dsl-libs-cu13==$pin" \
    typing-extensions==4.16.0 cuda-bindings==13.3.1 cuda-pathfinder==1.9.1 \
    protobuf==6.33.6 nvidia-cuda-nvdisasm==13.5.37
  # 4.6.0 imports numpy; 4.8.0 does not.
  [[ $pin == 4.6.* ]] && echo numpy==2.4.6
  return 0
}

status=0
for pin in $PINS; do
  venv=$ROOT/venv-$pin
  reqs=$ROOT/requirements-$pin.txt
  requirements "$pin" > "$reqs.new"
  if [[ ! -x $venv/bin/python ]] || ! cmp -s "$reqs.new" "$reqs"; then
    echo "== nvidia-cutlass-dsl $pin: building $venv"
    rm -rf "$venv"
    "$PY" -m venv "$venv"
    # --no-deps: the meta wheel requires -libs-cu12 (88 MB) unconditionally, and a
    # compile for CUDA 13 needs only -libs-cu13.
    "$venv/bin/pip" download -q --no-deps --only-binary=:all: -d "$WHEELS" -r "$reqs.new"
    "$venv/bin/pip" install -q --no-deps --no-index --find-links "$WHEELS" -r "$reqs.new"
    mv "$reqs.new" "$reqs"
  else
    rm -f "$reqs.new"
  fi
  echo "== nvidia-cutlass-dsl $pin"
  "$venv/bin/python" ci/cute_dsl_offline_compile.py || status=1
done
exit "$status"
