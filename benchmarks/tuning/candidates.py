"""What the fused router's sweep times: its candidate launch configs and routing variants.

``benchmarks/tuning/sweep_fused_router.py`` times these and ``ci/offline_compile_fused.py
--candidates`` compiles them ahead of a device sweep; the runtime never needs them
(its rows: ``vllm_gemma4_router.fused_router.launch_table``).
"""

from __future__ import annotations

import torch
import triton

from vllm_gemma4_router.fused_router.launch_table import (
    FusedLaunchConfig,
    GemmPathConfig,
    check_fused_launch_config,
    clip_config,
    fused_launch_config,
)

#: The routings the sweep tries beside the default ("exact", "per_pick"). Offline
#: (triton 3.9, sm_90, the T <= 16 row) the per-pick scale load converts its pointer's
#: layout through shared memory in each of the K rounds: 34 bar.sync in the kernel;
#: "in_row" (one more reduction a round) and "after" (one gather at the end) have 16.
#: "checked" takes each pick's value by a reduction here (the stored logits are not
#: visible to every thread before a barrier), so its rounds reduce as often as
#: "exact"'s; it is swept to be measured, not expected to win.
ROUTING_VARIANTS = (
    ("exact", "in_row"),
    ("exact", "after"),
    ("checked", "in_row"),
    ("checked", "after"),
)


#: Register-GEMM candidates hold at most this many products per warp (128 per lane).
ONE_WARP_MAX_TILE = 4096


def candidate_configs(
    num_tokens: int, hidden: int, num_experts: int, topk: int, dtype: torch.dtype
) -> list[FusedLaunchConfig]:
    """The configs ``benchmarks/tuning/sweep_fused_router.py`` times for one problem (valid ones).

    The GEMM's split shapes with the default routing (at T <= 16 also the register
    GEMM's, ``block_t < 16``), then the table row with each other routing of
    ``ROUTING_VARIANTS``: the routing runs in the one finishing
    program, after the GEMM, so its choice is taken as independent of the shape.
    PDL twins are not swept (no gain on the H200: the fused table's ``pdl`` provenance)."""
    del topk, dtype  # the same space for every K and dtype the table serves
    seen: list[FusedLaunchConfig] = []
    if num_tokens <= 256:
        # Split launches: many programs read the gate weight, the last adds up.
        # Wide H steps keep more of the weight in flight per program.
        # 8 warps halve each thread's share of the weight tile (fewer registers).
        for block_e in (32, 64, 128):
            for h_slice in (256, 512, 1024):
                for num_warps in (4, 8):
                    seen.append(FusedLaunchConfig(16, block_e, 256, h_slice, num_warps, 2))
        seen.append(FusedLaunchConfig(16, 64, 128, 128, 4, 2))
    if num_tokens <= 16:
        # The register GEMM (block_t < 16): up to a program per expert and token block,
        # as vLLM's ll_bf16 dot-product kernel, whole H or slices of it; unmeasured
        # until a device sweep times it against the tl.dot splits above.
        block_t = min(triton.next_power_of_2(num_tokens), 8)
        # One warp: the finishing program's routing reductions are then shuffles only,
        # no shared-memory round between warps; up to 128 products per lane (more spill
        # on sm_90: ci/offline_compile_fused.py --candidates 1,4).
        for block_e in (1, 2, 4, 8):
            for block_h, num_warps in (
                (256, 1),
                (256, 2),
                (512, 1),
                (512, 4),
                (1024, 4),
                (1024, 8),
            ):
                if block_t * block_e * block_h > ONE_WARP_MAX_TILE * num_warps:
                    continue
                for h_slice in (2**31, 2 * block_h):
                    seen.append(FusedLaunchConfig(block_t, block_e, block_h, h_slice, num_warps, 2))
    elif num_tokens <= 1024:
        # Where the GEMM path is slower than vLLM's chain: split launches of 16-64
        # rows, which read the gate weight once per token block from the L2. Wider
        # tiles take narrower H steps and 64 rows 8 warps: the others spill on sm_90
        # or gfx942 (triton 3.9, ci/offline_compile_fused.py --candidates 512).
        for block_t, block_h, num_warps in (
            (16, 256, 4),
            (16, 256, 8),
            (32, 64, 4),
            (32, 64, 8),
            (64, 64, 8),
            (64, 128, 8),
        ):
            for h_slice in (256, 512):
                seen.append(FusedLaunchConfig(block_t, 128, block_h, h_slice, num_warps, 2))
    if num_tokens <= 1024:
        row = fused_launch_config(num_tokens, hidden, num_experts)
        seen += [row._replace(select=a, scale_pick=b) for a, b in ROUTING_VARIANTS]
    if num_tokens > 64:
        # Whole-row programs: the routing in the GEMM's epilogue.
        for block_t, num_warps in ((32, 4), (64, 4), (64, 8), (128, 8)):
            for block_h in (64, 128):
                seen.append(FusedLaunchConfig(block_t, 128, block_h, 2**31, num_warps, 3, 8))
    out: list[FusedLaunchConfig] = []
    for config in seen:
        config = clip_config(config, hidden, num_experts)
        try:
            check_fused_launch_config(config, num_tokens, hidden, num_experts)
        except ValueError:
            continue
        if config not in out:
            out.append(config)
    return out


def gemm_path_candidates(hidden: int) -> list[GemmPathConfig]:
    """The GEMM-path configs the sweep times: prologues from one whole row per program
    (one load, as Inductor's norm) to 4 rows in H steps; epilogues of 1-16 rows, with
    the default routing and with the routing kernel's own choice up to T=1024 (fp32
    E=128: one row per one-warp program, ``in_row`` scales; ``routing/tables/cuda.json``)."""
    whole_row = triton.next_power_of_2(hidden)
    prologues = [(1, whole_row, 4), (1, whole_row, 8), (4, 1024, 4)]
    epilogues = [
        (1, 1, "checked", "in_row"),
        (1, 1, "exact", "in_row"),
        (2, 1, "exact", "in_row"),
        (4, 2, "exact", "in_row"),
        (8, 4, "exact", "in_row"),
        (2, 1),
        (4, 2),
        (8, 4),
        (16, 4),
    ]
    return [GemmPathConfig(*a, *b) for a in prologues for b in epilogues]
