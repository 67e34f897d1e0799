"""A CUDA C++ prototype of the fused Gemma 4 router at decode sizes (issue #36).

``router_decode.cu`` holds the kernel (blocks of NW warps own EPB experts each and split
H between their threads, gate rows in registers; the last block routes, or in the
cluster builds every block routes its own tokens; its header lists the macros a build
fixes, ``build_macros`` computes them, ``parse_build`` names them). It is compiled
at run time with NVRTC through torch
(``torch.cuda._compile_kernel``, so nothing beyond the user's torch is needed) and
timed against the Triton fused kernel by ``benchmarks/kernel/bench_cuda_decode.py``.
Not in the serving path: it is there to measure whether CUDA C++ reaches the decode
floor before the package takes it.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import torch

from benchmarks.kernel.cuda_decode.launch import allow_large_clusters, launch

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
#: Every build the prototype has, by :func:`parse_build` name: the CUDA-core builds
#: (1-4 experts per block), the tensor-core ones (8 or 16), with the cluster hand-off
#: (``c``) and the expert scales in shared memory (``p``). The tests compile and run each.
BUILDS = ("4x1", "8x1", "4x2", "8x2", "8x4", "8x1p", "4x8", "8x8", "8x16", "8x8c", "4x8c",
          "8x16c", "8x8cp")  # fmt: skip


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
) -> dict[str, int]:
    """The kernel's compile-time constants for one problem shape and build.
    ``experts_per_block`` 1, 2 or 4 takes the logits on CUDA cores; 8 or 16
    (``TENSOR_CORE_EXPERTS``) on tensor cores (router_decode.cu's ``MMA``), which needs
    ``hidden`` a multiple of 32 x ``warps``. ``cluster`` (tensor cores only): the grid of
    ``num_experts / experts_per_block`` <= 16 blocks is one cluster and hands the logits
    over in DSMEM (``CLUSTER``). ``pes_shared``: the expert
    scales are staged in shared memory with the gate rows (``PES_SMEM``). ``stage`` < 4
    builds the stage ablation's kernels (``STAGE``), which leave the outputs incomplete."""
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
    if max_tokens > MAX_TOKENS and not tensor_cores:
        raise ValueError(
            f"max_tokens above {MAX_TOKENS} needs a tensor-core build, got {max_tokens}"
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
    )


def parse_build(text: str) -> tuple[int, int, dict[str, bool]]:
    """A build as bench_cuda_decode's ``--builds`` name it: ``WARPSxEXPERTS_PER_BLOCK``
    then flags, ``c`` cluster, ``p`` pes_shared (see :func:`build_macros`):
    ``"8x8cp"`` -> ``(8, 8, {"cluster": True, "pes_shared": True})``."""
    match = re.fullmatch(r"(\d+)x(\d+)(c?)(p?)", text)
    if match is None:
        raise ValueError(f"a build is WARPSxEXPERTS_PER_BLOCK[c][p], got {text!r}")
    named = {"cluster": bool(match.group(3)), "pes_shared": bool(match.group(4))}
    return int(match.group(1)), int(match.group(2)), named


def token_build(num_tokens: int) -> int:
    """The smallest of ``TOKEN_BUILDS`` that holds ``num_tokens`` (ValueError if none)."""
    for max_tokens in TOKEN_BUILDS:
        if num_tokens <= max_tokens:
            return max_tokens
    raise ValueError(f"at most {TOKEN_BUILDS[-1]} tokens a launch, got {num_tokens}")


def takes(
    build: str,
    num_tokens: int,
    scale_dtype: torch.dtype,
    hidden: int = 2816,
    num_experts: int = 128,
    topk: int = 8,
) -> bool:
    """Whether ``build`` (a :func:`parse_build` name) routes ``num_tokens`` tokens of this
    shape: :func:`build_macros` accepts its token build."""
    warps, per_block, flags = parse_build(build)
    try:
        build_macros(warps, hidden, num_experts, topk, scale_dtype, per_block,
                     max_tokens=token_build(num_tokens), **flags)  # fmt: skip
    except ValueError:
        return False
    return True


@functools.cache
def _kernel(macros: tuple[tuple[str, int], ...]):
    from torch.cuda import _compile_kernel

    options = [f"-D{name}={value}" for name, value in macros]
    kernel = _compile_kernel(SOURCE.read_text(), KERNEL_NAME, nvcc_options=options)
    if dict(macros)["CS"] > 8:
        allow_large_clusters(kernel)
    return kernel


_COUNTERS: dict[torch.device, torch.Tensor] = {}


def route_decode(
    hidden_states: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    params: torch.Tensor,
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
) -> None:
    """One launch of the prototype into ``out = (logits [T, E] fp32, weights [T, K] fp32,
    ids [T, K] int32)``, T <= ``MAX_TOKENS`` (``MAX_TOKENS_MMA`` for tensor-core builds).

    ``hidden_states`` [T, H] and ``gate_weight`` [E, H] bf16 with unit column stride and
    16-byte aligned rows; ``scale`` [H] contiguous bf16 or fp32; ``per_expert_scale`` [E]
    contiguous fp32 or ``None``; ``params`` a 2-element fp32 device tensor ``(eps,
    H**-0.5)`` (floats are not passed as kernel arguments); ``is_padding`` [T] uint8/bool
    or ``None``. Launches that share a device's counter must be stream-ordered. ``pdl``:
    launch with programmatic dependent launch (the gate rows load while the kernel ahead
    finishes). ``stage`` < 4: a stage-ablation build, ``cluster`` the DSMEM hand-off,
    ``pes_shared`` the expert scales staged in shared memory (see :func:`build_macros`)."""
    num_tokens, hidden = hidden_states.shape
    num_experts = gate_weight.shape[0]
    most = MAX_TOKENS_MMA if experts_per_block in TENSOR_CORE_EXPERTS else MAX_TOKENS
    if not 1 <= num_tokens <= most:
        raise ValueError(
            f"hidden_states must have 1 to {most} rows for this build, got {num_tokens}"
        )
    for name, tensor in (("hidden_states", hidden_states), ("gate_weight", gate_weight)):
        if (
            tensor.dtype != torch.bfloat16
            or tensor.stride(1) != 1
            or tensor.stride(0) % 8
            or tensor.data_ptr() % 16
        ):
            raise ValueError(f"{name} must be bf16 with unit column stride and 16-byte rows")
    if not scale.is_contiguous() or scale.data_ptr() % 16:
        raise ValueError("scale must be contiguous and 16-byte aligned (16-byte loads)")
    max_tokens = token_build(num_tokens)
    macros = build_macros(
        warps, hidden, num_experts, topk, scale.dtype, experts_per_block, stage, max_tokens,
        cluster, pes_shared,
    )  # fmt: skip
    kernel = _kernel(tuple(macros.items()))
    device = hidden_states.device
    counter = _COUNTERS.get(device)
    if counter is None:
        counter = _COUNTERS[device] = torch.zeros(1, dtype=torch.int32, device=device)
    logits, weights, ids = out
    padding = ids if is_padding is None else is_padding.view(torch.uint8)
    pes = params if per_expert_scale is None else per_expert_scale
    launch(
        kernel,
        (math.ceil(num_experts / experts_per_block), 1, 1),
        (32 * warps, 1, 1),
        [
            hidden_states, hidden_states.stride(0), scale, gate_weight, gate_weight.stride(0),
            pes, int(per_expert_scale is not None), params,
            logits, logits.stride(0), weights, weights.stride(0), ids, ids.stride(0),
            padding, int(is_padding is not None), counter,
            num_tokens, hidden, num_experts, topk,
        ],
        pdl=pdl,
    )  # fmt: skip
