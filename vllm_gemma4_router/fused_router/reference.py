"""Pure-torch fused router: the contract every fused path must reproduce.

RMSNorm without weight, ``* H**-0.5``, ``* scale``, the gate GEMM (fp32
logits), then Gemma 4 routing exactly as
:func:`vllm_gemma4_router.routing.reference.gemma4_routing_reference` pins it
down (ties, order, non-finite logits, padding rows).
"""

from __future__ import annotations

import torch

from vllm_gemma4_router.routing.checks import check_padding_mask
from vllm_gemma4_router.routing.reference import gemma4_routing_reference


def gemma4_fused_router_reference(
    hidden_states: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
    *,
    is_padding: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole Gemma 4 router with plain torch ops (any device): norm, scale, gate, routing.

    ``logits = rms(h) * H**-0.5 * ((h * scale) @ gate_weight.T)`` with
    ``rms(h) = 1 / sqrt(mean(h**2) + eps)``, everything in fp32 except the one
    rounding the fused kernel makes too: for bfloat16 ``hidden_states`` the GEMM
    operand ``h * scale`` is rounded to bfloat16 (tensor-core input), for
    float16/float32 it stays fp32. The row's norm and ``H**-0.5`` are one fp32
    scalar per token, applied after the sum (it commutes with it). vLLM's chain
    rounds the normalised, root-scaled and scaled input to the model dtype three
    times before its GEMM; this contract rounds at most once, so its logits are
    closer to the exact ones, and it lets one pass over ``h`` do both the norm
    and the GEMM.

    Args:
        hidden_states: ``[T, H]`` bfloat16/float16/float32.
        scale: ``[H]`` the router's per-dimension scale (any float dtype).
        gate_weight: ``[E, H]`` the gate projection, the dtype of ``hidden_states``.
        per_expert_scale: ``[E]`` float, or ``None`` for 1.
        eps: the RMS norm epsilon, ``> 0``.
        topk: experts per token, ``1 <= topk <= E``.
        is_padding: optional ``[T]`` bool/uint8 padding mask, passed to
            :func:`gemma4_routing_reference` (the logits are computed for every row).

    Returns:
        ``(logits, topk_weights, topk_ids)``: float32 ``[T, E]``, float32
        ``[T, topk]``, int32 ``[T, topk]``; the routing is
        :func:`gemma4_routing_reference` of those logits (equal logits lowest id
        first, rows sorted by unscaled weight, descending; a padding row: ids
        ``-1``, no expert, and weights ``0.0``).
    """
    from vllm_gemma4_router.fused_router.checks import check_fused_router_inputs

    num_tokens, _, _ = check_fused_router_inputs(
        hidden_states, scale, gate_weight, per_expert_scale, eps, topk
    )
    check_padding_mask(is_padding, num_tokens, hidden_states.device)
    h = hidden_states.float()
    sumsq = (h * h).sum(dim=-1)
    factor = torch.rsqrt(sumsq / h.shape[-1] + eps) * (h.shape[-1] ** -0.5)
    operand = h * scale.float()
    if hidden_states.dtype == torch.bfloat16:
        operand = operand.to(torch.bfloat16).float()
    logits = (operand @ gate_weight.float().t()) * factor[:, None]
    weights, ids = gemma4_routing_reference(logits, topk, per_expert_scale, is_padding=is_padding)
    return logits, weights, ids
