"""Host side of the fused router kernel: the launch itself (its configs and their checks:
``launch_table``)."""

from __future__ import annotations

import os

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
from vllm_gemma4_router.fused_router.launch_table import (
    MAX_SPLIT_BLOCKS,
    FusedLaunchConfig,
    check_fused_launch_config,
    fused_launch_config,
    pdl_supported,
    routing_constexprs,
)
from vllm_gemma4_router.routing.checks import check_output, check_padding_mask

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
        counters = torch.zeros(MAX_SPLIT_BLOCKS, dtype=torch.int32, device=device)
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
    does it); ``config`` is (``check_fused_launch_config``). ``is_padding``: ``None`` or a ``[T]``
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
    check_fused_launch_config(config, num_tokens, hidden, num_experts)
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
    config = fused_launch_config(num_tokens, hidden, num_experts, device)
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
