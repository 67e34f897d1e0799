#!/usr/bin/env bash
# The fused router on a CUDA machine (repo root): its GPU tests, compute-sanitizer
# memcheck over the split launches, the launch-config sweep and the
# router micro-benchmark (weights from HBM, then L2-resident). Results and logs go
# to $OUT (or ./gpu-fused); a short summary is printed last. About 5-6 min on an
# H200, most of it Triton compiles of the sweep's candidates.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${OUT:-gpu-fused}
mkdir -p "$LOGS"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
PYTEST=("$PYTHON" -m pytest -q -p no:cacheprovider)

# -v: each test's name and outcome reach the log as it ends, even if the timeout cuts the run.
timeout 240 "$PYTHON" -m pytest -v -p no:cacheprovider tests/test_gpu_fused_router.py > "$LOGS/gpu_fused_pytest.log" 2>&1
suite=$?
compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 20 \
  "${PYTEST[@]}" tests/test_gpu_fused_router.py \
  -k "deterministic or cuda_graph or non_finite or op_on_each_path" \
  > "$LOGS/memcheck.log" 2>&1
memcheck=$?
# Bounded, so one slow step cannot take the device call's whole 10 minutes.
timeout 270 "$PYTHON" -m benchmarks.sweep_fused_router --out "$LOGS" > "$LOGS/sweep.txt" 2>&1
sweep=$?
timeout 150 "$PYTHON" -m benchmarks.bench_router --real-step-estimate --out "$LOGS" > "$LOGS/bench_router.txt" 2>&1
bench=$?
timeout 120 "$PYTHON" -m benchmarks.bench_router --layers 30 --real-step-estimate --tag L30 --out "$LOGS" \
  > "$LOGS/bench_router_L30.txt" 2>&1
bench30=$?
echo "== fused GPU tests (exit $suite): $(tail -1 "$LOGS/gpu_fused_pytest.log")"
echo "== memcheck (exit $memcheck): $(grep -E 'ERROR SUMMARY' "$LOGS/memcheck.log" | tail -1)"
echo "== sweep (exit $sweep)"
tail -n 25 "$LOGS/sweep.txt"
echo "== bench_router L2-cold weights (exit $bench)"
tail -n 22 "$LOGS/bench_router.txt"
echo "== bench_router 30 layers (exit $bench30)"
tail -n 22 "$LOGS/bench_router_L30.txt"
[[ $suite -eq 0 && $sweep -eq 0 && $bench -eq 0 ]]
