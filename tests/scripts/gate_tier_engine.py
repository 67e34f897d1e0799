"""Run vLLM's CPU engine on the tiny Gemma 4 with GateLinear's tier 1 forced eligible.

One process, one engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the model runs
here, so the patches below reach it). ``GateLinear``'s low-latency tier
(``ll_bf16_gemm``, M <= 16, Hopper/Blackwell only) is made eligible on every gate
and replaced by a counting stand-in, as is the kernels' warm-up; everything else
is vLLM's real code: its ``GateLinear`` with its plain ``x.shape[0]`` branch,
``support_torch_compile``, its compile cache under ``VLLM_CACHE_ROOT``.

    python gate_tier_engine.py MODEL OUT.json [--eager] [--custom-op +gemma4_gate_tier]
        [--default-on] [--no-cache-key] [--no-plugin]

Writes ``{"tier1_calls": {M: n}, "warmups": [[K, N, [M...]], ...]}``: how often
tier 1 ran per token count during generation, and what was warmed. The plugin's
log lines go to stdout with vLLM's. ``--no-plugin`` makes the plugin's entry point
a no-op, as if it were not installed (``VLLM_PLUGINS`` would do that too, but
vLLM hashes that variable into its compile-cache key, and a user who installs the
plugin changes no variable); ``--default-on`` makes the gate-tier policy's default on here (a
release measured to gain), ``--no-cache-key`` makes the plugin's compile-cache
keying a no-op (the hazard it exists for).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

import torch  # noqa: E402

calls: Counter[int] = Counter()
warmups: list[list] = []


def force_tier_one() -> None:
    from vllm.model_executor.kernels.linear.cute_dsl import ll_bf16
    from vllm.model_executor.layers.fused_moe.router.gate_linear import GateLinear

    stand_in_weights: dict[tuple[int, int], torch.Tensor] = {}
    original_init = GateLinear.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if self.out_dtype == torch.float32 and self.weight.dtype == torch.bfloat16:
            self.allow_ll_bf16_gemm = True

    def counting_ll_bf16_gemm(x, weight, output_dtype=torch.float32):
        # vLLM's CPU linear method may replace the loaded weight by a prepacked
        # placeholder: the stand-in computes with its own fixed random gate.
        calls[x.shape[0]] += 1
        num_experts = COUNTING_EXPERTS
        key = (x.shape[1], num_experts)
        if key not in stand_in_weights:
            gen = torch.Generator().manual_seed(1234)
            stand_in_weights[key] = torch.randn(num_experts, x.shape[1], generator=gen) * 0.05
        return x.float() @ stand_in_weights[key].T

    class CountingKernel:
        def warmup(self, *, shapes, m_values):
            for hidden, experts in shapes:
                warmups.append([hidden, experts, list(m_values)])

    GateLinear.__init__ = init
    ll_bf16.ll_bf16_gemm = counting_ll_bf16_gemm
    ll_bf16.ll_bf16_gemm_kernel = CountingKernel()


COUNTING_EXPERTS = 0


def main() -> int:
    global COUNTING_EXPERTS
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--eager", action="store_true")
    parser.add_argument("--custom-op", action="append", default=[])
    parser.add_argument("--default-on", action="store_true")
    parser.add_argument("--no-cache-key", action="store_true")
    parser.add_argument("--no-plugin", action="store_true")
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    args = parser.parse_args()
    with open(os.path.join(args.model, "config.json")) as config:
        COUNTING_EXPERTS = json.load(config)["num_experts"]

    force_tier_one()
    if args.no_plugin:
        # vLLM loads the entry point as module:attribute, so it gets this no-op.
        import vllm_gemma4_router.plugin

        vllm_gemma4_router.plugin.register = lambda: None
    if args.default_on:
        from vllm_gemma4_router.integration import op_policy

        gains = op_policy.PolicyRow("cpu", (0, 0, 0), (9, 0, 0), "gains", True, "x.md")
        op_policy._POLICIES[op_policy.GATE_TIER_TABLE] = (gains,)
    if args.no_cache_key:
        from vllm_gemma4_router.integration import gemma4_layouts

        gemma4_layouts.key_compile_cache = lambda vllm_config=None: False

    from vllm import LLM, SamplingParams

    llm = LLM(
        model=args.model,
        dtype="bfloat16",
        enforce_eager=args.eager,
        max_model_len=256,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=4,
        # The CPU engine reserves this share of the machine's memory up front and refuses
        # to start when less is free: 0.92 failed on CI's 24 GiB beside other processes.
        gpu_memory_utilization=0.5,
        compilation_config={"custom_ops": args.custom_op},
        seed=0,
    )
    calls.clear()  # start-up (profile run at max_num_batched_tokens) is not decode
    prompts = ["The quick brown fox", "Hello"]
    llm.generate(prompts, SamplingParams(max_tokens=6, temperature=0.0), use_tqdm=False)
    with open(args.out, "w") as out:
        json.dump({"tier1_calls": dict(calls), "warmups": warmups}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
