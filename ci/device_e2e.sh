#!/usr/bin/env bash
# The GPU end-to-end runs, ON THE DEVICE, from the repo root, after
# ci/device_runtime/install_on_device.sh has installed vLLM 0.24.0.
#
# Tiny model (issue #6):
#   bash ci/device_e2e.sh demo       # tiny Gemma4 MoE, plugin vs in-tree, 18 mixed prompts
#   bash ci/device_e2e.sh serve_ab   # vllm bench serve A/B, 64 prompts, conc. 16, 512/128
#                                    # (16 warm-up requests: the first arm otherwise pays
#                                    # Triton JIT compiles inside its measurement)
#
# Real scale (issue #16): gemma-4-26B-A4B's text config without weights
# (harness/model_profiles.py, served with --load-format dummy), the workload of
# vLLM PR #39083 (random, 160 prompts, concurrency 16, 2048 in / 512 out, EOS
# ignored). One H200 (nvidia-h200):
#   bash ci/device_e2e.sh real_serve_ab ARMS [ROUND]  # ARMS: in-tree, plugin, native, fused,
#                                    # fused-pdl (the fused op with VLLM_GEMMA4_FUSED_PDL=1),
#                                    # comma-separated (one per call: see the timing below);
#                                    # PROFILE=1 also traces decode steps (round 1)
#   bash ci/device_e2e.sh real_profile ARM   # trace of 32 decode steps at batch 16 + summary
#   bash ci/device_e2e.sh confirm_gate MODE [ARM]  # issue #34 item 2: which gate GEMM kernel vLLM's
#                                    # own Gemma 4 runs at decode batch 1 and 16, MODE compiled
#                                    # (default compilation + CUDA graphs), eager
#                                    # (--enforce-eager) or both; TORCH_LOGS=+dynamic guard
#                                    # lines at gate_linear.py (benchmarks/serving/confirm_gate.py);
#                                    # ARM gate-tier: the plugin with +gemma4_gate_tier (issue #35)
#   bash ci/device_e2e.sh stale_cache    # issue #35 item 2: a compile cache warmed before the
#                                    # plugin was installed must not be loaded after
#                                    # (benchmarks/serving/stale_cache.py; E2E_PROFILE)
# Two H200 (nvidia-h200-x2):
#   bash ci/device_e2e.sh tp2_serve_ab ARMS [ep]  # --tensor-parallel-size 2 [--enable-expert-parallel]
#   bash ci/device_e2e.sh tp2_identity   # tiny fp32, TP=2: plugin == in-tree greedy text
# Either:
#   bash ci/device_e2e.sh gsm8k_gpu      # benchmarks.serving.gsm8k_ab, tiny model, local gsm8k task
#                                    # (carry .cache/device_runtime/lm_eval/lm_eval-site.tar.xz
#                                    # + .sha256 from ci/device_runtime/lm_eval_extra.sh build)
#
# Timing (one device call is at most 10 minutes). A server of the 26B-A4B
# profile starts in an estimated 2-4 min: vLLM import ~20 s, 50 GB of dummy
# weights initialised in place ~15 s, torch.compile from scratch
# (VLLM_DISABLE_COMPILE_CACHE=1) of the 30-layer model ~1-2 min, CUDA-graph
# capture ~0.5 min (sizes 1..16 with --max-num-seqs 16; REAL_EXTRA overrides).
# The tiny model started in 57-73 s on the H100. The PR workload then takes
# ~1-1.5 min: 16 warm-ups + 10 waves of 16 requests, each ~0.5 s of prefill and
# 512 decode steps at ~8-10 ms (batch 16, ~60 % of the 128 experts' weights
# read per step). So one arm is ~4-5 min and three arms x two rounds (~27 min)
# cannot share a call: real_serve_ab runs the arms it is given, one server
# after the other, and each call is one arm (two arms, ~8-9 min, only if the
# first call shows the start-up is well under 3 min). The parts are merged into
# one table afterwards, on any machine:
#   python -m benchmarks.serving.serve_ab --merge DIR... --result-dir R --tag real_serve_ab
# TP=2 starts take longer (two workers, NCCL), ~3-5 min, so tp2_serve_ab is
# also one arm per call. real_profile alone is a start plus ~1 min; PROFILE=1 on
# a real_serve_ab call of round 1 gets the same trace for ~0.5 min more.
#
# All use the default compilation (torch.compile + CUDA graphs) and TRITON_ATTN.
# Each step packs its logs and results into $OUT/<step>.tgz and prints its
# summary last. The device machine stays warm only 30 s between calls, so the
# steps are separate calls made back to back.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
STEP=${1:?usage: $0 demo|serve_ab|real_serve_ab|real_profile|confirm_gate|stale_cache|tp2_serve_ab|tp2_identity|gsm8k_gpu}
OUT=${OUT:-gpu-e2e}
TAG=$STEP${2:+_${2//,/-}}${3:+_$3}
WORK=$OUT/$TAG
mkdir -p "$WORK"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# No hub, no telemetry: the device has no network.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
# vLLM's compile-cache key does not cover installed plugins: the second arm must
# not load what the first arm compiled. Both arms compile from scratch.
export VLLM_DISABLE_COMPILE_CACHE=1
# Except stale_cache, whose subject is that cache (one fresh VLLM_CACHE_ROOT for its phases).
[[ $STEP == stale_cache ]] && export VLLM_DISABLE_COMPILE_CACHE=0
# NVLink multicast stays off in NCCL and PyTorch. The machine presets both;
# exported (never unset, never overridden) so every server and worker inherits them.
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
export TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}
GPU_ARGS="--attention-backend TRITON_ATTN --max-model-len 1024"
# The PR's server flags; 4096 tokens hold a 2048 + 512 request. --max-num-seqs
# 16 only caps what a concurrency-16 workload never exceeds (it shortens the
# CUDA-graph capture); REAL_EXTRA="" serves with vLLM's default.
REAL_ARGS="--attention-backend TRITON_ATTN --no-enable-prefix-caching --max-model-len 4096"
REAL_EXTRA=${REAL_EXTRA---max-num-seqs 16}
# E2E_PROFILE=gemma-4-26b-a4b-12l: the first 12 layers only (model_profiles).
PROFILE_NAME=${E2E_PROFILE:-gemma-4-26b-a4b}
# PR #39083's workload (the serve_ab defaults, spelled out) + 16 warm-ups.
PR_WORKLOAD=(--num-prompts 160 --max-concurrency 16 --input-len 2048 --output-len 512
  --bench-args "--num-warmups 16")

stamp() {
  {
    echo "date_utc: $(date -u +%FT%TZ)"
    echo "commit: ${E2E_COMMIT:-unknown}"
    echo "step: $* "
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu: /'
    echo "env: NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE TORCH_SYMM_MEM_DISABLE_MULTICAST=$TORCH_SYMM_MEM_DISABLE_MULTICAST VLLM_DISABLE_COMPILE_CACHE=$VLLM_DISABLE_COMPILE_CACHE"
    python3 -c 'import sys, torch, triton, vllm, transformers; print(f"python: {sys.version.split()[0]}\ntorch: {torch.__version__} (cuda {torch.version.cuda})\ntriton: {triton.__version__}\nvllm: {vllm.__version__}\ntransformers: {transformers.__version__}")'
  } > "$WORK/stamp.txt" 2>&1
}

pack() {
  tar czf "$OUT/$TAG.tgz" -C "$OUT" "$TAG" && rm -rf "$WORK"
}

# The serve_ab table and any profiler summary of a run directory, for the call's tail.
summary() {
  local md=$1/serve_ab.md
  if [[ -f $md ]]; then
    sed -n '/^| metric/,/^$/p' "$md"
    grep -E '^### |decode steps of|^\| (routing|router)' "$md" || true
  else
    echo "no $md"
  fi
}

# The plugin's lines in every server log of a run directory: one install line
# and one dispatch line per process (two workers at TP=2).
plugin_lines() {
  local log
  for log in "$1"/server_*.log; do
    [[ -f $log ]] || continue
    echo "== $(basename "$log"): $(grep -c 'vllm-gemma4-router .*: Gemma4 MoE routing' "$log") install line(s)"
    grep -E 'gemma4_routing: [0-9]+ layers dispatch' "$log" | sed 's/^.*\(gemma4_routing: \)/  \1/' | sort | uniq -c
    # The fused arm: how many routers are fused, and whether the hand-over is claimed.
    grep -E 'gemma4_fused_router: |hand-over|routed from the logits|without the fused' "$log" |
      sed 's/^.*\(gemma4_fused_router\)/  \1/' | sort | uniq -c
  done
}

# The config-only checkpoint, built on the device (no weights: ~7 MB, seconds).
# What a serve_ab step prints last: the stamp, the plugin's log lines, the
# table's tail and the result summary.
report_serve_ab() {
  cat "$WORK/stamp.txt"
  plugin_lines "$WORK/run"
  tail -n 5 "$WORK/serve_ab.txt"
  summary "$WORK/run"
}

real_model() {
  python3 -m vllm_gemma4_router.harness.model_profiles "$PROFILE_NAME" > "$WORK/model_profile.txt" 2>&1 || {
    cat "$WORK/model_profile.txt"
    return 1
  }
}

check_arms() {
  local arm
  for arm in ${1//,/ }; do
    case $arm in in-tree | plugin | native | fused | fused-pdl) ;; *)
      echo "unknown arm $arm (in-tree, plugin, native, fused, fused-pdl)" >&2
      exit 2
      ;;
    esac
  done
}

