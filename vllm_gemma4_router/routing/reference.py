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

from vllm_gemma4_router.routing.checks import check_padding_mask, check_routing_inputs


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
