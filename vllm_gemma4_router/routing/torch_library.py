"""``torch.ops.vllm_gemma4_router.routing``: the kernel as a torch.library op.

Registered with a fake (meta) implementation, so ``torch.compile(fullgraph=True)``
traces code that routes through it without a graph break, and export sees its
output shapes. Eager callers that count microseconds call
:func:`vllm_gemma4_router.gemma4_routing_triton` directly: the dispatcher adds
host time.
"""

from __future__ import annotations

import torch

from vllm_gemma4_router.routing.checks import check_padding_mask, check_routing_inputs
from vllm_gemma4_router.routing.launcher import gemma4_routing_triton

ROUTING_OP_QUALNAME = "vllm_gemma4_router::routing"


@torch.library.custom_op(ROUTING_OP_QUALNAME, mutates_args=())
def routing(
    gating_output: torch.Tensor,
    topk: int,
    per_expert_scale: torch.Tensor | None,
    is_padding: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`gemma4_routing_triton` (fresh outputs).

    ``is_padding``: optional ``[T]`` bool/uint8 mask, read on the device; a
    padding row gets ids ``-1`` (padding row: no expert; vLLM's dispatch and
    experts skip id -1) and weights ``0.0``."""
    return gemma4_routing_triton(gating_output, topk, per_expert_scale, is_padding=is_padding)


@routing.register_fake
def _routing_fake(
    gating_output: torch.Tensor,
    topk: int,
    per_expert_scale: torch.Tensor | None,
    is_padding: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    # The same checks as eager, so a bad call fails while tracing, not later.
    num_tokens, _ = check_routing_inputs(gating_output, topk, per_expert_scale)
    check_padding_mask(is_padding, num_tokens, gating_output.device)
    weights = gating_output.new_empty((num_tokens, topk), dtype=torch.float32)
    ids = gating_output.new_empty((num_tokens, topk), dtype=torch.int32)
    return weights, ids
