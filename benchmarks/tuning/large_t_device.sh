#!/usr/bin/env bash
# Issue #38 on the GPU (CUDA machine, repo root; no vLLM needed), one stage per device call:
#   sweep    the launch sweep of the buckets above 8192 tokens,
#            L2-hot (its choices written over the packaged CUDA table into
#            .cache/large_t/cuda.json, with provenance) and cold (randn logits only);
#   compare  that table installed in this tree, then this tree, the tree before the issue
#            (.cache/before_tree: `git archive cb76607 vllm_gemma4_router`) and vLLM
#            0.34.0's kernel (.cache/peer_kernels/vllm-0.34.0/gemma4.py) side by side,
#            T = 1 ... 262144, fp32 and bf16, without and with the padding mask, 3 repeats;
#   checks   that table (or the packaged one) installed, ci/gpu_checks.sh (GPU suite and memcheck);
#   routing_checks  that table installed, the routing GPU tests and memcheck over them.
#   registers  the packaged rows under register caps (probe_register_cap: maxnreg), no table.
# Results under benchmarks/results/routing_large_t_$DATE (sweeps) and $OUT/<stage>; each
# stage packs what it made into $OUT/<stage>.tgz and prints a summary last.
set -uo pipefail
cd "$(dirname "$0")/../.."
stage=${1:?sweep, compare, checks, routing_checks or registers}
DATE=${DATE:-$(date -u +%F)}
RESULTS=benchmarks/results/routing_large_t_$DATE
LOGS=${OUT:-large-t}/$stage
TABLE=.cache/large_t/cuda.json
mkdir -p "$LOGS" "$RESULTS" "$(dirname "$TABLE")"
WHEELS=$(ls .cache/device_wheels/*.whl 2>/dev/null | tr '\n' ':')
export PYTHONPATH=$PWD:${WHEELS}${PYTHONPATH:-} PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=$PWD/.cache/triton
PYTHON=${PYTHON:-python3}
# The launch shapes round 1 chose and their neighbours.
SWEEP=("$PYTHON" -m benchmarks.tuning.sweep_launch_table --shapes 128x8
  --tokens 16384,65536,262144 --scale-picks after --max-tile 8192 --out "$RESULTS")
FP32=(--dtypes float32 --tokens-per-program 8,16 --warps 1,2 --row-groups 8
  --fp32-selects checked_rows)
BF16=(--dtypes bfloat16 --tokens-per-program 16,32 --warps 2,4 --row-groups 4)
summary=()
step() {  # name, budget in s, command...
  local name=$1 budget=$2 start=$SECONDS rc
  shift 2
  timeout "$budget" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  summary+=("== $name: exit $rc, $((SECONDS - start)) s")
}
install_table() {  # a fresh machine has no sweep: the packaged table is the one timed
  if [[ -f $TABLE ]]; then cp "$TABLE" vllm_gemma4_router/routing/tables/cuda.json
  else echo "no $TABLE: timing the packaged table"; fi
}
case $stage in
  sweep)
    rm -f "$TABLE"
    step sweep_fp32_hot 200 "${SWEEP[@]}" "${FP32[@]}" --tag large_t_fp32 --write-table "$TABLE"
    step sweep_bf16_hot 80 "${SWEEP[@]}" "${BF16[@]}" --tag large_t_bf16 --write-table "$TABLE"
    step sweep_fp32_cold 70 "${SWEEP[@]}" "${FP32[@]}" --families randn --cold --tag large_t_fp32_cold
    step sweep_bf16_cold 60 "${SWEEP[@]}" "${BF16[@]}" --cold --tag large_t_bf16_cold
    cp "$TABLE" "$LOGS/" 2>/dev/null
    cp "$RESULTS"/launch_sweep_*large_t* "$LOGS/" 2>/dev/null
    grep -h "T=\|WRONG\|wrote" "$LOGS"/sweep_*.log ;;
  compare)
    install_table
    step compare 480 "$PYTHON" -m benchmarks.kernel.compare_trees --tree before=.cache/before_tree \
      --tree after=. --peer vllm-0.34.0=.cache/peer_kernels/vllm-0.34.0/gemma4.py --repeats 3 \
      --tokens 1,4,16,64,256,1024,2048,4096,8192,16384,32768,65536,131072,262144 \
      --masks none,real --ops routing --out "$LOGS"
    tail -n 70 "$LOGS/compare.log" | cut -c1-200 ;;
  checks)
    install_table
    OUT="$LOGS" step suite 540 bash ci/gpu_checks.sh
    tail -n 4 "$LOGS/suite.log" ;;
  routing_checks)  # when device time is short: the routing GPU tests and their memcheck
    install_table
    step gpu_routing 200 "$PYTHON" -m pytest -q -p no:cacheprovider tests/routing/test_gpu_routing.py
    step memcheck 200 compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 20 \
      "$PYTHON" -m pytest -q -p no:cacheprovider tests/routing/test_gpu_routing.py \
      -k "ties or random_bits or cuda_graph or bucket or large_t"
    tail -n 2 "$LOGS/gpu_routing.log"
    grep -E "ERROR SUMMARY|passed|failed" "$LOGS/memcheck.log" | tail -2 ;;
  registers)  # the occupancy lever (~4 min): fp32 rows hold 96 registers, bf16 56
    step fp32 300 "$PYTHON" -m benchmarks.tuning.probe_register_cap --dtypes float32 \
      --caps 0,80,72,64 --out "$LOGS" --tag fp32
    step bf16 90 "$PYTHON" -m benchmarks.tuning.probe_register_cap --dtypes bfloat16 \
      --caps 0,48,40 --out "$LOGS" --tag bf16
    grep -h "maxnreg=" "$LOGS"/fp32.log "$LOGS"/bf16.log | cut -c1-160 ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
tar -czf "${OUT:-large-t}/$stage.tgz" -C "${OUT:-large-t}" "$stage"
printf '%s\n' "${summary[@]}"
