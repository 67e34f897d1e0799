"""Synthetic torch-profiler traces shaped like vLLM's worker traces (for trace_summary tests).

:func:`build_trace` returns a trace plus the expected per-decode-step totals,
computed from the generated kernels themselves.
"""

from __future__ import annotations

import random

GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64_warpgroupsize1x1x1"
# What vLLM 0.24's gate runs on the H200 at decode: a cuBLAS split-K GEMM in two kernels.
SPLIT_K_GEMM = "nvjet_sm90_tss_64x16_64x16_2x1_v_bz_splitK_TNT"
SPLIT_K_REDUCE = "void cublasLt::splitKreduce_kernel<32, 16, int, float, float>(...)"
NORM = "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_3"
ROUTING = {
    "plugin": ["gemma4_routing_kernel"],
    "in-tree": ["_gemma4_routing_kernel"],
    "native": [
        "triton_per_fused__softmax_0",
        "void at::native::sbtopk::gatherTopK<float, unsigned int, 2, false>(...)",
        "triton_poi_fused_div_gather_mul_sum_1",
    ],
    # The whole router in one kernel: no norm or gate GEMM of its own.
    "fused": ["gemma4_fused_router_kernel"],
}
CATEGORY = {
    "plugin": "routing: ours",
    "in-tree": "routing: vLLM in-tree",
    "native": "routing: torch reference",
    "fused": "routing: fused router",
}
SAMPLER_TOPK = "void at::native::sbtopk::gatherTopK<float, unsigned int, 1, false>(...)"


def build_trace(
    arm: str, rng: random.Random, *, decode_steps: int = 6, layers: int = 3, split_k: bool = False
):
    """A trace plus the expected per-step totals (from the generated events)."""
    events = []
    correlation = [1000]
    clock = [0.0]
    expected = []

    def annotation(name, start, end):
        events.append(
            {
                "ph": "X",
                "cat": "user_annotation",
                "name": name,
                "pid": 7,
                "tid": 7,
                "ts": start,
                "dur": end - start,
            }
        )

    def launch(name):
        correlation[0] += 1
        events.append(
            {
                "ph": "X",
                "cat": "cuda_runtime",
                "name": name,
                "pid": 7,
                "tid": 7,
                "ts": clock[0] + 1.0,
                "dur": 3.0,
                "args": {"correlation": correlation[0]},
            }
        )
        return correlation[0]

    gpu_clock = [0.0]

    def kernel(name, corr, stream=7):
        dur = rng.uniform(1.0, 40.0)
        events.append(
            {
                "ph": "X",
                "cat": "kernel",
                "name": name,
                "pid": 0,
                "tid": stream,
                "ts": gpu_clock[0],
                "dur": dur,
                "args": {"correlation": corr, "stream": stream},
            }
        )
        gpu_clock[0] += dur + 0.5
        return dur

    steps = ["prefill"] + ["decode"] * decode_steps
    for kind in steps:
        start = clock[0]
        totals = {"gpu": 0.0, "routing": 0.0, "gemm": 0.0, "norm": 0.0}
        # Forward: one CUDA-graph launch inside the forward phase.
        clock[0] += 5.0
        forward_start = clock[0]
        corr = launch("cudaGraphLaunch")
        for _ in range(layers):
            totals["gpu"] += kernel("kernel_unified_attention_2d", corr)
            if arm == "fused":
                # The attention's output GEMM comes right before: not a gate GEMM.
                totals["gpu"] += kernel(GEMM, corr)
                norm = gemm = 0.0
            else:
                norm = kernel(NORM, corr)
                if split_k:
                    gemm = kernel(SPLIT_K_GEMM, corr) + kernel(SPLIT_K_REDUCE, corr)
                else:
                    gemm = kernel(GEMM, corr)
            routing = sum(kernel(name, corr) for name in ROUTING[arm])
            totals["gpu"] += norm + gemm + routing
            totals["gemm"] += gemm
            totals["norm"] += norm
            totals["routing"] += routing
            totals["gpu"] += kernel("fused_moe_kernel", corr)
        clock[0] += 20.0
        annotation("gpu_model_runner: forward", forward_start, clock[0])
        # Sampler: its own top-k outside the forward, must not count as routing.
        sample_start = clock[0] + 1.0
        clock[0] += 2.0
        totals["gpu"] += kernel(SAMPLER_TOPK, launch("cudaLaunchKernel"))
        clock[0] += 10.0
        annotation("gpu_model_runner: sample", sample_start, clock[0])
        name = (
            "execute_context_2(4096)_generation_0(0)"
            if kind == "prefill"
            else "execute_context_0(0)_generation_16(16)"
        )
        annotation(name, start, clock[0])
        clock[0] += 30.0
        if kind == "decode":
            expected.append(totals)
    # A kernel whose launch was not recorded (e.g. before the profiler started).
    events.append(
        {
            "ph": "X",
            "cat": "kernel",
            "name": "stray",
            "pid": 0,
            "tid": 7,
            "ts": -50.0,
            "dur": 3.0,
            "args": {"correlation": 1},
        }
    )
    rng.shuffle(events)  # the trace's event order carries no meaning
    return {"traceEvents": events, "deviceProperties": []}, expected
