"""The CUDA C++ decode kernel of the fused router (issue #36) as the benchmarks drive it.

The kernel, its builds and its launch live in the package
(``vllm_gemma4_router.fused_router.cuda_decode``: ``router_decode.cu``, ``builds``,
``launcher``). This module adds what only measuring needs: every build ever timed
(``BUILDS``, by :func:`parse_build` name) and :func:`route_decode`, which takes a build
as its parts, launches it with or without PDL and stopped after any stage, and raises
where the package's launcher would fall back to the Triton kernel.
``benchmarks/kernel/bench_cuda_decode.py`` times them against the Triton fused op.
"""

from __future__ import annotations

import torch

from vllm_gemma4_router.fused_router.cuda_decode.builds import (
    MAX_TOKENS,
    MAX_TOKENS_MMA,
    MMA_HELD_REGISTERS_FOR_64,
    SOURCE,
    TENSOR_CORE_EXPERTS,
    TOKEN_BUILDS,
    TOKEN_TILE,
    build_macros,
    launch_shape,
    most_tokens,
    parse_build,
    takes,
    token_build,
)
from vllm_gemma4_router.fused_router.cuda_decode.launcher import (
    decode_path_takes,
    launch_decode,
)

__all__ = [
    "BUILDS", "MAX_TOKENS", "MAX_TOKENS_MMA", "MMA_HELD_REGISTERS_FOR_64", "SOURCE",
    "TENSOR_CORE_EXPERTS", "TOKEN_BUILDS", "TOKEN_TILE", "build_macros", "build_name",
    "launch_shape", "parse_build", "route_decode", "takes", "token_build",
]  # fmt: skip

#: Every build the prototype has, by :func:`parse_build` name: the CUDA-core builds
#: (1-4 experts per block), the tensor-core ones (8 or 16), with the cluster hand-off
#: (``c``), the expert scales in shared memory (``p``) and a cluster per token tile
#: (``t``). The tests compile and run each.
BUILDS = ("4x1", "8x1", "4x2", "8x2", "8x4", "8x1p", "4x8", "8x8", "8x16", "8x8c", "4x8c",
          "8x16c", "8x8cp", "8x8cpt", "8x8cpt16")  # fmt: skip


def build_name(warps: int, experts_per_block: int, cluster: bool = False,
               pes_shared: bool = False, token_tiles: int = 0) -> str:  # fmt: skip
    """The :func:`parse_build` name of a build given as its parts."""
    tiles = "" if not token_tiles else "t" if token_tiles == TOKEN_TILE else f"t{token_tiles}"
    return f"{warps}x{experts_per_block}{'c' * cluster}{'p' * pes_shared}{tiles}"


def route_decode(
    hidden_states: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    warps: int = 4,
    experts_per_block: int = 1,
    is_padding: torch.Tensor | None = None,
    pdl: bool = False,
    stage: int = 4,
    cluster: bool = False,
    pes_shared: bool = False,
    token_tiles: int = 0,
    prenormed: bool = False,
) -> None:
    """One launch of a build into ``out = (logits [T, E] fp32, weights [T, K] fp32, ids
    [T, K] int32)``, T <= ``MAX_TOKENS`` (``MAX_TOKENS_MMA`` for tensor-core builds);
    the inputs as ``launcher.decode_path_takes`` asks. ``pdl``: programmatic dependent
    launch; ``stage`` < 4 a stage-ablation build, ``cluster`` the DSMEM hand-off,
    ``pes_shared`` the expert scales staged in shared memory, ``token_tiles`` a cluster
    per that many tokens, ``prenormed`` ``hidden_states`` the gate's operand (see
    :func:`build_macros`).
    Raises ``ValueError`` where the package's launcher would not take the call (naming
    the argument it can name) and ``RuntimeError`` where the build is unavailable."""
    num_tokens, hidden = hidden_states.shape
    most = most_tokens(experts_per_block)
    if not 1 <= num_tokens <= most:
        raise ValueError(
            f"hidden_states must have 1 to {most} rows for this build, got {num_tokens}"
        )
    # build_macros' own refusals, with their messages
    build_macros(warps, hidden, gate_weight.shape[0], topk, scale.dtype, experts_per_block,
                 stage, launch_shape(num_tokens, token_tiles)[0], cluster, pes_shared,
                 torch.float32 if per_expert_scale is None else per_expert_scale.dtype,
                 token_tiles, prenormed)  # fmt: skip
    build = build_name(warps, experts_per_block, cluster, pes_shared, token_tiles)
    if not decode_path_takes(build, hidden_states, scale, gate_weight, per_expert_scale, topk,
                             prenormed=prenormed):  # fmt: skip
        raise ValueError(
            "hidden_states, scale, gate_weight or per_expert_scale: not a layout or dtype "
            "the decode path takes (launcher.decode_path_takes)"
        )
    if not launch_decode(build, hidden_states, scale, gate_weight, per_expert_scale, eps, topk,
                         out, is_padding, pdl=pdl, stage=stage,
                         fit_tiles=False, prenormed=prenormed):  # fmt: skip
        raise RuntimeError(f"build {build} did not launch: see the log")
