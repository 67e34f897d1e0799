#!/usr/bin/env bash
# The fused router on a CUDA machine (repo root), one part per device call:
#
#   bash ci/gpu_fused_bench.sh tests   # GPU tests + compute-sanitizer memcheck, ~7 min
#                                      # (GPU_TESTS_K: a pytest -k filter)
#   bash ci/gpu_fused_bench.sh bench   # bench_router, weights from HBM: with a producer
#                                      # kernel ahead of every call (as in serving; the
#                                      # set-up where PDL can pay), without, and the
#                                      # 30-layer rotation with the producer, ~4 min
#   bash ci/gpu_fused_bench.sh sweep   # sweep_fused_router --producer at the split
#                                      # launches' T (SWEEP_TOKENS; SWEEP_TAG names
#                                      # the result files apart), ~4 min
#   bash ci/gpu_fused_bench.sh stages  # bench_fused_stages: the split launch cut after
#                                      # each stage, HBM and L2 weights, ~2 min
#   bash ci/gpu_fused_bench.sh decode  # the CUDA decode path (NVIDIA sm_90+): its GPU
#                                      # tests, memcheck over the op on it, and its
#                                      # builds timed against the Triton kernel, ~3 min
#
# On an H200 (2026-12-01) the test file took ~400 s, the three bench_router runs
# ~90 s each: together they do not fit one 10-minute call. Results and logs go to
# $OUT (or ./gpu-fused), packed as one .tgz (a call returns at most 8 files); a
# short summary is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
PART=${1:?usage: $0 tests|bench|sweep|stages|decode}
OUT_DIR=${OUT:-gpu-fused}
LOGS=$OUT_DIR/fused_$PART
mkdir -p "$LOGS"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}

table_rows() {
  grep -E "^\| *(T|1|16|64|256|512|1024|4096|16384) *\||Real-step|WARNING|Error" "$1" | head -14
}

status=0
case $PART in
  tests)
    # -v: each test's name and outcome reach the log as it ends, even if the timeout cuts the run.
    # GPU_TESTS_K: a pytest -k filter, e.g. "not every_" leaves the per-candidate
    # tests to the sweep (which checks each candidate the same way before timing it).
    timeout 450 "$PYTHON" -m pytest -v -p no:cacheprovider tests/fused_router/test_gpu_fused_router.py \
      ${GPU_TESTS_K:+-k "$GPU_TESTS_K"} > "$LOGS/gpu_fused_pytest.log" 2>&1
    suite=$?
    timeout 100 compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 20 \
      "$PYTHON" -m pytest -q -p no:cacheprovider tests/fused_router/test_gpu_fused_router.py \
      -k "deterministic or cuda_graph or non_finite or op_on_each_path or pdl" \
      > "$LOGS/memcheck.log" 2>&1
    memcheck=$?
    echo "== fused GPU tests (exit $suite): $(tail -1 "$LOGS/gpu_fused_pytest.log")"
    grep -E "FAILED|ERROR" "$LOGS/gpu_fused_pytest.log" | head -5
    echo "== memcheck (exit $memcheck): $(grep -E 'ERROR SUMMARY' "$LOGS/memcheck.log" | tail -1)"
    ((suite || memcheck)) && status=1
    ;;
  bench)
    # Bounded, so one slow run cannot take the device call's whole 10 minutes.
    timeout 130 "$PYTHON" -m benchmarks.kernel.bench_router --producer --real-step-estimate \
      --tag producer --out "$LOGS" > "$LOGS/bench_router_producer.txt" 2>&1 || status=1
    timeout 130 "$PYTHON" -m benchmarks.kernel.bench_router --real-step-estimate --out "$LOGS" \
      > "$LOGS/bench_router.txt" 2>&1 || status=1
    timeout 100 "$PYTHON" -m benchmarks.kernel.bench_router --producer --layers 30 --real-step-estimate \
      --tag L30_producer --out "$LOGS" > "$LOGS/bench_router_L30_producer.txt" 2>&1 || status=1
    for name in bench_router_producer bench_router bench_router_L30_producer; do
      echo "== $name"
      table_rows "$LOGS/$name.txt"
    done
    ;;
  sweep)
    timeout "${SWEEP_TIMEOUT:-480}" "$PYTHON" -m benchmarks.tuning.sweep_fused_router --producer \
      --tokens "${SWEEP_TOKENS:-1,16,64,256}" --tag "producer${SWEEP_TAG:+_$SWEEP_TAG}" --out "$LOGS" \
      > "$LOGS/sweep.txt" 2>&1 || status=1
    echo "== sweep"
    tail -n 25 "$LOGS/sweep.txt"
    ;;
  stages)
    timeout 150 "$PYTHON" -m benchmarks.kernel.bench_fused_stages --producer --tag producer \
      --out "$LOGS" > "$LOGS/stages.txt" 2>&1 || status=1
    timeout 100 "$PYTHON" -m benchmarks.kernel.bench_fused_stages --producer --layers 30 \
      --tag L30_producer --out "$LOGS" > "$LOGS/stages_L30.txt" 2>&1 || status=1
    for name in stages stages_L30; do
      echo "== $name"
      grep -E "^\| " "$LOGS/$name.txt" | tail -6
    done
    ;;
  decode)
    # 245 tests took ~40 s on an H200 (2026-12-06); memcheck runs the op's decode-path
    # tests that cover a CUDA graph, the padding mask and both expert-scale dtypes.
    timeout 200 "$PYTHON" -m pytest -v -p no:cacheprovider tests/fused_router/test_gpu_cuda_decode_path.py \
      tests/fused_router/test_gpu_cuda_decode_tiles.py tests/benchmarks/test_gpu_cuda_decode.py \
      > "$LOGS/decode_pytest.log" 2>&1
    suite=$?
    timeout 240 compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 20 \
      "$PYTHON" -m pytest -q -p no:cacheprovider tests/fused_router/test_gpu_cuda_decode_path.py \
      tests/fused_router/test_gpu_cuda_decode_tiles.py \
      -k "graph or falls_back or (contract and bf16_scales) or coarser" > "$LOGS/memcheck.log" 2>&1
    memcheck=$?
    timeout "${DECODE_TIMEOUT:-120}" "$PYTHON" -m benchmarks.kernel.bench_cuda_decode --producer --pdl off \
      --builds "${DECODE_BUILDS:-8x1p,8x8cp}" --tokens "${DECODE_TOKENS:-1,2,4,8,16,17,32,33}" \
      --tag decode --out "$LOGS" > "$LOGS/bench_cuda_decode.txt" 2>&1 || status=1
    echo "== decode GPU tests (exit $suite): $(tail -1 "$LOGS/decode_pytest.log")"
    grep -E "FAILED|ERROR" "$LOGS/decode_pytest.log" | head -5
    echo "== memcheck (exit $memcheck): $(grep -E 'ERROR SUMMARY' "$LOGS/memcheck.log" | tail -1)"
    echo "== bench_cuda_decode"
    grep -E "^T=" "$LOGS/bench_cuda_decode.txt" | cut -c1-400
    ((suite || memcheck)) && status=1
    ;;
  *)
    echo "usage: $0 tests|bench|sweep|stages|decode" >&2
    exit 2
    ;;
esac
tar czf "$OUT_DIR/fused_$PART.tgz" -C "$OUT_DIR" "fused_$PART" && rm -rf "$LOGS"
exit $status
