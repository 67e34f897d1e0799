"""The fused router's contract computed with a vendor GEMM, for the token counts where
the Triton kernel is slower (see ``launch_table.GEMM_PATH_TOKENS``).

Same numbers as the kernel up to the GEMM's summation order: the operand
``h * scale`` rounded to bf16 for bf16 inputs (fp32 otherwise), an fp32 GEMM
accumulation, the row's ``rsqrt(mean(h**2) + eps) * H**-0.5`` applied after it,
then the fused kernel's own epilogue (norm factor, routing) on the GEMM's sums.
Two Triton kernels around the vendor GEMM: the prologue makes its operand and the
sums of squares in one pass over ``h``; the epilogue runs ``finish_rows``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vllm_gemma4_router.fused_router.kernels.entry import (
    OPERAND_BF16_ROUNDED,
    OPERAND_FP32,
    finish_rows,
    round_to_bf16,
)
from vllm_gemma4_router.fused_router.launch_table import (
    GEMM_PATH_CONFIG,
    GemmPathConfig,
    routing_constexprs,
)
from vllm_gemma4_router.fused_router.launcher import operand_mode, output_strides, padding_pointer
from vllm_gemma4_router.routing.kernels.select import load_scale_row


@triton.jit
def gemma4_router_operand_kernel(
    x_ptr,
    scale_ptr,
    operand_ptr,
    sumsq_ptr,
    num_tokens,
    hidden,
    stride_xt,
    stride_xh,
    stride_s,
    stride_ot,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    OPERAND: tl.constexpr,
):
    """The GEMM path's prologue: ``operand = x * scale`` (rounded as ``OPERAND`` says) and
    each row's fp32 sum of squares, in one pass over ``x``."""
    rows64 = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    row_ok = rows64 < num_tokens
    sumsq = tl.zeros([BLOCK_T], dtype=tl.float32)
    for h0 in range(0, hidden, BLOCK_H):
        h = h0 + tl.arange(0, BLOCK_H)
        h_ok = h < hidden
        ok = row_ok[:, None] & h_ok[None, :]
        x = tl.load(
            x_ptr + rows64[:, None] * stride_xt + h[None, :] * stride_xh, mask=ok, other=0.0
        ).to(tl.float32)
        s = tl.load(scale_ptr + h * stride_s, mask=h_ok, other=0.0).to(tl.float32)
        sumsq += tl.sum(x * x, axis=1)
        operand = x * s[None, :]
        if OPERAND == OPERAND_BF16_ROUNDED:
            operand = round_to_bf16(operand)  # exact in bf16: the store's cast keeps it
        tl.store(
            operand_ptr + rows64[:, None] * stride_ot + h[None, :],
            operand.to(operand_ptr.dtype.element_ty),
            mask=ok,
        )
    tl.store(sumsq_ptr + rows64, sumsq, mask=row_ok)


@triton.jit
def gemma4_router_finish_kernel(
    sums_ptr,
    sumsq_ptr,
    pes_ptr,
    logits_ptr,
    weights_ptr,
    ids_ptr,
    padding_ptr,
    num_tokens,
    hidden,
    num_experts,
    eps,
    inv_sqrt_hidden,
    stride_st,
    stride_pes,
    stride_lt,
    stride_le,
    stride_wt,
    stride_wk,
    stride_it,
    stride_ik,
    TOPK: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_E_ALL: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    SELECT: tl.constexpr,
    SCALE_PICK: tl.constexpr,
    HAS_PADDING: tl.constexpr,
):
    """The GEMM path's epilogue: a vendor GEMM's row sums [T, E] (row stride
    ``stride_st``, unit column stride) normed into logits and routed, as the fused
    kernel's own epilogue does (padding mask included: ``HAS_PADDING``)."""
    first_row = tl.program_id(0) * BLOCK_T
    scale_row = load_scale_row(pes_ptr, stride_pes, num_experts, BLOCK_E_ALL, HAS_SCALE, SCALE_PICK)
    rows64 = (first_row + tl.arange(0, BLOCK_T)).to(tl.int64)
    row_ok = rows64 < num_tokens
    experts = tl.arange(0, BLOCK_E_ALL)
    sums = tl.load(
        sums_ptr + rows64[:, None] * stride_st + experts[None, :],
        mask=row_ok[:, None] & (experts < num_experts)[None, :],
        other=0.0,
    )
    sumsq = tl.load(sumsq_ptr + rows64, mask=row_ok, other=0.0)
    finish_rows(
        sums, sumsq, first_row, num_tokens, num_experts,
        (hidden, eps, inv_sqrt_hidden),
        (logits_ptr, stride_lt, stride_le, weights_ptr, stride_wt, stride_wk,
         ids_ptr, stride_it, stride_ik),
        padding_ptr,
        (pes_ptr, stride_pes, scale_row),
        (TOPK, BLOCK_E_ALL, BLOCK_K, BLOCK_T),
        BLOCK_T,
        (SELECT, HAS_SCALE, SCALE_PICK, HAS_PADDING),
    )  # fmt: skip


