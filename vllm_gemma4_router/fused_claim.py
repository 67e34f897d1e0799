"""A routing function's claim of the fused router's routing, eager or compiled.

:func:`claim_fused_routing` is what a Gemma4 routing function fed by the fused
router calls first. Where Python runs per call (eager, or inside vLLM's opaque
fused-MoE op on GPUs) it is :func:`~vllm_gemma4_router.fused_handover.claim_routing`
itself. Where Dynamo traces the routing function (vLLM's model compile on the
CPU traces through its fused MoE) a claim cannot be traced: it reads data
pointers and storage offsets, which a trace does not have. There it records
``torch.ops.vllm_gemma4_router.claimed_routing`` instead, an opaque op that
claims at run time from the real tensors (Inductor hands it the logits as a
view of the fused router's buffer) and, when the claim fails, routes from the
logits with the torch reference (CPU) or the Triton kernel (GPUs), applying
the run-time padding source's mask (``padding.checked_padding_mask``: ids -1,
weights 0) as the fused router op does. A successful claim returns what the
fused router wrote, already masked by the same source.

Each process logs its first claim and its first failed claim, once each for
the eager and the compiled path.
"""

from __future__ import annotations

from collections import Counter

import torch

from .fused_handover import claim_routing
from .log_contract import handover_claimed_line, handover_missed_line, logger
from .padding import checked_padding_mask
from .reference import gemma4_routing_reference

OP_QUALNAME = "vllm_gemma4_router::claimed_routing"

#: ``claimed`` / ``missed`` claims in this process (tests and diagnostics).
claim_counts: Counter[str] = Counter()
# (claimed or missed, compiled) pairs already logged in this process.
_logged: set[tuple[str, bool]] = set()


def _note(claimed: bool, gating_output: torch.Tensor, topk: int, compiled: bool) -> None:
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
    from .triton_routing import gemma4_routing_triton

    return gemma4_routing_triton(gating_output, topk, per_expert_scale, is_padding=is_padding)


@torch.library.custom_op(OP_QUALNAME, mutates_args=())
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
