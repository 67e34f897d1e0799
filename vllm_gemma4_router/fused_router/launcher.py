"""Host side of the fused router kernel: launch configs, checks, the launch itself."""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import torch
import triton

from vllm_gemma4_router.fused_router.checks import (
    check_fused_router_inputs,
    check_fused_router_supported,
)
from vllm_gemma4_router.fused_router.handover import new_packed, unpack
from vllm_gemma4_router.fused_router.kernels.entry import (
    OPERAND_BF16,
    OPERAND_BF16_ROUNDED,
    OPERAND_FP32,
    gemma4_fused_router_kernel,
)
from vllm_gemma4_router.routing.checks import check_output, check_padding_mask
from vllm_gemma4_router.routing.kernels.select import FP32_SELECT_VALUES, SCALE_PICK_VALUES

#: Token blocks one counter buffer serves (the split launches are for small T).
_MAX_SPLIT_BLOCKS = 1024


class FusedLaunchConfig(NamedTuple):
    """One launch of the fused router: exactly what runs.

    ``block_e < E`` or ``h_slice < H`` splits the GEMM over programs whose
    partial sums the last program per token block adds up and routes;
    otherwise each program owns whole rows.
    """

    block_t: int
    block_e: int
    block_h: int
    h_slice: int
    num_warps: int
    num_stages: int
    route_t: int = 16
    #: Programmatic dependent launch (NVIDIA sm_90+): the program loads its gate
    #: weight and scale tiles before waiting for the kernel ahead of it, so it
    #: may only serve weights that kernel does not write (vLLM's: loaded once).
    pdl: bool = False
    #: The routing kernel's fp32 selection ("exact" or "checked") and per-pick scale
    #: fetch ("per_pick", "in_row" or "after"): ``routing_constexprs``.
    select: str = "exact"
    scale_pick: str = "per_pick"


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


def routing_constexprs(select: str, scale_pick: str) -> dict[str, int]:
    """The fused kernels' ``SELECT`` and ``SCALE_PICK`` for a config's names; raises
    ``ValueError`` for a name the routing kernel does not have."""
    if select not in FP32_SELECT_VALUES or scale_pick not in SCALE_PICK_VALUES:
        raise ValueError(
            f"select must be one of {sorted(FP32_SELECT_VALUES)} and scale_pick one of "
            f"{sorted(SCALE_PICK_VALUES)}, got {select!r}, {scale_pick!r}"
        )
    return {"SELECT": FP32_SELECT_VALUES[select], "SCALE_PICK": SCALE_PICK_VALUES[scale_pick]}


# Token-count buckets (upper bounds) and their configs for gemma-4-26B-A4B's
# router (H=2816, E=128, K=8, bf16). Provenance: benchmarks/tuning/sweep_fused_router.py
# on an NVIDIA H200 (torch 2.11.0+cu130, triton 3.6.0), gate weights from HBM
# (L=260 rotation). Rows 1-3: sweep of 2026-12-01 14:02 UTC at T=1/16/64/256
# (benchmarks/results/sweep_fused_router_NVIDIA_H200_2026-12-01.md): 8.0 us at
# T=1, 8.7 at 16, 8.8 at 64, 11.5 at 256. Rows 4-6: the 11:00 UTC sweep
# (sweep_fused_router_NVIDIA_H200_2026-12-01_summary.md); the op takes the GEMM
# path at those T (GEMM_PATH_TOKENS) but the kernel API still launches them.
_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 2**62)
_BF16_TABLE = (
    FusedLaunchConfig(16, 32, 256, 256, 8, 2),
    FusedLaunchConfig(16, 64, 256, 256, 8, 2),
    FusedLaunchConfig(16, 128, 256, 512, 4, 2),
    FusedLaunchConfig(32, 128, 64, 2**31, 4, 3, 8),
    FusedLaunchConfig(32, 128, 64, 2**31, 4, 3, 8),
    FusedLaunchConfig(64, 128, 64, 2**31, 4, 3, 8),
)
#: Token counts where the fused op computes its contract with cuBLAS plus the
#: routing kernel instead of this kernel. benchmarks/results/bench_router_NVIDIA_
#: H200_2026-12-01_L260.md (weights from HBM): whole-row launches take ~50 us
#: from T=512 to 4096 (each program streams the whole gate weight), the GEMM
#: path 15.0-25.1 us; at 8192 the GEMM path takes 46.3 us, the kernel 58.4; at
#: 16384 the kernel 72.5, the GEMM path 86.2. Between 8192 and 16384 and from
#: 257 to 511 nothing is measured: those go with the nearest measured T.
GEMM_PATH_TOKENS = range(257, 8193)


