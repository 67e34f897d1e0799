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

:func:`claim_fused_routing` is what a Gemma 4 routing function fed by the fused
router calls first. Where Python runs per call (eager, or inside vLLM's opaque
fused-MoE op on GPUs) it is :func:`claim_routing` itself. Where Dynamo traces the
routing function (vLLM's model compile on the CPU traces through its fused MoE) a
claim cannot be traced: it reads data pointers and storage offsets, which a trace
does not have. There it records ``torch.ops.vllm_gemma4_router.claimed_routing``
instead, an opaque op that claims at run time from the real tensors (Inductor
hands it the logits as a view of the fused router's buffer) and, when the claim
fails, routes from the logits with the torch reference (CPU) or the Triton kernel
(GPUs), applying the run-time padding source's mask
(``routing.padding.checked_padding_mask``: ids -1, weights 0) as the fused router
op does. A successful claim returns what the fused router wrote, already masked by
the same source.

Each process logs its first claim and its first failed claim, once each for the
eager and the compiled path.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

import torch

from vllm_gemma4_router.log_contract import handover_claimed_line, handover_missed_line, logger
from vllm_gemma4_router.routing.padding import checked_padding_mask
from vllm_gemma4_router.routing.reference import gemma4_routing_reference

# Buffers produced and not yet claimed: data pointer -> (T, E, K). Bounded, so
# buffers nobody claims (a caller that only wants logits) cannot pile up.
_PRODUCED: OrderedDict[int, tuple[int, int, int]] = OrderedDict()
_MAX_PENDING = 512
# Logits a fused router handed on without routing (the split router at the gate's
# token counts): data pointer -> (T, E). Their routing function routes them, as
# expected, so a failed claim of them is not logged as a miss. Bounded likewise.
_UNROUTED: OrderedDict[int, tuple[int, int]] = OrderedDict()


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


def record_unrouted(logits: torch.Tensor) -> None:
    """Note that ``logits`` [T, E] (a fused router's output at a count where it handed the
    GEMM to vLLM's gate) carry no routing: the routing function routes them, and the
    failed claim is expected, not a miss."""
    _UNROUTED[logits.data_ptr()] = tuple(logits.shape)
    _UNROUTED.move_to_end(logits.data_ptr())
    while len(_UNROUTED) > _MAX_PENDING:
        _UNROUTED.popitem(last=False)


def _expected_unrouted(gating_output: torch.Tensor) -> bool:
    """Whether ``gating_output`` was recorded by :func:`record_unrouted` (taken once)."""
    if _UNROUTED.get(gating_output.data_ptr()) != tuple(gating_output.shape):
        return False
    del _UNROUTED[gating_output.data_ptr()]
    return True


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
    _UNROUTED.clear()


CLAIMED_ROUTING_OP_QUALNAME = "vllm_gemma4_router::claimed_routing"

#: ``claimed`` / ``missed`` claims in this process, and ``unrouted``: logits a split
#: router handed on without routing, routed by the caller (tests and diagnostics).
claim_counts: Counter[str] = Counter()
# (claimed or missed, compiled) pairs already logged in this process.
_logged: set[tuple[str, bool]] = set()


def _note(claimed: bool, gating_output: torch.Tensor, topk: int, compiled: bool) -> None:
    if not claimed and _expected_unrouted(gating_output):
        claim_counts["unrouted"] += 1
        return
    key = "claimed" if claimed else "missed"
    claim_counts[key] += 1
    if (key, compiled) in _logged:
        return
    _logged.add((key, compiled))
    num_tokens, num_experts = gating_output.shape
    if claimed:
        logger.info(handover_claimed_line(num_tokens, num_experts, topk, compiled))
    else:
        logger.info(handover_missed_line(num_tokens, num_experts, topk))


def _route_from_logits(
    gating_output: torch.Tensor, topk: int, per_expert_scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    is_padding = checked_padding_mask(gating_output.shape[0], gating_output.device)
    if gating_output.device.type == "cpu":
        return gemma4_routing_reference(
            gating_output, topk, per_expert_scale, is_padding=is_padding
        )
    from vllm_gemma4_router.routing.launcher import gemma4_routing_triton

    return gemma4_routing_triton(gating_output, topk, per_expert_scale, is_padding=is_padding)


@torch.library.custom_op(CLAIMED_ROUTING_OP_QUALNAME, mutates_args=())
def claimed_routing(
    gating_output: torch.Tensor, topk: int, per_expert_scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused router's routing of ``gating_output`` if it is its untouched output,
    else the routing of ``gating_output`` with the padding source's rows as ids -1 and
    weights 0: fp32 weights, int32 ids, ``[T, topk]``.

    A claim is returned as copies (an op's outputs may not alias its inputs).
    """
    claimed = claim_routing(gating_output, topk)
    _note(claimed is not None, gating_output, topk, compiled=True)
    if claimed is not None:
        return claimed[0].clone(), claimed[1].clone()
    return _route_from_logits(gating_output, topk, per_expert_scale)


@claimed_routing.register_fake
def _claimed_routing_fake(gating_output, topk, per_expert_scale):
    num_tokens = gating_output.shape[0]
    weights = gating_output.new_empty((num_tokens, topk), dtype=torch.float32)
    ids = gating_output.new_empty((num_tokens, topk), dtype=torch.int32)
    return weights, ids


def claim_fused_routing(
    gating_output: torch.Tensor, topk: int, per_expert_scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Weights and ids ``[T, topk]`` (fp32, int32) for ``gating_output`` [T, E] without
    routing again, or ``None``: eager, when the logits are not the fused router's
    untouched output (the caller routes them). While Dynamo traces, the
    ``claimed_routing`` op, which never returns ``None`` (it routes itself).
    """
    if torch.compiler.is_compiling():
        return torch.ops.vllm_gemma4_router.claimed_routing(gating_output, topk, per_expert_scale)
    claimed = claim_routing(gating_output, topk)
    _note(claimed is not None, gating_output, topk, compiled=False)
    return claimed
