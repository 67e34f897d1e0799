"""Record the routing kernel's and the fused router's outputs under the Triton interpreter.

``python ci/kernel_outputs.py record OUT.pt [routing|fused]`` runs both kernels (or
one) on a fixed set of seeded inputs (fp32/bf16/fp16, E=64/128/256, K=4/6/8, T not a
multiple of the tile, with and without a padding mask, fp32 inputs with near-ties that send
checked picks to their repair) through every launch-config style the tables use
(register and memory picks, row groups, checked/exact fp32 rounds, each scale
pick; fused: whole-row and split launches, routing chunks, the GEMM path's
epilogue), and saves every output. ``python ci/kernel_outputs.py compare A.pt
B.pt`` says whether two recordings are bit-identical (a kernel refactor must
keep them so; ``ci/compare_compiled.py`` does the same for the compiled code).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before triton.jit decorates the kernels
# Last: a PYTHONPATH copy of the package (the old source) comes first.
sys.path.append(str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Every kind of row the routing tables use (launch_table: _CUDA_TABLE, _HIP_TABLE),
# plus the scale picks and fp32 rounds they combine with.
ROUTING_STYLES = {
    "reg_t1_checked_inrow_byred": dict(
        tokens_per_program=1, num_warps=1, scale_pick="in_row", values_by_reduction=True
    ),
    "reg_t1_checked_after": dict(tokens_per_program=1, num_warps=1),
    "reg_t1_checked_perpick": dict(tokens_per_program=1, num_warps=1, scale_pick="per_pick"),
    "reg_t2_exact_inrow": dict(
        tokens_per_program=2, num_warps=2, fp32_select="exact", scale_pick="in_row"
    ),
    "reg_t2_exact_perpick": dict(
        tokens_per_program=2, num_warps=2, fp32_select="exact", scale_pick="per_pick"
    ),
    "reg_t4_checked_perpick": dict(tokens_per_program=4, num_warps=1, scale_pick="per_pick"),
    "reg_t8_groups4_checked": dict(tokens_per_program=8, num_warps=1, row_groups=4),
    "reg_t8_groups4_exact": dict(
        tokens_per_program=8, num_warps=1, row_groups=4, fp32_select="exact"
    ),
    "reg_t16_groups2_inrow": dict(
        tokens_per_program=16, num_warps=2, row_groups=2, scale_pick="in_row"
    ),
    "mem_t4_groups2": dict(tokens_per_program=4, num_warps=1, row_groups=2, register_picks=False),
    "mem_t2": dict(tokens_per_program=2, num_warps=1, register_picks=False),
}

ROUTING_SHAPES = [  # (E, K, T): T not a multiple of any tile
    (64, 4, 13),
    (128, 8, 21),
    (256, 6, 9),
]
#: (per_expert_scale?, padding mask?) of each launch
WITH = ((True, False), (True, True), (False, True))


def _logits(kind: str, shape: tuple[int, int], dtype: torch.dtype, gen: torch.Generator):
    if kind == "random":
        return torch.randn(shape, generator=gen).to(dtype)
    # Near-ties: values on a coarse grid plus low-bit noise, so picks share fp32 key
    # buckets out of value order (the checked rounds' repair runs) and equal values
    # exercise the lowest-id rule.
    grid = torch.randint(-3, 4, shape, generator=gen).float() * 0.5
    noise = torch.randint(0, 3, shape, generator=gen).float() * 2.0**-20
    out = (grid + noise).to(dtype)
    out[0, :3] = float("nan")
    out[1 % shape[0], 5:9] = float("-inf")
    return out


def record_routing(results: dict) -> None:
    from vllm_gemma4_router.routing.launch_table import LaunchConfig
    from vllm_gemma4_router.routing.launcher import launch

    for dtype in DTYPES:
        for num_experts, topk, num_tokens in ROUTING_SHAPES:
            for kind in ("random", "ties"):
                if kind == "ties" and dtype != torch.float32:
                    continue
                gen = torch.Generator().manual_seed(1000 * num_experts + 10 * topk + num_tokens)
                logits = _logits(kind, (num_tokens, num_experts), dtype, gen)
                scale = torch.rand(num_experts, generator=gen) + 0.5
                padding = torch.rand(num_tokens, generator=gen) < 0.3
                for style, fields in ROUTING_STYLES.items():
                    config = LaunchConfig(**fields)
                    for has_scale, has_mask in WITH:
                        mask = padding if has_mask else None
                        key = (
                            f"routing {dtype} E={num_experts} K={topk} T={num_tokens} {kind} "
                            f"{style} scale={has_scale} padding={mask is not None}"
                        )
                        weights = torch.full((num_tokens, topk), 7.0)
                        ids = torch.full((num_tokens, topk), 99, dtype=torch.int32)
                        try:
                            launch(
                                logits,
                                topk,
                                scale if has_scale else None,
                                weights,
                                ids,
                                config,
                                is_padding=mask,
                            )
                        except ValueError as exc:  # a style this shape cannot take
                            results[key] = f"ValueError: {exc}"
                            continue
                        results[key] = (weights, ids)


FUSED_CONFIGS = {  # FusedLaunchConfig fields; whole rows, routed in chunks, split GEMMs
    "whole_t16": (16, 128, 64, 2**31, 4, 3, 16),
    "whole_t32_route8": (32, 128, 64, 2**31, 4, 3, 8),
    "split_e32_h128": (16, 32, 64, 128, 8, 2),
    "split_e64_h64": (16, 64, 64, 64, 8, 2),
    "split_h128": (16, 128, 64, 128, 4, 2),
}
FUSED_ROUTINGS = (("exact", "per_pick"), ("exact", "in_row"), ("checked", "after"))
#: configs run with every routing of FUSED_ROUTINGS (the others: the first only)
ALL_ROUTINGS = ("whole_t16", "split_e32_h128")
FUSED_SHAPES = [  # (E, K, T, H)
    (128, 8, 19, 256),
    (64, 4, 7, 192),
]
#: fp16 inputs take fp32's GEMM operand
FUSED_DTYPES = (torch.float32, torch.bfloat16)


def record_fused(results: dict) -> None:
    from vllm_gemma4_router.fused_router.gemm_path import GemmPathConfig, route_by_gemm
    from vllm_gemma4_router.fused_router.launcher import (
        FusedLaunchConfig,
        clip_config,
        launch_with_config,
    )

    for dtype in FUSED_DTYPES:
        for num_experts, topk, num_tokens, hidden in FUSED_SHAPES:
            gen = torch.Generator().manual_seed(7 * num_experts + topk + hidden)
            x = torch.randn(num_tokens, hidden, generator=gen).to(dtype)
            scale = (torch.rand(hidden, generator=gen) + 0.5).to(dtype)
            weight = (torch.randn(num_experts, hidden, generator=gen) * 0.1).to(dtype)
            pes = torch.rand(num_experts, generator=gen) + 0.5
            padding = torch.rand(num_tokens, generator=gen) < 0.3
            for has_scale, has_mask in WITH:
                mask = padding if has_mask else None
                common = f"E={num_experts} K={topk} T={num_tokens} H={hidden} {dtype}"
                common += f" scale={has_scale} padding={mask is not None}"
                for name, fields in FUSED_CONFIGS.items():
                    routings = FUSED_ROUTINGS if name in ALL_ROUTINGS else FUSED_ROUTINGS[:1]
                    for select, scale_pick in routings:
                        config = clip_config(
                            FusedLaunchConfig(*fields, select=select, scale_pick=scale_pick),
                            hidden,
                            num_experts,
                        )
                        key = f"fused {name} {select}/{scale_pick} {common}"
                        out = _fused_out(num_tokens, num_experts, topk)
                        try:
                            launch_with_config(
                                config,
                                x,
                                scale,
                                weight,
                                pes if has_scale else None,
                                1e-6,
                                topk,
                                out,
                                is_padding=mask,
                            )
                        except ValueError as exc:
                            results[key] = f"ValueError: {exc}"
                            continue
                        results[key] = out
                for select, scale_pick in FUSED_ROUTINGS:
                    config = GemmPathConfig(1, 256, 4, 2, 1, select, scale_pick)
                    out = _fused_out(num_tokens, num_experts, topk)
                    route_by_gemm(
                        x,
                        scale,
                        weight,
                        pes if has_scale else None,
                        1e-6,
                        topk,
                        out,
                        config,
                        is_padding=mask,
                    )
                    results[f"gemm_path {select}/{scale_pick} {common}"] = out


def _fused_out(num_tokens: int, num_experts: int, topk: int):
    return (
        torch.full((num_tokens, num_experts), 5.0),
        torch.full((num_tokens, topk), 7.0),
        torch.full((num_tokens, topk), 99, dtype=torch.int32),
    )


def _bits(value):
    if isinstance(value, torch.Tensor):
        return value.view(torch.int32) if value.dtype == torch.float32 else value
    if isinstance(value, tuple):
        return tuple(_bits(v) for v in value)
    return value


def _same(a, b) -> bool:
    a, b = _bits(a), _bits(b)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def main(argv: list[str]) -> int:
    if len(argv) in (2, 3) and argv[0] == "record":
        import vllm_gemma4_router

        print("package:", Path(vllm_gemma4_router.__file__).parent, flush=True)
        which = argv[2] if len(argv) == 3 else "all"  # routing, fused or all
        results: dict = {}
        if which in ("routing", "all"):
            record_routing(results)
        if which in ("fused", "all"):
            record_fused(results)
        torch.save(results, argv[1])
        ran = sum(not isinstance(v, str) for v in results.values())
        print(f"{len(results)} cases ({ran} ran, {len(results) - ran} refused by check_config)")
        return 0
    if len(argv) == 3 and argv[0] == "compare":
        before, after = torch.load(argv[1]), torch.load(argv[2])
        differ = [k for k in before if k not in after or not _same(before[k], after[k])]
        extra = [k for k in after if k not in before]
        for key in differ[:20]:
            print("differs:", key)
        print(f"{len(before)} cases: {len(before) - len(differ)} bit-identical, "
              f"{len(differ)} differ, {len(extra)} only in the second")  # fmt: skip
        return int(bool(differ or extra))
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