def _bucket(num_tokens: int) -> int:
    return next(i for i, bound in enumerate(_TOKEN_BUCKETS) if num_tokens <= bound)


#: Programmatic dependent launch of the table's split rows: "1" on, "0" off, unset
#: (or empty) the table's own choice (no row uses it: on an H200, 2026-12-01, in CUDA
#: graphs behind a producer kernel, it was within +-0.7 us at T <= 64 and 1.4-1.6 us
#: slower at T=128-256; benchmarks/results/bench_router_NVIDIA_H200_2026-12-01_producer.md).
#: Read once, at import. PDL applies only on devices where ``pdl_supported``.
PDL_ENV = "VLLM_GEMMA4_FUSED_PDL"


def pdl_override(value: str | None) -> bool | None:
    """``PDL_ENV``'s value as ``True``/``False``, or ``None`` (unset or empty: the table's)."""
    if value is None or value == "":
        return None
    if value not in ("0", "1"):
        raise ValueError(f"{PDL_ENV} must be '0', '1' or empty, got {value!r}")
    return value == "1"


_PDL_OVERRIDE = pdl_override(os.environ.get(PDL_ENV))


def table_config(
    num_tokens: int, hidden: int, num_experts: int, device: torch.device | None = None
) -> FusedLaunchConfig:
    """The launch config the table gives ``T`` tokens (clipped to ``H``).

    With ``device``, a split row launches with programmatic dependent launch
    when the table (or ``PDL_ENV``) asks for it and ``device`` supports it;
    without ``device``, as the table row says."""
    config = clip_config(_BF16_TABLE[_bucket(num_tokens)], hidden, num_experts)
    if device is None:
        return config
    pdl = config.pdl if _PDL_OVERRIDE is None else _PDL_OVERRIDE
    # Short-circuits: with PDL off (the default) the launch path does no more work.
    pdl = pdl and is_split(config, hidden, num_experts) and pdl_supported(device)
    return config if pdl == config.pdl else config._replace(pdl=pdl)


def is_split(config: FusedLaunchConfig, hidden: int, num_experts: int) -> bool:
    """Whether ``config`` splits the GEMM over programs (the last per token block routes)."""
    return config.block_e < triton.next_power_of_2(num_experts) or config.h_slice < hidden


def clip_config(config: FusedLaunchConfig, hidden: int, num_experts: int) -> FusedLaunchConfig:
    """``config`` with its H slice and expert slice no wider than the problem."""
    block_e_all = triton.next_power_of_2(num_experts)
    h_slice = min(config.h_slice, _round_up(hidden, config.block_h))
    return config._replace(block_e=min(config.block_e, block_e_all), h_slice=h_slice)


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def check_config(config: FusedLaunchConfig, num_tokens: int, hidden: int, num_experts: int) -> None:
    """Raise ``ValueError`` unless ``config`` is a valid launch for this problem."""
    block_e_all = triton.next_power_of_2(num_experts)
    for name in ("block_t", "block_e", "block_h"):
        value = getattr(config, name)
        if value < 16 or value & (value - 1):
            raise ValueError(f"config.{name} must be a power of two >= 16, got {value}")
    if config.block_e > block_e_all:
        raise ValueError(f"config.block_e={config.block_e} exceeds the padded E={block_e_all}")
    if config.h_slice < config.block_h or config.h_slice % config.block_h:
        raise ValueError(
            f"config.h_slice={config.h_slice} must be a multiple of block_h={config.block_h}"
        )
    if config.num_warps not in (1, 2, 4, 8, 16) or config.num_stages < 1:
        raise ValueError(f"bad num_warps/num_stages in {config}")
    routing_constexprs(config.select, config.scale_pick)
    blocks = triton.cdiv(num_tokens, config.block_t)
    if is_split(config, hidden, num_experts) and blocks > _MAX_SPLIT_BLOCKS:
        raise ValueError(
            f"a split launch serves at most {_MAX_SPLIT_BLOCKS} token blocks, "
            f"got T={num_tokens} with block_t={config.block_t}"
        )


