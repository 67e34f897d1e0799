#!/usr/bin/env bash
# The GPU end-to-end run (issue #6), ON THE DEVICE, from the repo root, after
# ci/device_runtime/install_on_device.sh has installed vLLM 0.24.0:
#
#   bash ci/device_e2e.sh demo       # tiny Gemma4 MoE, plugin vs in-tree, 18 mixed prompts
#   bash ci/device_e2e.sh serve_ab   # vllm bench serve A/B, 64 prompts, conc. 16, 512/128
#                                    # (16 warm-up requests: the first arm otherwise pays
#                                    # Triton JIT compiles inside its measurement)
#
# Both use the default compilation (torch.compile + CUDA graphs) and TRITON_ATTN.
# Each step packs its logs and results into $OUT/<step>.tgz and prints its
# summary last. The device machine stays warm only 30 s between calls, so the
# steps are separate calls made back to back.
set -uo pipefail
cd "$(dirname "$0")/.."
STEP=${1:?usage: $0 demo|serve_ab}
OUT=${OUT:-gpu-e2e}
WORK=$OUT/$STEP
mkdir -p "$WORK"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# No hub, no telemetry: the device has no network.
export HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
# vLLM's compile-cache key does not cover installed plugins: the second arm must
# not load what the first arm compiled. Both arms compile from scratch.
export VLLM_DISABLE_COMPILE_CACHE=1
GPU_ARGS="--attention-backend TRITON_ATTN --max-model-len 1024"

stamp() {
  {
    echo "date_utc: $(date -u +%FT%TZ)"
    echo "commit: ${E2E_COMMIT:-unknown}"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu: /'
    python3 -c 'import sys, torch, triton, vllm, transformers; print(f"python: {sys.version.split()[0]}\ntorch: {torch.__version__} (cuda {torch.version.cuda})\ntriton: {triton.__version__}\nvllm: {vllm.__version__}\ntransformers: {transformers.__version__}")'
  } > "$WORK/stamp.txt" 2>&1
}

pack() {
  tar czf "$OUT/$STEP.tgz" -C "$OUT" "$STEP" && rm -rf "$WORK"
}

stamp
case $STEP in
  demo)
    # bf16 (what vLLM picks on the GPU) first; if the completions differ there,
    # the same in float32 tells rounding in bf16 from a routing difference.
    python3 -m vllm_gemma4_router.harness.cli demo \
      --extra-args="$GPU_ARGS" \
      --prompts-file benchmarks/prompts_mixed_18.jsonl \
      --log-dir "$WORK/bf16" > "$WORK/demo_bf16.txt" 2>&1
    status=$?
    if ((status)) && grep -q "completions identical" "$WORK/demo_bf16.txt"; then
      python3 -m vllm_gemma4_router.harness.cli demo \
        --extra-args="$GPU_ARGS --dtype float32" \
        --prompts-file benchmarks/prompts_mixed_18.jsonl \
        --log-dir "$WORK/fp32" > "$WORK/demo_fp32.txt" 2>&1
      echo "fp32 demo exit $?" >> "$WORK/demo_fp32.txt"
    fi
    cat "$WORK/stamp.txt"
    for f in "$WORK"/demo_*.txt; do
      echo "== $f"
      grep -E "routing served by|completions identical|FAIL reason|^PASS|^FAIL|Error" "$f" | head -20
    done
    pack
    exit "$status"
    ;;
  serve_ab)
    python3 -m benchmarks.serve_ab --tiny \
      --num-prompts 64 --max-concurrency 16 --input-len 512 --output-len 128 \
      --server-args "$GPU_ARGS --no-enable-prefix-caching" \
      --bench-args "--num-warmups 16" \
      --result-dir "$OUT" --tag serve_ab > "$WORK/serve_ab.txt" 2>&1
    status=$?
    cat "$WORK/stamp.txt"
    tail -n 30 "$WORK/serve_ab.txt"
    pack
    exit "$status"
    ;;
  *)
    echo "unknown step $STEP" >&2
    exit 2
    ;;
esac
