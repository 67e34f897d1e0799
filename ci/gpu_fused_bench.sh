#!/usr/bin/env bash
# The fused router on a CUDA machine (repo root): its GPU tests, compute-sanitizer
# memcheck over the split launches (with and without programmatic dependent
# launch) and the router micro-benchmark, weights from HBM: with a producer
# kernel ahead of every call (as in serving; the set-up where PDL can pay), then
# without, then the 30-layer rotation with the producer. Results and logs go to
# $OUT (or ./gpu-fused); a short summary is printed last. About 6-7 min on an
# H200. The launch-config sweep is its own call: ci/gpu_fused_sweep.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${OUT:-gpu-fused}
mkdir -p "$LOGS"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
PYTEST=("$PYTHON" -m pytest -q -p no:cacheprovider)

# -v: each test's name and outcome reach the log as it ends, even if the timeout cuts the run.
timeout 270 "$PYTHON" -m pytest -v -p no:cacheprovider tests/test_gpu_fused_router.py > "$LOGS/gpu_fused_pytest.log" 2>&1
suite=$?
timeout 90 compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 20 \
  "${PYTEST[@]}" tests/test_gpu_fused_router.py \
  -k "deterministic or cuda_graph or non_finite or op_on_each_path or pdl" \
  > "$LOGS/memcheck.log" 2>&1
memcheck=$?
# Bounded, so one slow step cannot take the device call's whole 10 minutes.
timeout 100 "$PYTHON" -m benchmarks.bench_router --producer --real-step-estimate --tag producer \
  --out "$LOGS" > "$LOGS/bench_router_producer.txt" 2>&1
bench_producer=$?
timeout 80 "$PYTHON" -m benchmarks.bench_router --real-step-estimate --out "$LOGS" \
  > "$LOGS/bench_router.txt" 2>&1
bench=$?
timeout 60 "$PYTHON" -m benchmarks.bench_router --producer --layers 30 --real-step-estimate \
  --tag L30_producer --out "$LOGS" > "$LOGS/bench_router_L30_producer.txt" 2>&1
bench30=$?
echo "== fused GPU tests (exit $suite): $(tail -1 "$LOGS/gpu_fused_pytest.log")"
grep -E "FAILED|ERROR" "$LOGS/gpu_fused_pytest.log" | head -5
echo "== memcheck (exit $memcheck): $(grep -E 'ERROR SUMMARY' "$LOGS/memcheck.log" | tail -1); $(tail -1 "$LOGS/memcheck.log")"
for name in bench_router_producer bench_router bench_router_L30_producer; do
  echo "== $name"
  grep -E "^\| (T|1|16|64|256|512|1024|4096|16384) \||Real-step|WARNING|Error" "$LOGS/$name.txt" | head -14
done
echo "exits: bench producer $bench_producer, plain $bench, L30 producer $bench30"
[[ $suite -eq 0 && $memcheck -eq 0 && $bench_producer -eq 0 ]]
