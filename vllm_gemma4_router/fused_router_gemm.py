"""The fused router's contract computed with a vendor GEMM, for the token counts where
the Triton kernel is slower (see ``fused_router_launch.GEMM_PATH_TOKENS``).

Same numbers as the kernel up to the GEMM's summation order: the operand
``h * scale`` rounded to bf16 for bf16 inputs (fp32 otherwise), an fp32 GEMM
accumulation, the row's ``rsqrt(mean(h**2) + eps) * H**-0.5`` applied after it,
then the routing kernel on those logits. Four launches instead of one, each
writing into the caller's buffers.
"""

from __future__ import annotations

import torch

from .triton_routing import gemma4_routing_triton


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
    (validated by the caller); ties and ordering as the routing kernel's.
    """
    logits, weights, ids = out
    h = hidden_states.float()
    factor = torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps) * hidden_states.shape[1] ** -0.5
    operand = h * scale.float()
    if hidden_states.dtype == torch.bfloat16:
        operand = operand.to(torch.bfloat16)
    torch.mul(_gemm_fp32_out(operand, gate_weight), factor, out=logits)
    gemma4_routing_triton(logits, topk, per_expert_scale, topk_weights=weights, topk_ids=ids)
