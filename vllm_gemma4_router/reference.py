"""Pure-torch Gemma 4 routing: the semantics every other path must reproduce.

HF transformers' ``Gemma4TextRouter`` computes, per token,
``p = softmax(logits in fp32)``, takes the top-K of ``p``, divides them by their
sum and multiplies each by ``per_expert_scale[id]``. Because softmax is monotone
and the full-row denominator cancels in the renormalisation, that equals a
softmax over the K largest logits alone; this module computes it that way (one
K-wide softmax instead of an E-wide one, and closer to the exact value).

What the HF module leaves open, this package pins down:

* ties: equal logits are taken lowest expert id first (``-0.0 == +0.0``);
* order: each row is sorted by weight before scaling, descending;
* NaN logits count as ``-inf``: they are chosen last and get weight 0 (HF would
  turn the whole row into NaN and pick the NaN experts first);
* a row whose largest logit is ``+inf``, or whose logits are all ``-inf``/NaN,
  gets NaN weights, exactly as ``torch.softmax`` does; its ids are still K
  distinct valid experts;
* an optional padding mask (``is_padding``, as in vLLM, which marks CUDA-graph
  and data-parallel padding rows): a padding row gets ids ``-1`` (padding row:
  no expert; vLLM's dispatch and experts skip id -1) and weights ``0.0``, every
  other row exactly what it gets without the mask.
"""

from __future__ import annotations

import torch

from ._validation import check_padding_mask, check_routing_inputs


def gemma4_routing_reference(
    gating_output: torch.Tensor,
    topk: int,
    per_expert_scale: torch.Tensor | None = None,
    *,
    is_padding: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Route tokens to experts with plain torch ops (any device).

    Args:
        gating_output: router logits ``[T, E]``, float32/float16/bfloat16, any strides.
        topk: experts per token, ``1 <= topk <= E``.
        per_expert_scale: ``[E]`` float tensor on the same device, or ``None`` for 1.
        is_padding: optional 1-D contiguous bool/uint8 ``[T]`` mask on the same
            device, non-zero (True) for a padding row; ``None``: no padding row.
            Applied with device ops (no host sync, CUDA-graph safe).

    Returns:
        ``(topk_weights, topk_ids)``: float32 ``[T, topk]`` and int32 ``[T, topk]``,
        each row ordered by unscaled weight descending, equal logits lowest id first.
        A padding row has ids ``-1`` (padding row: no expert; vLLM's dispatch and
        experts skip id -1) and weights ``0.0``.
    """
    num_tokens, _ = check_routing_inputs(gating_output, topk, per_expert_scale)
    check_padding_mask(is_padding, num_tokens, gating_output.device)
    logits = gating_output.float()
    logits = torch.where(torch.isnan(logits), float("-inf"), logits)
    # A stable descending sort keeps equal logits in ascending id order, which is
    # the tie rule; torch.topk gives no such promise.
    values, ids = torch.sort(logits, dim=-1, descending=True, stable=True)
    values, ids = values[:, :topk], ids[:, :topk]
    weights = torch.softmax(values, dim=-1)
    if per_expert_scale is not None:
        weights = weights * per_expert_scale.float()[ids]
    ids = ids.to(torch.int32)
    if is_padding is not None:
        padding = is_padding.to(torch.bool)[:, None]  # uint8: non-zero is padding
        weights = weights.masked_fill(padding, 0.0)
        ids = ids.masked_fill(padding, -1)
    return weights, ids


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
    from ._validation import check_fused_router_inputs

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
