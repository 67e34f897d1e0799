"""The ``gemma4_routing`` vLLM CustomOp (imports vLLM)."""

from __future__ import annotations

import torch
from vllm.config import get_cached_compilation_config
from vllm.model_executor.custom_op import CustomOp

from .reference import gemma4_routing_reference

OP_NAME = "gemma4_routing"


@CustomOp.register(OP_NAME)
class Gemma4Routing(CustomOp):
    """Gemma 4 MoE routing as a vLLM CustomOp.

    ``forward(gating_output [T, E], topk, per_expert_scale [E])`` returns float32
    weights and int32 ids, both ``[T, topk]``, with the contract of
    :func:`vllm_gemma4_router.gemma4_routing_reference` (equal logits: lowest id
    first; rows sorted by unscaled weight, descending).

    CUDA, ROCm and XPU run the Triton kernel; every other platform runs the
    torch reference. Unlike vLLM's own ops it stays on when ``custom_ops`` is
    ``["none"]``: it runs inside vLLM's opaque fused-MoE op, where a native
    fallback would be eager torch. ``-gemma4_routing`` turns it off; the native
    fallback is then compiled whenever vLLM compiles.
    """

    def __init__(self) -> None:
        super().__init__(compile_native=True)
        # Enabled on a platform without the kernel, vLLM would hand back an eager
        # forward_native; compile it exactly like the disabled-op fallback.
        if self._forward_method in (self.forward_cpu, self.forward_tpu, self.forward_oot):
            self._forward_method = self.maybe_compile(self.forward_native)

    @classmethod
    def enabled(cls) -> bool:
        custom_ops = get_cached_compilation_config().custom_ops
        if f"+{cls.name}" in custom_ops and f"-{cls.name}" in custom_ops:
            raise ValueError(f"custom_ops both enables and disables {cls.name}")
        return f"-{cls.name}" not in custom_ops

    def forward_native(
        self,
        gating_output: torch.Tensor,
        topk: int,
        per_expert_scale: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return gemma4_routing_reference(gating_output, topk, per_expert_scale)

    def forward_cuda(
        self,
        gating_output: torch.Tensor,
        topk: int,
        per_expert_scale: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from .triton_routing import gemma4_routing_triton

        return gemma4_routing_triton(gating_output, topk, per_expert_scale)

    def forward_hip(self, gating_output, topk, per_expert_scale):
        return self.forward_cuda(gating_output, topk, per_expert_scale)

    def forward_xpu(self, gating_output, topk, per_expert_scale):
        return self.forward_cuda(gating_output, topk, per_expert_scale)
