#!/usr/bin/env bash
# GPU correctness run (CUDA machine, repo root): the GPU tests, the kernel matrix
# and the torch.library tests on the GPU, then compute-sanitizer memcheck over a
# representative subset (ties, NaN/Inf, random bits, CUDA graphs, bucket
# independence). Logs go to $OUT (or ./gpu-checks) and a summary is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${OUT:-gpu-checks}
mkdir -p "$LOGS"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
PYTEST=("$PYTHON" -m pytest -q -p no:cacheprovider)

SUITE=(tests/routing/test_gpu_routing.py tests/routing/test_kernel_matrix.py tests/routing/test_torch_op.py tests/fused_router/test_gpu_fused_router.py)
# The CustomOp check needs vLLM (on the device: ci/device_runtime/ installs it).
if "$PYTHON" -c "import vllm" > /dev/null 2>&1; then
  SUITE+=(tests/integration/test_gpu_vllm_op.py)
  vllm_note="CustomOp forward_cuda vs forward_native included"
else
  vllm_note="vLLM not importable here: tests/integration/test_gpu_vllm_op.py NOT run"
fi
"${PYTEST[@]}" "${SUITE[@]}" > "$LOGS/gpu_pytest.log" 2>&1
suite=$?
compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 20 \
  "${PYTEST[@]}" tests/routing/test_gpu_routing.py -k "ties or random_bits or cuda_graph or bucket" \
  > "$LOGS/memcheck.log" 2>&1
memcheck=$?
echo "== GPU suite (exit $suite): $(tail -1 "$LOGS/gpu_pytest.log") [$vllm_note]"
echo "== memcheck (exit $memcheck): $(grep -E 'ERROR SUMMARY' "$LOGS/memcheck.log" | tail -1)"
echo "   tests under memcheck: $(grep -E 'passed|failed' "$LOGS/memcheck.log" | tail -1)"
[[ $suite -eq 0 && $memcheck -eq 0 ]]
