"""How the fused router hands its routing to vLLM's routing function.

vLLM's MoE layer receives only the router logits; the fused router also
computes the routing. It returns one fp32 buffer holding, back to back, the
logits ``[T, E]``, the weights ``[T, K]`` and the ids ``[T, K]`` (int32 bits),
and the model code passes on the logits part, a contiguous ``[T, E]`` view at
offset 0. The routing function then claims the rest with :func:`claim_routing`
instead of routing again. Nothing is mutated, so torch.compile sees a plain
functional op, and CUDA graphs replay the one kernel into the same buffer.

A claim succeeds only for logits that are exactly such a view of a buffer this
process produced and has not handed over yet (checked by address, shape and
storage size: metadata only, no host-device sync). Logits copied, sliced,
gathered across ranks or computed any other way fail the claim, and the caller
routes from them as usual.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

# Buffers produced and not yet claimed: data pointer -> (T, E, K). Bounded, so
# buffers nobody claims (a caller that only wants logits) cannot pile up.
_PRODUCED: OrderedDict[int, tuple[int, int, int]] = OrderedDict()
_MAX_PENDING = 512


def packed_numel(num_tokens: int, num_experts: int, topk: int) -> int:
    """Elements of the packed fp32 buffer for ``T`` tokens, ``E`` experts, top-``K``."""
    return num_tokens * (num_experts + 2 * topk)


def new_packed(num_tokens: int, num_experts: int, topk: int, device: torch.device) -> torch.Tensor:
    """An uninitialised packed buffer (1-D float32)."""
    numel = packed_numel(num_tokens, num_experts, topk)
    return torch.empty(numel, dtype=torch.float32, device=device)


def unpack(
    packed: torch.Tensor, num_tokens: int, num_experts: int, topk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views ``(logits [T, E] fp32, weights [T, K] fp32, ids [T, K] int32)`` of ``packed``."""
    t, e, k = num_tokens, num_experts, topk
    logits = packed.as_strided((t, e), (e, 1), packed.storage_offset())
    weights = packed.as_strided((t, k), (k, 1), packed.storage_offset() + t * e)
    ids = packed.as_strided((t, k), (k, 1), packed.storage_offset() + t * (e + k))
    return logits, weights, ids.view(torch.int32)


def logits_view(packed: torch.Tensor, num_tokens: int, num_experts: int) -> torch.Tensor:
    """The ``[T, E]`` logits part of ``packed``, as the model code passes it on."""
    return packed[: num_tokens * num_experts].view(num_tokens, num_experts)


def record_produced(packed: torch.Tensor, num_tokens: int, num_experts: int, topk: int) -> None:
    """Note that ``packed`` holds a finished routing, claimable once."""
    _PRODUCED[packed.data_ptr()] = (num_tokens, num_experts, topk)
    _PRODUCED.move_to_end(packed.data_ptr())
    while len(_PRODUCED) > _MAX_PENDING:
        _PRODUCED.popitem(last=False)


def claim_routing(
    gating_output: torch.Tensor, topk: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(weights [T, K] fp32, ids [T, K] int32)`` the fused router computed for
    ``gating_output``, or ``None`` if these logits are not its untouched output.

    A claim is taken once: a second call for the same logits returns ``None``.
    """
    if (
        gating_output.dtype != torch.float32
        or gating_output.dim() != 2
        or gating_output.storage_offset() != 0
        or not gating_output.is_contiguous()
    ):
        return None
    num_tokens, num_experts = gating_output.shape
    expected = (num_tokens, num_experts, topk)
    if _PRODUCED.get(gating_output.data_ptr()) != expected:
        return None
    nbytes = packed_numel(num_tokens, num_experts, topk) * 4
    if gating_output.untyped_storage().nbytes() != nbytes:
        return None
    del _PRODUCED[gating_output.data_ptr()]
    flat = gating_output.as_strided((packed_numel(*expected),), (1,), 0)
    _, weights, ids = unpack(flat, *expected)
    return weights, ids


def forget_all() -> None:
    """Drop every pending hand-over (tests; a fresh engine)."""
    _PRODUCED.clear()
