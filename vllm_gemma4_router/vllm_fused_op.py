"""The opt-in ``gemma4_fused_router`` vLLM CustomOp (imports vLLM)."""

from __future__ import annotations

import torch
from vllm.config import get_cached_compilation_config
from vllm.model_executor.custom_op import CustomOp

from . import fused_router_op
from .vllm_custom_op import custom_op_base, register_custom_op

OP_NAME = "gemma4_fused_router"


@register_custom_op(OP_NAME)
class Gemma4FusedRouter(custom_op_base(OP_NAME)):
    """The whole Gemma 4 router (norm, scales, gate GEMM, routing) as one vLLM CustomOp.

    ``forward(hidden_states [T, H], scale [H], gate_weight [E, H], per_expert_scale [E]
    or None, eps, topk)`` returns the packed 1-D float32 buffer of
    ``torch.ops.vllm_gemma4_router.fused_router`` (logits, weights, ids; see
    ``fused_handover``). Every platform calls that torch op, which picks the torch
    chain (CPU) or the Triton kernel (GPUs) itself, so torch.compile records the
    op, not Python.

    Opt-in: on only with ``"+gemma4_fused_router"`` in ``custom_ops``, whatever
    the base mode (``none``/``all``). :attr:`active` says whether it is on.
    """

    def __init__(self, *_in_tree_args, **_in_tree_kwargs) -> None:
        # Not an in-tree op's __init__, nor its arguments (see Gemma4Routing.__init__).
        CustomOp.__init__(self)
        self.active = self.enabled()

    @classmethod
    def enabled(cls) -> bool:
        custom_ops = get_cached_compilation_config().custom_ops
        on, off = f"+{cls.name}" in custom_ops, f"-{cls.name}" in custom_ops
        if on and off:
            raise ValueError(f"custom_ops both enables and disables {cls.name}")
        return on

    def forward_native(
        self,
        hidden_states: torch.Tensor,
        scale: torch.Tensor,
        gate_weight: torch.Tensor,
        per_expert_scale: torch.Tensor | None,
        eps: float,
        topk: int,
    ) -> torch.Tensor:
        return fused_router_op.fused_router_packed(
            hidden_states, scale, gate_weight, per_expert_scale, eps, topk
        )

    def forward_cuda(self, hidden_states, scale, gate_weight, per_expert_scale, eps, topk):
        return self.forward_native(hidden_states, scale, gate_weight, per_expert_scale, eps, topk)