def _gemm_fp32_out(operand: torch.Tensor, gate_weight: torch.Tensor) -> torch.Tensor:
    if operand.dtype == torch.bfloat16 and operand.is_cuda:
        # cuBLAS with bf16 inputs and fp32 output (vLLM's GateLinear does the same).
        return torch.mm(operand, gate_weight.t(), out_dtype=torch.float32)
    return operand.float() @ gate_weight.float().t()


def route_by_gemm(
    hidden_states: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    config: GemmPathConfig = GEMM_PATH_CONFIG,
    *,
    is_padding: torch.Tensor | None = None,
) -> None:
    """Write the router's ``(logits [T, E] fp32, weights, ids [T, K])`` into ``out``.

    Inputs as :func:`~vllm_gemma4_router.fused_router.launcher.gemma4_fused_router_triton`
    (validated by the caller); ties and ordering as the routing kernel's. Three
    launches, as many as vLLM's chain: prologue, GEMM, epilogue (``config``).
    ``is_padding``: ``None`` or a ``[T]`` bool/uint8 mask (checked by the caller);
    the epilogue reads it on the device and gives its rows ids -1 and weights 0.
    Raises ``ValueError`` before any launch when ``config`` names no routing the
    kernels have.
    """
    logits, weights, ids = out
    routing = routing_constexprs(config.finish_select, config.finish_scale_pick)
    num_tokens, hidden = hidden_states.shape
    num_experts = gate_weight.shape[0]
    mode = operand_mode(hidden_states.dtype)
    operand_dtype = torch.float32 if mode == OPERAND_FP32.value else torch.bfloat16
    device = hidden_states.device
    operand = torch.empty(num_tokens, hidden, dtype=operand_dtype, device=device)
    sumsq = torch.empty(num_tokens, dtype=torch.float32, device=device)
    gemma4_router_operand_kernel[(triton.cdiv(num_tokens, config.operand_block_t),)](
        hidden_states,
        scale,
        operand,
        sumsq,
        num_tokens,
        hidden,
        hidden_states.stride(0),
        hidden_states.stride(1),
        scale.stride(0),
        operand.stride(0),
        BLOCK_T=config.operand_block_t,
        BLOCK_H=config.operand_block_h,
        OPERAND=mode,
        num_warps=config.operand_warps,
    )
    sums = _gemm_fp32_out(operand, gate_weight)
    pes = per_expert_scale if per_expert_scale is not None else sumsq
    padding = padding_pointer(is_padding, device)
    gemma4_router_finish_kernel[(triton.cdiv(num_tokens, config.finish_block_t),)](
        sums,
        sumsq,
        pes,
        logits,
        weights,
        ids,
        padding,
        num_tokens,
        hidden,
        num_experts,
        float(eps),
        float(hidden) ** -0.5,
        sums.stride(0),
        pes.stride(0),
        *output_strides(out),
        TOPK=topk,
        BLOCK_T=config.finish_block_t,
        BLOCK_E_ALL=triton.next_power_of_2(num_experts),
        BLOCK_K=triton.next_power_of_2(topk),
        HAS_SCALE=per_expert_scale is not None,
        **routing,
        HAS_PADDING=is_padding is not None,
        num_warps=config.finish_warps,
    )
