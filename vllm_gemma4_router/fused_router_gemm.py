"""The fused router's contract computed with a vendor GEMM, for the token counts where
the Triton kernel is slower (see ``fused_router_launch.GEMM_PATH_TOKENS``).

Same numbers as the kernel up to the GEMM's summation order: the operand
``h * scale`` rounded to bf16 for bf16 inputs (fp32 otherwise), an fp32 GEMM
accumulation, the row's ``rsqrt(mean(h**2) + eps) * H**-0.5`` applied after it,
then the fused kernel's own epilogue (norm factor, routing) on the GEMM's sums.
"""

from __future__ import annotations

import torch
import triton

from .fused_router_kernel import (
    OPERAND_FP32,
    gemma4_router_finish_kernel,
    gemma4_router_operand_kernel,
)
from .fused_router_launch import operand_mode, output_strides

# Not swept: both kernels are a few us of memory-bound work at these T (the
# prologue streams [T, H] once, the epilogue [T, E] once); bench_router times
# the whole path against vLLM's chain.
_OPERAND_BLOCK_T, _OPERAND_BLOCK_H = 4, 1024
_FINISH_BLOCK_T = 16


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
) -> None:
    """Write the router's ``(logits [T, E] fp32, weights, ids [T, K])`` into ``out``.

    Inputs as :func:`~vllm_gemma4_router.fused_router_launch.gemma4_fused_router_triton`
    (validated by the caller); ties and ordering as the routing kernel's. Three
    launches, as many as vLLM's chain: prologue, GEMM, epilogue.
    """
    logits, weights, ids = out
    num_tokens, hidden = hidden_states.shape
    num_experts = gate_weight.shape[0]
    mode = operand_mode(hidden_states.dtype)
    operand_dtype = torch.float32 if mode == OPERAND_FP32.value else torch.bfloat16
    device = hidden_states.device
    operand = torch.empty(num_tokens, hidden, dtype=operand_dtype, device=device)
    sumsq = torch.empty(num_tokens, dtype=torch.float32, device=device)
    gemma4_router_operand_kernel[(triton.cdiv(num_tokens, _OPERAND_BLOCK_T),)](
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
        BLOCK_T=_OPERAND_BLOCK_T,
        BLOCK_H=_OPERAND_BLOCK_H,
        OPERAND=mode,
        num_warps=4,
    )
    sums = _gemm_fp32_out(operand, gate_weight)
    pes = per_expert_scale if per_expert_scale is not None else sumsq
    gemma4_router_finish_kernel[(triton.cdiv(num_tokens, _FINISH_BLOCK_T),)](
        sums,
        sumsq,
        pes,
        logits,
        weights,
        ids,
        num_tokens,
        hidden,
        num_experts,
        float(eps),
        float(hidden) ** -0.5,
        sums.stride(0),
        pes.stride(0),
        *output_strides(out),
        TOPK=topk,
        BLOCK_T=_FINISH_BLOCK_T,
        BLOCK_E_ALL=triton.next_power_of_2(num_experts),
        BLOCK_K=triton.next_power_of_2(topk),
        HAS_SCALE=per_expert_scale is not None,
        num_warps=4,
    )
