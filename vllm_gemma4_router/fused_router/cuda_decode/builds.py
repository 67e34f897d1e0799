"""The CUDA C++ decode kernel's builds: the compile-time constants of
``router_decode.cu`` for one shape and layout, and the names that pick them.

A build is ``WARPSxEXPERTS_PER_BLOCK`` plus flags (:func:`parse_build`): blocks of
``WARPS`` warps own ``EXPERTS_PER_BLOCK`` experts each; 8 or 16 experts take the logits
on tensor cores; ``c`` makes the grid one thread-block cluster that hands the logits
over in distributed shared memory, ``p`` stages the expert scales in shared memory,
``t`` (with ``c``) gives every ``TOKEN_TILE`` tokens (``tN``: every N) a cluster of
their own. A launch takes the smallest token build (``TOKEN_BUILDS``) that holds its
rows, or its tile's (:func:`launch_shape`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("router_decode.cu")
KERNEL_NAME = "gemma4_router_decode"
#: The most tokens one launch of a CUDA-core build takes: every thread keeps partial
#: sums for each.
MAX_TOKENS = 16
#: The most tokens one launch of a tensor-core build takes: four MMA row tiles.
MAX_TOKENS_MMA = 64
#: Registers per lane a tensor-core build may spend on gate rows and scales and still
#: take more than two row tiles (32 tokens) without spilling (ptxas, sm_90a).
MMA_HELD_REGISTERS_FOR_64 = 132
#: Builds by the most tokens they take (``TMAX``): a launch takes the smallest that
#: fits, since the unrolled token loop's code grows with it and the kernel's code is
#: fetched at every launch. Above ``MAX_TOKENS``: tensor-core builds only.
TOKEN_BUILDS = (4, 8, 16, 32, 64)
#: Tokens whose x loads one thread keeps in flight together.
TOKEN_GROUP = 4
#: ``experts_per_block`` of the tensor-core builds (``MMA``): one or two MMA tiles of 8
#: columns per warp.
TENSOR_CORE_EXPERTS = (8, 16)
#: The largest thread-block cluster sm_90 takes (above 8 it is "non-portable").
MAX_CLUSTER = 16
#: Tokens per cluster of a token-tiled build named ``t``: the largest token build that
#: takes its row tiles in one unrolled pass (two tiles at once). ``tN`` names another.
TOKEN_TILE = 32


def build_macros(
    warps: int,
    hidden: int,
    num_experts: int,
    topk: int,
    scale_dtype: torch.dtype,
    experts_per_block: int = 1,
    stage: int = 4,
    max_tokens: int = MAX_TOKENS,
    cluster: bool = False,
    pes_shared: bool = False,
    pes_dtype: torch.dtype = torch.float32,
    token_tiles: int = 0,
    prenormed: bool = False,
) -> dict[str, int]:
    """The kernel's compile-time constants for one problem shape and build.
    ``experts_per_block`` 1, 2 or 4 takes the logits on CUDA cores; 8 or 16
    (``TENSOR_CORE_EXPERTS``) on tensor cores (router_decode.cu's ``MMA``), which needs
    ``hidden`` a multiple of 32 x ``warps``. ``cluster`` (tensor cores only): the grid of
    ``num_experts / experts_per_block`` <= 16 blocks is one cluster and hands the logits
    over in DSMEM (``CLUSTER``); ``token_tiles`` (with ``cluster``; 0: none): the most
    tokens one cluster takes (a token build up to ``TOKEN_TILE``), ``max_tokens`` <= it
    is the tile, and a launch runs one cluster per tile of its tokens (``TOKEN_TILES``;
    the gate rows are read once per cluster). ``pes_shared``: the expert
    scales are staged in shared memory with the gate rows (``PES_SMEM``); ``pes_dtype``
    the expert scales' dtype, fp32 or (with ``pes_shared``) bf16 (``PES_BF16``). ``stage`` < 4
    builds the stage ablation's kernels (``STAGE``), which leave the outputs incomplete.
    ``prenormed`` (tensor cores only; ``PRENORMED``): the kernel takes the gate's operand
    (normed and scaled, as vLLM's router computes it) for ``x`` and its logits are the
    plain dot products with the gate rows: no sum of squares, no scale."""
    if max_tokens not in TOKEN_BUILDS:
        raise ValueError(f"max_tokens must be one of {TOKEN_BUILDS}, got {max_tokens}")
    if stage not in (0, 1, 2, 3, 4):
        raise ValueError(f"stage must be 0 to 4, got {stage}")
    if warps not in (1, 2, 4, 8):
        raise ValueError(f"warps must be 1, 2, 4 or 8, got {warps}")
    if experts_per_block not in (1, 2, 4, *TENSOR_CORE_EXPERTS):
        raise ValueError(f"experts_per_block must be 1, 2, 4, 8 or 16, got {experts_per_block}")
    tensor_cores = experts_per_block in TENSOR_CORE_EXPERTS
    blocks = math.ceil(num_experts / experts_per_block)
    if cluster and not (tensor_cores and blocks <= MAX_CLUSTER):
        raise ValueError(
            f"cluster needs the tensor-core build and at most {MAX_CLUSTER} blocks, got "
            f"experts_per_block {experts_per_block} ({blocks} blocks)"
        )
    tiles = tuple(t for t in TOKEN_BUILDS if t <= TOKEN_TILE)
    if token_tiles and not (cluster and token_tiles in tiles and max_tokens <= token_tiles):
        raise ValueError(
            f"token_tiles needs the cluster build, a tile in {tiles} and max_tokens <= "
            f"the tile, got cluster {cluster}, tile {token_tiles}, max_tokens {max_tokens}"
        )
    if max_tokens > MAX_TOKENS and not tensor_cores:
        raise ValueError(
            f"max_tokens above {MAX_TOKENS} needs a tensor-core build, got {max_tokens}"
        )
    if prenormed and not tensor_cores:
        raise ValueError(
            f"prenormed needs a tensor-core build, got experts_per_block {experts_per_block}"
        )
    if tensor_cores and hidden % (32 * warps):
        raise ValueError(f"the tensor-core build needs hidden % (32 * warps) == 0, got {hidden}")
    # the tensor-core builds' 32-element blocks of h per warp
    blocks_k = hidden // (32 * warps) if tensor_cores else 0
    if tensor_cores and max_tokens > 32:
        # 16-byte chunks per lane: KB of each gate row tile, KB of the scale (two if fp32)
        held = 4 * blocks_k * (experts_per_block // 8 + (1 if scale_dtype == torch.bfloat16 else 2))
        if held > MMA_HELD_REGISTERS_FOR_64:
            raise ValueError(
                f"max_tokens {max_tokens} needs <= {MMA_HELD_REGISTERS_FOR_64} registers of "
                f"gate rows and scales per lane, this build holds {held}: more warps or "
                "fewer experts per block"
            )
    if hidden % 8:
        raise ValueError(f"hidden must be a multiple of 8 (16-byte rows), got {hidden}")
    if not 1 <= topk <= min(num_experts, 32) or num_experts > 256:
        raise ValueError(f"needs 1 <= topk <= min(E, 32) and E <= 256, got {topk}, {num_experts}")
    if pes_dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"per_expert_scale must be float32 or bfloat16, got {pes_dtype}")
    if pes_dtype == torch.bfloat16 and not pes_shared:
        raise ValueError("a bf16 per_expert_scale needs pes_shared (a build named ...p)")
    if scale_dtype not in (torch.bfloat16, torch.float32):
        raise TypeError(f"scale must be bfloat16 or float32, got {scale_dtype}")
    return dict(
        NW=warps,
        EPB=experts_per_block,
        CH=math.ceil(hidden / 8 / (32 * warps)),
        TMAX=max_tokens,
        TG=min(TOKEN_GROUP, max_tokens),
        RT=math.ceil(max_tokens / warps),
        SCALE_BF16=int(scale_dtype == torch.bfloat16),
        MAX_K=topk,
        E_PER_LANE=math.ceil(num_experts / 32),
        STAGE=stage,
        MMA=int(tensor_cores),
        KB=blocks_k,
        NT=experts_per_block // 8 if tensor_cores else 1,
        CLUSTER=int(cluster),
        CS=blocks if cluster else 1,
        PES_SMEM=int(pes_shared),
        PES_BF16=int(pes_dtype == torch.bfloat16),
        TOKEN_TILES=int(bool(token_tiles)),  # the tile is TMAX: one kernel per token build
        PRENORMED=int(prenormed),
    )


def parse_build(text: str) -> tuple[int, int, dict[str, bool | int]]:
    """A build as bench_cuda_decode's ``--builds`` name it: ``WARPSxEXPERTS_PER_BLOCK``
    then flags, ``c`` cluster, ``p`` pes_shared, ``t[N]`` token_tiles (N tokens per
    cluster, ``TOKEN_TILE`` without N; 0 without ``t``; see :func:`build_macros`):
    ``"8x8cpt16"`` -> ``(8, 8, {"cluster": True, "pes_shared": True, "token_tiles": 16})``."""
    match = re.fullmatch(r"(\d+)x(\d+)(c?)(p?)(t(\d*))?", text)
    if match is None:
        raise ValueError(f"a build is WARPSxEXPERTS_PER_BLOCK[c][p][t[N]], got {text!r}")
    tile = 0 if match.group(5) is None else int(match.group(6) or TOKEN_TILE)
    named = {"cluster": bool(match.group(3)), "pes_shared": bool(match.group(4)),
             "token_tiles": tile}  # fmt: skip
    return int(match.group(1)), int(match.group(2)), named


def coarser_tiles(build: str) -> tuple[str, ...]:
    """``build`` and, for a token-tiled build, the same build with its tile doubled up to
    ``TOKEN_TILE``, in that order: the builds to fall back on where the GPU cannot run
    all of a launch's clusters at once (``"8x8cpt8"`` -> ``("8x8cpt8", "8x8cpt16",
    "8x8cpt")``; an untiled build -> ``(build,)``)."""
    warps, per_block, flags = parse_build(build)
    tile = flags["token_tiles"]
    if not tile:
        return (build,)
    stem = build[: build.index("t")]
    names = [build]
    while tile < TOKEN_TILE:
        tile *= 2
        names.append(f"{stem}t" if tile >= TOKEN_TILE else f"{stem}t{tile}")
    return tuple(names)


def fitting_build(
    build: str, num_tokens: int, clusters_at_once: Callable[[str], int | None]
) -> str | None:
    """The first of :func:`coarser_tiles` whose launch of ``num_tokens`` rows needs no
    more clusters than ``clusters_at_once(name)`` says the GPU runs at once (an untiled
    build, one cluster, always fits); ``None`` where ``clusters_at_once`` returns ``None``
    (the build is unavailable) or no tile fits. Tiles that do not all fit would run in
    waves, each as slow as a whole launch."""
    for name in coarser_tiles(build):
        tile = parse_build(name)[2]["token_tiles"]
        clusters = launch_shape(num_tokens, tile)[1]
        capacity = clusters_at_once(name) if clusters > 1 else 1
        if capacity is None:
            return None
        if clusters <= capacity:
            return name
    return None


def most_tokens(experts_per_block: int) -> int:
    """The most tokens one launch of a build with ``experts_per_block`` takes:
    ``MAX_TOKENS_MMA`` for the tensor-core builds, ``MAX_TOKENS`` for the CUDA-core ones."""
    return MAX_TOKENS_MMA if experts_per_block in TENSOR_CORE_EXPERTS else MAX_TOKENS


def token_build(num_tokens: int) -> int:
    """The smallest of ``TOKEN_BUILDS`` that holds ``num_tokens`` (ValueError if none)."""
    for max_tokens in TOKEN_BUILDS:
        if num_tokens <= max_tokens:
            return max_tokens
    raise ValueError(f"at most {TOKEN_BUILDS[-1]} tokens a launch, got {num_tokens}")


def launch_shape(num_tokens: int, token_tiles: int = 0) -> tuple[int, int]:
    """``(token build, clusters along the tokens)`` of a launch of ``num_tokens`` rows: the
    smallest token build that holds them, one cluster; or, for a build with tiles of
    ``token_tiles`` tokens, the smallest that holds ``min(num_tokens, token_tiles)`` and
    one cluster per tile (ValueError above ``TOKEN_BUILDS[-1]`` rows either way)."""
    max_tokens = token_build(num_tokens)
    if not token_tiles:
        return max_tokens, 1
    tile = token_build(min(num_tokens, token_tiles))
    return tile, math.ceil(num_tokens / tile)


def takes(
    build: str,
    num_tokens: int,
    scale_dtype: torch.dtype,
    hidden: int = 2816,
    num_experts: int = 128,
    topk: int = 8,
    pes_dtype: torch.dtype = torch.float32,
) -> bool:
    """Whether ``build`` (a :func:`parse_build` name) routes ``num_tokens`` tokens of this
    shape and dtypes: :func:`build_macros` accepts its token build."""
    warps, per_block, flags = parse_build(build)
    try:
        build_macros(warps, hidden, num_experts, topk, scale_dtype, per_block,
                     max_tokens=launch_shape(num_tokens, flags["token_tiles"])[0],
                     pes_dtype=pes_dtype, **flags)  # fmt: skip
    except (ValueError, TypeError):
        return False
    return True
