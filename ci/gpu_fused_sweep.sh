#!/usr/bin/env bash
# The fused router's launch-config sweep on a CUDA machine (repo root), weights
# from HBM, at the split launches' token counts, with a producer kernel ahead of
# every call (as in serving) so the PDL twins are timed where they can pay.
# Results to $OUT (or ./gpu-fused); the best table is printed last. ~3-4 min on
# an H200, most of it Triton compiles.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${OUT:-gpu-fused}
mkdir -p "$LOGS"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
timeout "${SWEEP_TIMEOUT:-300}" "$PYTHON" -m benchmarks.sweep_fused_router --producer \
  --tokens "${SWEEP_TOKENS:-1,16,64,256}" --tag producer --out "$LOGS" > "$LOGS/sweep.txt" 2>&1
sweep=$?
echo "== sweep (exit $sweep)"
tail -n 25 "$LOGS/sweep.txt"
exit $sweep
