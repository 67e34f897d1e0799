"""Launch one routing kernel a few times, for Nsight Compute, and time the host path.

Profile (GPU machine, repo root)::

    ncu --kernel-name regex:routing --launch-skip 3 --launch-count 1 \
        --section SpeedOfLight --section WarpStateStats --section Occupancy \
        python -m benchmarks.kernel.profile_kernel --dtype bfloat16 --tokens 262144

``--impl`` picks ours, vllm or sglang (peer kernels from .cache/peer_kernels,
see fetch_peer_kernels.sh). ``--host`` instead prints the eager host time per
call at T=1, split into our wrapper, our bare launch and the peers' wrappers.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import peer_kernels
from benchmarks.common.timing import host_us_per_call
from vllm_gemma4_router import gemma4_routing_triton
from vllm_gemma4_router.routing.checks import check_routing_inputs
from vllm_gemma4_router.routing.launch_table import pick_launch_config
from vllm_gemma4_router.routing.launcher import launch


def host_breakdown(num_experts: int, topk: int) -> None:
    logits = torch.randn(1, num_experts, device="cuda")
    scale = torch.rand(num_experts, device="cuda") + 0.5
    weights = torch.empty(1, topk, device="cuda")
    ids = torch.empty(1, topk, device="cuda", dtype=torch.int32)
    block_e = 1 << (num_experts - 1).bit_length()
    config = pick_launch_config(1, block_e, "cuda", True, topk)
    rows = {
        "ours (wrapper, allocates outputs)": lambda: gemma4_routing_triton(logits, topk, scale),
        "ours (wrapper, given outputs)": lambda: gemma4_routing_triton(
            logits, topk, scale, topk_weights=weights, topk_ids=ids
        ),
        "ours (bare launch, explicit config)": lambda: launch(
            logits, topk, scale, weights, ids, config
        ),
        "  of which: input checks": lambda: check_routing_inputs(logits, topk, scale),
        "  of which: table lookup": lambda: pick_launch_config(1, block_e, "cuda", True, topk),
        "torch.empty x2": lambda: (
            torch.empty(1, topk, device="cuda"),
            torch.empty(1, topk, device="cuda", dtype=torch.int32),
        ),
    }
    try:
        for name, loader in (
            ("vllm", peer_kernels.load_vllm_router),
            ("sglang", peer_kernels.load_sglang_router),
        ):
            fn = loader()[1]
            rows[f"{name} (wrapper)"] = lambda fn=fn: fn(logits, topk, scale)
    except Exception as exc:  # the peers are optional here
        print(f"peer kernels not loaded: {exc}")
    for name, fn in rows.items():
        print(f"host us/call T=1  {name:38s} {host_us_per_call(fn):7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tokens", type=int, default=262144)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--topk", type=int, default=8)
    parser.add_argument("--impl", default="ours")
    parser.add_argument("--launches", type=int, default=5)
    parser.add_argument("--host", action="store_true")
    args = parser.parse_args()
    if args.host:
        host_breakdown(args.experts, args.topk)
        return
    logits = torch.randn(args.tokens, args.experts, device="cuda").to(getattr(torch, args.dtype))
    scale = torch.rand(args.experts, device="cuda") + 0.5
    if args.impl == "ours":
        fn = gemma4_routing_triton
    else:
        fn = getattr(peer_kernels, f"load_{args.impl}_router")()[1]
    for _ in range(args.launches):
        fn(logits, args.topk, scale)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