@functools.cache
def pdl_supported(device: torch.device) -> bool:
    """Whether launches on ``device`` can use programmatic dependent launch (CUDA sm_90+)."""
    return (
        device.type == "cuda"
        and torch.version.hip is None
        and torch.cuda.get_device_capability(device)[0] >= 9
    )


def candidate_configs(
    num_tokens: int, hidden: int, num_experts: int, topk: int, dtype: torch.dtype
) -> list[FusedLaunchConfig]:
    """The configs ``benchmarks/tuning/sweep_fused_router.py`` times for one problem (valid ones).

    The GEMM's split shapes with the default routing, then the table row with each
    other routing of ``ROUTING_VARIANTS``: the routing runs in the one finishing
    program, after the GEMM, so its choice is taken as independent of the shape.
    PDL twins are not swept (no gain on the H200, see ``PDL_ENV``)."""
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
        row = table_config(num_tokens, hidden, num_experts)
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
            check_config(config, num_tokens, hidden, num_experts)
        except ValueError:
            continue
        if config not in out:
            out.append(config)
    return out


# triton.jit reads TRITON_INTERPRET once, at import; so does this.
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def operand_mode(dtype: torch.dtype) -> int:
    """The fused kernels' ``OPERAND`` for inputs of ``dtype`` (bf16 tensor cores on GPUs)."""
    if dtype != torch.bfloat16:
        return OPERAND_FP32.value
    return (OPERAND_BF16_ROUNDED if _INTERPRETED else OPERAND_BF16).value


