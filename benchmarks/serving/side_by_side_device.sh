#!/usr/bin/env bash
# One device call of the side-by-side serve A/B (issue #34 item 4): the
# gemma-4-26b-a4b profile (dummy weights), both arms' servers up at once on one
# H200, the workload alternating between them for PAIRS pairs (default 5).
#
#   bash benchmarks/serving/side_by_side_device.sh WORKLOAD ARMS
#     WORKLOAD: c1 (24 prompts, 1024/256, concurrency 1), c16 (64 prompts,
#               1024/256, concurrency 16), c64 (192 prompts, 1024/256, concurrency
#               64; servers with --max-num-seqs 64), pr39083 (160 prompts, 2048/512, 16)
#     ARMS:     plugin (in-tree vs our routing op), fused (in-tree vs
#               +gemma4_fused_router), gate-tier (in-tree vs +gemma4_gate_tier),
#               gate-tier-vs-fused (+gemma4_gate_tier vs +gemma4_fused_router: the
#               router the fused one replaces on vLLM 0.26.0 Hopper, issue #36 goal 4)
#               fused-vs-gate-tier (the same, servers started the other way round) and
#               gate-tier-vs-gate-tier-twin (one configuration twice, an A/A control):
#               a set-up bias changes sign with the first, shows alone in the second.
#               Neither reuses servers kept for other arms: `bash $0 stop` first.
#
# Needs vLLM installed on the device first (ci/device_runtime/, VLLM_RUNTIME=0.26.0).
# The same line is repeated, call after call, until it exits 0: each call starts
# both servers (each its own VLLM_CACHE_ROOT under .cache/serve_ab_side_by_side/,
# kept on a warm machine, so later starts reuse the compiled graphs), adds the
# pairs that fit its budget to .cache/serve_ab_side_by_side/results/<tag>/
# (--resume) and copies that directory to $OUT. Exit 3: more pairs to run; 0:
# all pairs done; 1: problems (printed); 2: usage. If the machine went cold
# between calls, carry the result directory back (copy it from the files that
# came back to .cache/serve_ab_side_by_side/results/<tag>/ and pass that path in
# `carry`): the next call appends to it.
#
# SBS_KEEP=1 (--keep-servers): both servers stay up when the call returns (started
# in their own session, so the machine does not end them), and the next call on the
# same warm machine uses them instead of starting them again: the first call may
# spend its whole budget starting them; later calls, other workloads and other
# arm pairs that share the in-tree arm go straight to the pairs. The call after
# must come within the machine's idle window (30 s). `bash $0 stop` stops them.
#
# Settings: SBS_PROFILE (above), PAIRS (5), SBS_BUDGET (seconds the harness may use, default 510),
# SBS_TIMEOUT (hard stop, default 560; the call limit is 600), SBS_FIRST_PAIR
# (seconds a pair is assumed to take before one was measured; per workload
# below), SBS_SERVER_ARGS, SBS_GPU_MEM (0.47 at most). A pair starts only if the time
# used, plus the longest pair so far, plus 45 s fit SBS_BUDGET: one more c1 pair on kept
# servers needs ~140 s (2026-12-06: 110 s ran none).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
if [[ ${1:-} == stop ]]; then
  PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} python3 -m benchmarks.serving.serve_ab \
    --side-by-side --stop-servers --cache-root .cache/serve_ab_side_by_side
  exit $?
fi
WORKLOAD=${1:?usage: $0 c1|c16|c64|pr39083 plugin|fused|gate-tier|gate-tier-vs-fused|fused-vs-gate-tier|gate-tier-vs-gate-tier-twin (or: $0 stop)}
ARMS=${2:?usage: $0 c1|c16|c64|pr39083 plugin|fused|gate-tier|gate-tier-vs-fused|fused-vs-gate-tier|gate-tier-vs-gate-tier-twin}
case $WORKLOAD in
  c1) first_pair=120 ;;
  c16) first_pair=80 ;;
  c64) first_pair=110 ;;
  pr39083) first_pair=170 ;;
  *) echo "unknown workload $WORKLOAD (c1, c16, c64, pr39083)" >&2 && exit 2 ;;
esac
case $ARMS in
  plugin | fused | gate-tier) PRESET=in-tree-vs-$ARMS ;;
  gate-tier-vs-fused | fused-vs-gate-tier | gate-tier-vs-gate-tier-twin) PRESET=$ARMS ;;
  *) echo "unknown arms $ARMS (plugin, fused, gate-tier, gate-tier-vs-fused, fused-vs-gate-tier, gate-tier-vs-gate-tier-twin)" >&2 && exit 2 ;;
esac
OUT=${OUT:-side-by-side-out}
ROOT=.cache/serve_ab_side_by_side
# SBS_PROFILE=gemma-4-26b-a4b-12l: the first 12 of the 30 layers, for an 80 GB GPU
# (two full 26B-A4B servers need the H200); the tag names it.
PROFILE=${SBS_PROFILE:-gemma-4-26b-a4b}
TAG=${WORKLOAD}_${PRESET}${SBS_PROFILE:+_$PROFILE}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# No hub, no telemetry: the device has no network.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
# NVLink multicast stays off (exported, never overridden), as in ci/device_e2e.sh.
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
export TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}
# The compile cache stays on: each arm has its own VLLM_CACHE_ROOT, named by a
# hash of the plugin's sources, so no arm loads what another compiled.
# PR #39083's server flags; 4096 tokens hold a 2048 + 512 request; --max-num-seqs
# 16 caps what no workload here exceeds (shorter CUDA-graph capture).
# c64 needs 64 sequences at once.
MAX_SEQS=16
[[ $WORKLOAD == c64 ]] && MAX_SEQS=64
SERVER_ARGS=${SBS_SERVER_ARGS:---attention-backend TRITON_ATTN --no-enable-prefix-caching --max-model-len 4096 --max-num-seqs $MAX_SEQS}
mkdir -p "$OUT" "$ROOT/results"
timeout --kill-after=20 "${SBS_TIMEOUT:-560}" python3 -m benchmarks.serving.serve_ab \
  --side-by-side --model-profile "$PROFILE" --arms-preset "$PRESET" \
  --workload "$WORKLOAD" --pairs "${PAIRS:-5}" --gpu-memory-utilization "${SBS_GPU_MEM:-0.47}" \
  --server-args "$SERVER_ARGS" --cache-root "$ROOT" --result-dir "$ROOT/results" --tag "$TAG" \
  --resume ${SBS_KEEP:+--keep-servers} --budget-s "${SBS_BUDGET:-510}" --first-pair-s "${SBS_FIRST_PAIR:-$first_pair}" \
  > "$OUT/$TAG.txt" 2>&1
status=$?
[[ -d $ROOT/results/$TAG ]] && cp -r "$ROOT/results/$TAG" "$OUT/"
grep -E '^== |^WARNING|^error|Error' "$OUT/$TAG.txt" | tail -n 30
[[ -f $ROOT/results/$TAG/serve_ab.md ]] && sed -n '5,21p' "$ROOT/results/$TAG/serve_ab.md"
echo "exit $status (0: all pairs done, 3: run this again for more pairs, 124/137: timed out)"
exit "$status"
