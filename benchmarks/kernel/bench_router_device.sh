#!/usr/bin/env bash
# One device call of issue #34 item 3, "the baseline in the micro-benchmark":
# bench_router with GateLinear's tiers (cuBLAS and vLLM's ll_bf16_gemm), the
# compiled layer tail (serving-equivalent column), hot and cold weights, the
# issue's T list (1..1024, 4096, 16384), under the installed runtime's own pins.
#
#   bash benchmarks/kernel/bench_router_device.sh [PART]
#     all       (default) main, producer, anchors, each only if the budget still
#               holds it; a skipped part is named with the line to run it later
#     main      bench_router --cache both --real-step-estimate
#     producer  the same behind a non-PDL producer kernel (--producer)
#     anchors   --anchors-only with the installed vLLM's ll_bf16_gemm (the
#               reference for a second process's numbers)
#     anchors-ll034
#               --anchors-only with LL_SOURCE's ll_bf16_gemm (default
#               .cache/vllm-src/vllm-0.34.0; carry its
#               vllm/model_executor/kernels/linear/cute_dsl folder and its
#               WHEEL-METADATA), with vLLM 0.34.0's CuTe-DSL (nvidia-cutlass-dsl
#               4.8.0) ahead of the runtime's 4.6.0 on PYTHONPATH: the side site
#               of ci/device_runtime/cutlass_dsl_side.sh in /root/cutlass480/site
#               (CUTLASS_SIDE_PREFIX), skipped and named when it is not installed;
#               then compare with the anchors file:
#               python -m benchmarks.kernel.compare_anchors A.csv B.csv
#
# Needs vLLM installed on the device first (ci/device_runtime/, VLLM_RUNTIME=0.26.0)
# and an SM90/SM100 GPU for ll_bf16 (elsewhere its columns are `-`, the reason in
# the md). Results and logs go to $OUT/bench_router_item3/ (or ./bench-router-out);
# the short tables are printed last.
#
# Time (estimated, not measured: from the 2026-12-01 H200 runs, where one
# bench_router run of 15 T with weights from HBM took ~90 s): main ~2.5-3.5 min
# (13 T x 2 rotations, 12-14 pieces each, plus Inductor and CuTe-DSL compiles and
# vLLM's import), producer ~2.5-3 min (compile caches warm), anchors ~1 min.
# BENCH_BUDGET (default 560 s) bounds the call: a part starts only if its
# minimum fits what is left, and is killed at what is left. REPLAYS (default 15)
# and TOKENS (default: the issue's list) cut the work if a part does not fit.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
PART=${1:-all}
case $PART in all | main | producer | anchors | anchors-ll034) ;; *)
  echo "usage: $0 [all|main|producer|anchors|anchors-ll034]" >&2 && exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
OUT_DIR=${OUT:-bench-router-out}/bench_router_item3
LL_SOURCE=${LL_SOURCE:-.cache/vllm-src/vllm-0.34.0}
BUDGET=${BENCH_BUDGET:-560}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
mkdir -p "$OUT_DIR"
# anchors-ll034: nvidia-cutlass-dsl 4.8.0 (vLLM 0.34.0's pin) and its tvm-ffi and quack
# from the side site, named before everything else on PYTHONPATH (the 0.26.0 runtime
# comes later, through a .pth file); dsl_packages/ holds cutlass itself.
SIDE_SITE=${CUTLASS_SIDE_PREFIX:-/root/cutlass480}/site
if [[ $PART == anchors-ll034 ]]; then
  if [[ -d $SIDE_SITE/nvidia_cutlass_dsl ]]; then
    export PYTHONPATH=$SIDE_SITE/nvidia_cutlass_dsl/dsl_packages:$SIDE_SITE:$PYTHONPATH
    [[ -f $LL_SOURCE/vllm/model_executor/kernels/linear/cute_dsl/ll_bf16.py && -f $LL_SOURCE/WHEEL-METADATA ]] \
      || echo "WARNING: carry $LL_SOURCE/vllm/model_executor/kernels/linear/cute_dsl and $LL_SOURCE/WHEEL-METADATA"
  else
    SIDE_SITE=
    echo "== anchors-ll034 skipped: the nvidia-cutlass-dsl 4.8.0 side site is not installed" \
      "(no ${CUTLASS_SIDE_PREFIX:-/root/cutlass480}/site); install it first with the device calls" \
      "that 'bash ci/device_runtime/cutlass_dsl_side.sh build' prints (cutlass_dsl_side.sh stage, then install)"
  fi
fi
COMMON=(--replays "${REPLAYS:-15}" --out "$OUT_DIR")
[[ -n ${TOKENS:-} ]] && COMMON+=(--tokens "$TOKENS")
status=0
skipped=()

# run NAME MIN_S MAX_S ARGS...: bench_router with ARGS, if MIN_S seconds are left
run() {
  local name=$1 min_s=$2 max_s=$3 left
  shift 3
  left=$((BUDGET - SECONDS))
  if ((left < min_s)); then
    skipped+=("$name")
    echo "== $name skipped: ${left}s left, needs ~${min_s}s (run: bash $0 $name)"
    return
  fi
  ((max_s > left)) && max_s=$left
  echo "== $name (at ${SECONDS}s, limit ${max_s}s): bench_router $*"
  timeout --kill-after=10 "$max_s" "$PYTHON" -m benchmarks.kernel.bench_router "$@" \
    "${COMMON[@]}" >"$OUT_DIR/$name.txt" 2>&1
  local rc=$?
  ((rc == 0)) || status=1
  echo "   exit $rc after ${SECONDS}s; log $OUT_DIR/$name.txt"
  grep -E '^gemm_ll:|^WARNING|Error|error:' "$OUT_DIR/$name.txt" | head -n 5
}

"$PYTHON" - <<'PY' || true
import torch
try:
    import vllm
    v = vllm.__version__
except Exception as e:  # noqa: BLE001
    v = f"none ({e})"
from benchmarks.common.ll_gemm import cutlass_dsl_version
cap = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
print(f"torch {torch.__version__}, vllm {v}, nvidia-cutlass-dsl {cutlass_dsl_version()}, capability {cap}")
PY

case $PART in
  all)
    run main 150 300 --cache both --real-step-estimate --tag cache-both
    run producer 150 270 --cache both --producer --real-step-estimate --tag cache-both_producer
    run anchors 60 120 --anchors-only --tag anchors-installed
    ;;
  main) run main 150 "$BUDGET" --cache both --real-step-estimate --tag cache-both ;;
  producer) run producer 150 "$BUDGET" --cache both --producer --real-step-estimate --tag cache-both_producer ;;
  anchors) run anchors 60 "$BUDGET" --anchors-only --tag anchors-installed ;;
  anchors-ll034)
    if [[ -n $SIDE_SITE ]]; then
      run anchors-ll034 60 "$BUDGET" --anchors-only --ll-source "$LL_SOURCE" --tag anchors-ll034
    else
      skipped+=(anchors-ll034)
    fi
    ;;
esac

echo
"$PYTHON" - "$OUT_DIR" <<'PY'
import sys
from pathlib import Path

from benchmarks.kernel.bench_router import read_csv_rows, short_table_lines

for path in sorted(Path(sys.argv[1]).glob("bench_router*.csv")):
    print(f"== {path.name}")
    print("\n".join(short_table_lines(read_csv_rows(path))))
PY
((${#skipped[@]})) && echo "skipped (run each in another call): ${skipped[*]}"
echo "exit $status"
exit "$status"