def output_strides(out: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[int, ...]:
    """The fused kernels' output stride arguments: logits, weights, ids, (row, column) each."""
    return tuple(stride for tensor in out for stride in tensor.stride())


_COUNTERS: dict[torch.device, torch.Tensor] = {}


def _counters(device: torch.device) -> torch.Tensor:
    # Zeroed once per device; every split launch leaves its counters at zero.
    counters = _COUNTERS.get(device)
    if counters is None:
        counters = torch.zeros(_MAX_SPLIT_BLOCKS, dtype=torch.int32, device=device)
        _COUNTERS[device] = counters
    return counters


_NO_PADDING: dict[torch.device, torch.Tensor] = {}


def padding_pointer(is_padding: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """The fused kernels' ``padding_ptr`` argument: ``is_padding`` as uint8 (a bool mask
    viewed, not copied), or without a mask a one-byte dummy the kernels never read
    (``HAS_PADDING=False``), allocated once per device."""
    if is_padding is not None:
        return is_padding.view(torch.uint8) if is_padding.dtype == torch.bool else is_padding
    dummy = _NO_PADDING.get(device)
    if dummy is None:
        dummy = torch.zeros(16, dtype=torch.uint8, device=device)
        _NO_PADDING[device] = dummy
    return dummy


def launch_with_config(
    config: FusedLaunchConfig,
    hidden_states: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    is_padding: torch.Tensor | None = None,
) -> None:
    """Launch the fused router with ``config`` into ``out = (logits, weights, ids)``.

    Inputs and outputs are not validated here (:func:`gemma4_fused_router_triton`
    does it); ``config`` is (``check_config``). ``is_padding``: ``None`` or a ``[T]``
    bool/uint8 mask on the device (padding rows: ids -1, weights 0), read by the kernel.
    """
    launch = kernel_launch(
        config,
        hidden_states,
        scale,
        gate_weight,
        per_expert_scale,
        eps,
        topk,
        out,
        is_padding=is_padding,
    )
    if launch is not None:
        grid, args, kwargs = launch
        gemma4_fused_router_kernel[grid](*args, **kwargs)


def kernel_launch(
    config: FusedLaunchConfig,
    hidden_states: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    is_padding: torch.Tensor | None = None,
) -> tuple[tuple[int, int, int], tuple, dict] | None:
    """``(grid, args, kwargs)`` of ``gemma4_fused_router_kernel[grid](*args, **kwargs)``
    for ``config`` (split buffers allocated), or ``None`` for ``T = 0``; raises
    ``ValueError`` for a config the problem or the device cannot take. ``is_padding``
    (unchecked here): the ``padding_ptr`` and ``HAS_PADDING`` of ``padding_pointer``."""
    num_tokens, hidden = hidden_states.shape
    num_experts = gate_weight.shape[0]
    check_config(config, num_tokens, hidden, num_experts)
    device = hidden_states.device
    if config.pdl and not pdl_supported(device):
        raise ValueError(f"config.pdl needs an NVIDIA GPU of compute capability 9.0+, not {device}")
    logits = out[0]
    if num_tokens == 0:
        return None
    block_e_all = triton.next_power_of_2(num_experts)
    h_slices = triton.cdiv(hidden, config.h_slice)
    e_slices = block_e_all // config.block_e
    if e_slices * h_slices > 1:
        numel = h_slices * num_tokens * block_e_all
        partial = torch.empty(numel, dtype=torch.float32, device=device)
        partial_sumsq = torch.empty(h_slices * num_tokens, dtype=torch.float32, device=device)
        counters = _counters(device)
    else:
        partial = partial_sumsq = counters = logits  # never touched by a one-slice launch
    pes = per_expert_scale if per_expert_scale is not None else scale
    grid = (triton.cdiv(num_tokens, config.block_t), e_slices, h_slices)
    args = (
        hidden_states,
        scale,
        gate_weight,
        pes,
        *out,
        partial,
        partial_sumsq,
        counters,
        padding_pointer(is_padding, device),
        num_tokens,
        hidden,
        num_experts,
        float(eps),
        float(hidden) ** -0.5,
        hidden_states.stride(0),
        hidden_states.stride(1),
        scale.stride(0),
        gate_weight.stride(0),
        gate_weight.stride(1),
        pes.stride(0),
        *output_strides(out),
    )
    kwargs = dict(
        TOPK=topk,
        BLOCK_T=config.block_t,
        BLOCK_E=config.block_e,
        BLOCK_E_ALL=block_e_all,
        BLOCK_H=config.block_h,
        H_SLICE=config.h_slice,
        H_SLICES=h_slices,
        BLOCK_K=triton.next_power_of_2(topk),
        ROUTE_T=min(config.block_t, config.route_t),
        HAS_SCALE=per_expert_scale is not None,
        OPERAND=operand_mode(hidden_states.dtype),
        PDL=config.pdl,
        **routing_constexprs(config.select, config.scale_pick),
        HAS_PADDING=is_padding is not None,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        **({"launch_pdl": True} if config.pdl else {}),
    )
    return grid, args, kwargs


def gemma4_fused_router_triton(
    hidden_states: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
    *,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    is_padding: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole Gemma 4 router in one Triton launch (GPU, or CPU under TRITON_INTERPRET=1).

    Contract of :func:`vllm_gemma4_router.fused_router.reference.gemma4_fused_router_reference`:
    logits within fp32 GEMM tolerance of it, weights and ids exactly the routing
    of the returned logits (equal logits lowest id first, rows sorted by weight).

    Args:
        hidden_states: ``[T, H]`` bfloat16/float16/float32, any strides.
        scale: ``[H]`` float; gate_weight: ``[E, H]`` in the dtype of ``hidden_states``.
        per_expert_scale: ``[E]`` float or ``None``; eps: ``> 0``; topk: ``1..min(E, 16)``,
            ``E <= 256``.
        out: optional ``(logits [T, E] fp32, weights [T, K] fp32, ids [T, K] int32)``
            to write into (any strides); without it, three views of one new buffer.
        is_padding: ``None`` or a 1-D contiguous bool/uint8 ``[T]`` mask on the device
            (nonzero: a padding row), read by the kernel (no host sync): padding rows
            get ids -1 and weights 0, their logits as usual; other rows are the
            unmasked call's bits.

    Returns:
        ``(logits, weights, ids)`` (``out`` when given).
    """
    num_tokens, hidden, num_experts = check_fused_router_inputs(
        hidden_states, scale, gate_weight, per_expert_scale, eps, topk
    )
    check_fused_router_supported(num_experts, topk)
    device = hidden_states.device
    check_padding_mask(is_padding, num_tokens, device)
    if out is None:
        packed = new_packed(num_tokens, num_experts, topk, device)
        out = unpack(packed, num_tokens, num_experts, topk)
    else:
        if not isinstance(out, tuple) or len(out) != 3:
            raise TypeError("out must be a tuple (logits, weights, ids)")
        check_output("logits", out[0], (num_tokens, num_experts), torch.float32, device)
        check_output("weights", out[1], (num_tokens, topk), torch.float32, device)
        check_output("ids", out[2], (num_tokens, topk), torch.int32, device)
    config = table_config(num_tokens, hidden, num_experts, device)
    launch_with_config(
        config,
        hidden_states,
        scale,
        gate_weight,
        per_expert_scale,
        eps,
        topk,
        out,
        is_padding=is_padding,
    )
    return out
