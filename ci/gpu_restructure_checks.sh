#!/usr/bin/env bash
# The restructuring's GPU proof (CUDA machine, repo root; no vLLM needed): the two trees
# timed side by side (benchmarks/kernel/compare_trees.py; the "before" tree unpacked under
# .cache/before_tree by `git archive <commit> vllm_gemma4_router`), memcheck over the
# padding CUDA-graph tests of the routing op and the fused router, then the GPU suite
# and its memcheck subset (ci/gpu_checks.sh). STEPS picks a subset: compare, padding, suite,
# or tests (the GPU suite's pytest alone, for a call that has no time left for memcheck).
# Logs go to $OUT (or ./gpu-restructure); a summary is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${OUT:-gpu-restructure}
STEPS=${STEPS:-compare padding suite}
REPEATS=${REPEATS:-3}
mkdir -p "$LOGS"
# tabulate (pure Python) comes as a wheel: a wheel on PYTHONPATH imports as a zip.
WHEELS=$(ls .cache/device_wheels/*.whl 2>/dev/null | tr '\n' ':')
export PYTHONPATH=$PWD:${WHEELS}${PYTHONPATH:-} PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
status=0
summary=()
for step in $STEPS; do
  start=$SECONDS
  case $step in
    compare)
      timeout 330 "$PYTHON" -m benchmarks.kernel.compare_trees --tree before=.cache/before_tree \
        --tree after=. --repeats "$REPEATS" --out "$LOGS/compare" > "$LOGS/compare.log" 2>&1
      rc=$? ;;
    padding)
      timeout 200 compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 20 \
        "$PYTHON" -m pytest -q -p no:cacheprovider tests/routing/test_gpu_padding.py \
        tests/fused_router/test_gpu_fused_padding.py -k "not 4097" > "$LOGS/padding_memcheck.log" 2>&1
      rc=$? ;;
    suite)
      OUT="$LOGS/suite" timeout 560 bash ci/gpu_checks.sh > "$LOGS/suite.log" 2>&1
      rc=$? ;;
    tests)
      timeout "${TESTS_TIMEOUT:-560}" "$PYTHON" -m pytest -q -p no:cacheprovider \
        tests/routing/test_gpu_routing.py tests/routing/test_kernel_matrix.py \
        tests/routing/test_torch_op.py tests/fused_router/test_gpu_fused_router.py \
        > "$LOGS/suite.log" 2>&1
      rc=$? ;;
  esac
  summary+=("== $step: exit $rc, $((SECONDS - start)) s")
  [[ $rc -eq 0 ]] || status=1
done
[[ -f $LOGS/compare.log ]] && tail -40 "$LOGS/compare.log"
[[ -f $LOGS/padding_memcheck.log ]] && grep -E "ERROR SUMMARY|passed|failed" "$LOGS/padding_memcheck.log" | tail -2
[[ -f $LOGS/suite.log ]] && tail -4 "$LOGS/suite.log"
printf '%s\n' "${summary[@]}"
exit $status
