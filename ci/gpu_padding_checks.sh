#!/usr/bin/env bash
# vLLM 0.34's padding mask on a CUDA GPU (repo root; no vLLM needed): the CUDA-graph
# tests of the routing op and the fused router (captured with an all-padding mask,
# replayed with mixed ones), memcheck over them, the routing GPU suite, and the
# mask's cost (benchmarks/kernel/bench_padding_mask.py). Logs and results go to $OUT (or
# ./gpu-padding); a summary is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${OUT:-gpu-padding}
mkdir -p "$LOGS"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
PYTEST=("$PYTHON" -m pytest -q -p no:cacheprovider -rA)
PADDING_TESTS=(tests/routing/test_gpu_padding.py tests/fused_router/test_gpu_fused_padding.py)

"${PYTEST[@]}" "${PADDING_TESTS[@]}" > "$LOGS/padding_pytest.log" 2>&1
padding=$?
compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 20 \
  "${PYTEST[@]}" "${PADDING_TESTS[@]}" -k "not 4097" > "$LOGS/padding_memcheck.log" 2>&1
memcheck=$?
"${PYTEST[@]}" tests/routing/test_gpu_routing.py tests/routing/test_torch_op.py > "$LOGS/routing_gpu_pytest.log" 2>&1
routing=$?
"$PYTHON" -m benchmarks.kernel.bench_padding_mask --out "$LOGS" > "$LOGS/bench.log" 2>&1
bench=$?
echo "== padding CUDA-graph tests (exit $padding): $(tail -1 "$LOGS/padding_pytest.log")"
echo "== memcheck (exit $memcheck): $(grep -E 'ERROR SUMMARY' "$LOGS/padding_memcheck.log" | tail -1)"
echo "   under memcheck: $(grep -E 'passed|failed' "$LOGS/padding_memcheck.log" | tail -1)"
echo "== routing GPU suite (exit $routing): $(tail -1 "$LOGS/routing_gpu_pytest.log")"
echo "== bench (exit $bench):"
tail -20 "$LOGS/bench.log"
[[ $padding -eq 0 && $memcheck -eq 0 && $routing -eq 0 && $bench -eq 0 ]]