stamp "$@"
case $STEP in
  demo)
    # bf16 (what vLLM picks on the GPU) first; if the completions differ there,
    # the same in float32 tells rounding in bf16 from a routing difference.
    python3 -m vllm_gemma4_router.harness.cli demo \
      --extra-args="$GPU_ARGS" \
      --prompts-file benchmarks/serving/prompts_mixed_18.jsonl \
      --log-dir "$WORK/bf16" > "$WORK/demo_bf16.txt" 2>&1
    status=$?
    if ((status)) && grep -q "completions identical" "$WORK/demo_bf16.txt"; then
      python3 -m vllm_gemma4_router.harness.cli demo \
        --extra-args="$GPU_ARGS --dtype float32" \
        --prompts-file benchmarks/serving/prompts_mixed_18.jsonl \
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
    python3 -m benchmarks.serving.serve_ab --tiny \
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
  real_serve_ab)
    # One H200. ARMS (default: all three, only if the start-up is known to be
    # short), ROUND labels the part (1: in-tree,plugin,native; 2: the reverse).
    arms=${2:-in-tree,plugin,native}
    check_arms "$arms"
    real_model || exit 1
    profile=()
    [[ ${PROFILE:-0} == 1 ]] && profile=(--profile)
    python3 -m benchmarks.serving.serve_ab --model-profile "$PROFILE_NAME" --order "$arms" \
      "${PR_WORKLOAD[@]}" "${profile[@]}" \
      --server-args "$REAL_ARGS $REAL_EXTRA" \
      --result-dir "$WORK" --tag run > "$WORK/serve_ab.txt" 2>&1
    status=$?
    report_serve_ab
    pack
    exit "$status"
    ;;
  real_profile)
    # One arm: a short run (16 requests, also the table's numbers, not the PR
    # workload), then 16 more all at once with /start_profile: 32 worker steps
    # after the first 128 (past the 16 prefills: pure decode at batch 16).
    arm=${2:?usage: $0 real_profile in-tree|plugin|native}
    check_arms "$arm"
    real_model || exit 1
    python3 -m benchmarks.serving.serve_ab --model-profile "$PROFILE_NAME" --order "$arm" \
      --num-prompts 16 --max-concurrency 16 --input-len 2048 --output-len 512 \
      --bench-args "--num-warmups 16" --profile --profile-delay-steps 128 --profile-steps 32 \
      --server-args "$REAL_ARGS $REAL_EXTRA" \
      --result-dir "$WORK" --tag run > "$WORK/serve_ab.txt" 2>&1
    status=$?
    report_serve_ab
    # Keep the summaries; the full traces come back only if small (a few MB gz).
    du -sh "$WORK/run/traces" 2>/dev/null
    pack
    exit "$status"
    ;;
  confirm_gate)
    # One H200, in-tree (no plugin). MODE compiled (default), eager or both. Estimate
    # from the 0.24.0 starts (66-183 s healthy, compile ~54 s of it) plus 0.26's
    # ll_bf16 warm-up at start-up (CuTe-DSL compiles, ~0.5-1 min, a guess) and the
    # +dynamic log: compiled ~2-4.5 min to healthy, eager ~1.5-2.5 min (no compile, no
    # graph capture); then 2 warm-up rounds at batch 1 and 16 (16 tokens), the traced
    # 24 + 24 tokens and the trace export, ~0.5-1 min (eager: the first batch-1 steps
    # compile the dot-product kernels, a few s each). One mode is ~3-5.5 min, so one
    # per call; `both` runs the eager server only if CONFIRM_BUDGET_S (default 520)
    # leaves ~4 min after the compiled one, else says to run it as its own call.
    mode=${2:-compiled}
    case $mode in compiled | eager | both) ;; *)
      echo "unknown mode $mode (compiled, eager, both)" >&2
      exit 2
      ;;
    esac
    # ARM (third argument): in-tree (default) or gate-tier (the plugin, +gemma4_gate_tier).
    arm=()
    case ${3:-in-tree} in
      in-tree) ;;
      gate-tier) arm=(--plugin --custom-op +gemma4_gate_tier) ;;
      *) echo "unknown arm $3 (in-tree, gate-tier)" >&2 && exit 2 ;;
    esac
    # CONFIRM_KERNELS="k1 k2": copy these Inductor kernels' generated sources too.
    for kernel in ${CONFIRM_KERNELS:-}; do arm+=(--kernel-source "$kernel"); done
    real_model || exit 1
    python3 -m benchmarks.serving.confirm_gate --model-profile "$PROFILE_NAME" --mode "$mode" \
      "${arm[@]}" --budget-s "${CONFIRM_BUDGET_S:-520}" --out "$WORK/run" \
      > "$WORK/confirm_gate.txt" 2>&1
    status=$?
    # The summary on its own (small), then the archive; files back from the device
    # are at most 16 MiB each, so the archive goes without the traces if larger.
    cp "$WORK/run/confirm_gate.md" "$OUT/$TAG.md" 2> /dev/null
    cat "$WORK/stamp.txt"
    du -sh "$WORK"/run/*/traces "$WORK"/run/*/server.log* 2> /dev/null
    report=$(tail -n 30 "$WORK/confirm_gate.txt")
    tar czf "$OUT/$TAG.tgz" -C "$OUT" "$TAG"
    if (($(stat -c %s "$OUT/$TAG.tgz") > 15 * 1024 * 1024)); then
      echo "archive over 15 MiB: packed again without the traces"
      tar czf "$OUT/$TAG.tgz" --exclude='*.pt.trace.json*' -C "$OUT" "$TAG"
    fi
    rm -rf "$WORK"
    echo "$report"
    exit "$status"
    ;;
  stale_cache)
    # Issue #35 item 2: a compile cache warmed before the plugin was installed
    # (benchmarks/serving/stale_cache.py): serve compiled with the plugin's metadata
    # hidden, then with it back, same command and cache root; the second must compile
    # afresh and run ll_bf16_gemm. A third serve, if the budget holds it, should load
    # the second's artifact. Estimate, on an H100: with E2E_PROFILE=gemma-4-26b-a4b-6l
    # ~2-2.5 min a phase (12-layer starts took 148-188 s on 2026-12-06), traced at
    # batch 1 only; one call.
    real_model || exit 1
    python3 -m benchmarks.serving.stale_cache --model-profile "$PROFILE_NAME" \
      --cache-root "${STALE_CACHE_ROOT:-/root/stale_cache_$(date +%s)}" --out "$WORK/run" \
      --budget-s "${STALE_BUDGET_S:-540}" > "$WORK/stale_cache.txt" 2>&1
    status=$?
    cp "$WORK/run/stale_cache.md" "$OUT/$TAG.md" 2> /dev/null
    cat "$WORK/stamp.txt"
    report=$(tail -n 25 "$WORK/stale_cache.txt")
    tar czf "$OUT/$TAG.tgz" --exclude='*.pt.trace.json*' -C "$OUT" "$TAG"
    rm -rf "$WORK"
    echo "$report"
    exit "$status"
    ;;
  tp2_serve_ab)
    # Two H200: tensor parallel 2, with "ep" also expert parallel. Each plugin
    # server must show routed layers in both workers (--expect-workers 2).
    arms=${2:-in-tree,plugin}
    check_arms "$arms"
    parallel="--tensor-parallel-size 2"
    [[ ${3:-} == ep ]] && parallel="$parallel --enable-expert-parallel"
    real_model || exit 1
    profile=()
    [[ ${PROFILE:-0} == 1 ]] && profile=(--profile)
    python3 -m benchmarks.serving.serve_ab --model-profile "$PROFILE_NAME" --order "$arms" \
      "${PR_WORKLOAD[@]}" "${profile[@]}" --expect-workers 2 \
      --server-args "$REAL_ARGS $REAL_EXTRA $parallel" \
      --result-dir "$WORK" --tag run > "$WORK/serve_ab.txt" 2>&1
    status=$?
    report_serve_ab
    pack
    exit "$status"
    ;;
  tp2_identity)
    # Two H200, tiny model in float32 at TP=2: plugin vs in-tree must give the
    # same greedy completions (the demo's PASS), the op in both workers.
    # ~3-4 min: two tiny servers of ~1.5 min (TP=2: NCCL + two compiles).
    python3 -m vllm_gemma4_router.harness.cli demo \
      --extra-args="$GPU_ARGS --dtype float32 --tensor-parallel-size 2" \
      --prompts-file benchmarks/serving/prompts_mixed_18.jsonl \
      --log-dir "$WORK/fp32_tp2" > "$WORK/demo_fp32_tp2.txt" 2>&1
    status=$?
    if ! grep -q "x 2 worker process" "$WORK/demo_fp32_tp2.txt"; then
      echo "FAIL: the op did not route in 2 worker processes" >> "$WORK/demo_fp32_tp2.txt"
      ((status)) || status=1
    fi
    cat "$WORK/stamp.txt"
    plugin_lines "$WORK/fp32_tp2"
    grep -E "routing served by|completions identical|FAIL|^PASS|Error" "$WORK/demo_fp32_tp2.txt" | head -20
    pack
    exit "$status"
    ;;
  gsm8k_gpu)
    # benchmarks.serving.gsm8k_ab against GPU servers of the tiny model, the local
    # 22-question task: the lm_eval path on a GPU once. The random model scores
    # 0: accuracy means nothing here, only that the harness runs and both arms
    # answer. ~3-4 min: two tiny servers + 22 x 5-shot prompts, 256 tokens each.
    # lm_eval is not part of the vLLM runtime: carry the archive of
    # `bash ci/device_runtime/lm_eval_extra.sh build` (~5 MB) with this call.
    if ! python3 -c 'import lm_eval' 2> /dev/null; then
      lm_site=${LM_EVAL_PREFIX:-/root/lm_eval_site}
      if bash ci/device_runtime/lm_eval_extra.sh install > "$WORK/lm_eval_install.txt" 2>&1; then
        export PYTHONPATH=$PYTHONPATH:$lm_site
      fi
      if ! python3 -c 'import lm_eval' 2>> "$WORK/lm_eval_install.txt"; then
        echo "lm_eval missing on the device and no carried lm_eval-site.tar.xz installed" \
          | tee -a "$WORK/gsm8k_ab.txt"
        tail -n 5 "$WORK/lm_eval_install.txt"
        pack
        exit 3
      fi
    fi
    python3 -m benchmarks.serving.gsm8k_ab --tiny --include-path tests/data/gsm8k_local \
      --task gsm8k_local --num-concurrent 8 \
      --server-args "--attention-backend TRITON_ATTN --max-model-len 4096 --no-enable-prefix-caching --dtype float32" \
      --result-dir "$WORK" --tag run > "$WORK/gsm8k_ab.txt" 2>&1
    status=$?
    cat "$WORK/stamp.txt"
    tail -n 12 "$WORK/gsm8k_ab.txt"
    pack
    exit "$status"
    ;;
  *)
    echo "unknown step $STEP" >&2
    exit 2
    ;;
esac
