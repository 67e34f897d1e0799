"""Probe: the routing table's rows compiled under a register cap (CUDA's ``maxnreg``).

Not a table source. At long prefill the routing kernel is not memory-bound but
limited by how many warps fit an SM, and those by registers (Nsight Compute, H100,
T = 65536: bf16 56 registers, 36 warps per SM; fp32 96, 20;
``benchmarks/results/ncu/ncu_h100_*_65536.txt``). A cap trades registers for
resident warps and, below what the code needs, for spills. This probe times each
bucket's packaged row with and without caps side by side (CUDA graph of 32 calls,
L2-hot, interleaved repeats) and checks every capped launch bit for bit against
the uncapped one, so a sweep only gets a ``LaunchConfig`` knob for it if it wins.

Run on a CUDA GPU, repo root::

    python -m benchmarks.tuning.probe_register_cap --caps 0,80,64 --dtypes float32
    python -m benchmarks.tuning.probe_register_cap --caps 0,48,40 --dtypes bfloat16

Writes ``benchmarks/results/probe_register_cap_<gpu>[_<tag>].csv`` (stamped) and
prints one line per point: time, spread, share of the copy floor, registers and
spill bytes of the compiled kernel.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from benchmarks.common.timing import (
    FP32_FAMILIES,
    bench_hot,
    copy_bandwidth_gbs,
    environment_stamp,
    make_logits,
    routing_bytes,
    write_stamped_csv,
)
from vllm_gemma4_router.routing import launcher
from vllm_gemma4_router.routing.launch_table import bucket_launch_config, token_bucket


def capped_plan(num_tokens: int, num_experts: int, topk: int, dtype: torch.dtype, cap: int):
    """The launcher's plan for ``num_tokens``'s bucket (CUDA table, fp32 scale), with
    ``maxnreg=cap`` among its compile options (0: the compiler's own count) and a
    class key of its own, so that the capped kernel is compiled and cached apart."""
    block_e = 1 << (num_experts - 1).bit_length()
    config = bucket_launch_config(
        token_bucket(num_tokens), block_e, "cuda", dtype == torch.float32, topk
    )
    plan = launcher._config_plan(config, topk, num_experts, dtype, torch.float32)
    if not cap:
        return plan
    return plan._replace(
        constexprs={**plan.constexprs, "maxnreg": cap},
        class_key=("maxnreg", cap, plan.class_key),
    )


def route(plan, logits: torch.Tensor, topk: int, scale: torch.Tensor):
    """(weights [T, topk] fp32, ids [T, topk] int32) of one launch of ``plan``."""
    weights = torch.empty(logits.shape[0], topk, device=logits.device)
    ids = torch.empty(logits.shape[0], topk, dtype=torch.int32, device=logits.device)
    launcher._launch_plan(plan, logits, scale, weights, ids, None, logits.device)
    return weights, ids


def _registers(plan) -> tuple[int | str, int | str]:
    """(registers, spill bytes) of ``plan``'s compiled kernel, where Triton reports them."""
    for key, (compiled, _) in launcher._LAUNCHES._cache.items():
        if key[1] == plan.class_key:
            return getattr(compiled, "n_regs", ""), getattr(compiled, "n_spills", "")
    return "", ""


def _dtype_families(args):
    """(dtype, logit family) pairs: fp32 in every family of ``--families``, others randn."""
    for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
        families = args.families.split(",") if dtype == torch.float32 else ["randn"]
        yield from ((dtype, family) for family in families)


def probe(args) -> list[dict]:
    bandwidth = copy_bandwidth_gbs()
    caps = [int(c) for c in args.caps.split(",")]
    rows = []
    for dtype, family in _dtype_families(args):
        for num_tokens in (int(t) for t in args.tokens.split(",")):
            logits = make_logits(family, num_tokens, args.experts, dtype)
            scale = torch.rand(args.experts, device="cuda") + 0.5
            plans = {
                cap: capped_plan(num_tokens, args.experts, args.topk, dtype, cap) for cap in caps
            }
            reference = route(plans[caps[0]], logits, args.topk, scale)
            same = {}
            for cap, plan in plans.items():
                weights, ids = route(plan, logits, args.topk, scale)
                same[cap] = torch.equal(ids, reference[1]) and torch.equal(
                    weights.view(torch.int32), reference[0].view(torch.int32)
                )
            times = {cap: [] for cap in caps}
            for _ in range(args.repeats):
                for cap, plan in plans.items():
                    call = lambda p=plan, x=logits, s=scale: route(p, x, args.topk, s)  # noqa: E731
                    times[cap].append(bench_hot(call))
            floor_us = routing_bytes(num_tokens, args.experts, args.topk, logits.element_size())
            floor_us /= bandwidth * 1e3
            for cap in caps:
                registers, spills = _registers(plans[cap])
                median = statistics.median(times[cap])
                rows.append(
                    dict(
                        dtype=str(dtype).removeprefix("torch."),
                        family=family,
                        E=args.experts,
                        K=args.topk,
                        T=num_tokens,
                        maxnreg=cap,
                        us=round(median, 3),
                        spread_us=round(max(times[cap]) - min(times[cap]), 3),
                        of_floor=round(floor_us / median, 3),
                        registers=registers,
                        spill_bytes=spills,
                        bits_equal=same[cap],
                        copy_gbs=round(bandwidth),
                    )
                )
                print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--families", default=",".join(FP32_FAMILIES), help="fp32 logits")
    parser.add_argument("--tokens", default="16384,65536,262144")
    parser.add_argument("--caps", default="0,80,64", help="maxnreg values; 0: no cap (first)")
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--topk", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    rows = probe(args)
    stamp = environment_stamp()
    name = "probe_register_cap_" + stamp.get("gpu", "cpu").replace(" ", "_")
    path = Path(args.out) / (name + (f"_{args.tag}" if args.tag else "") + ".csv")
    write_stamped_csv(path, stamp, rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
