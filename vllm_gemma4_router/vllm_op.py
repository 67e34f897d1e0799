"""The ``gemma4_routing`` vLLM CustomOp (imports vLLM)."""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Iterable

import torch
from vllm.config import get_cached_compilation_config
from vllm.model_executor.custom_op import CustomOp
from vllm.platforms import current_platform

from .log_contract import dispatch_line, first_call_line, logger, no_layers_line
from .reference import gemma4_routing_reference
from .vllm_custom_op import custom_op_base, register_custom_op

OP_NAME = "gemma4_routing"

# Once per process, not per layer: every layer's op runs the same forward.
_first_call_logged = False


def platform_name() -> str:
    """vLLM's current platform as a short word: cuda, rocm, xpu, cpu, tpu, oot, unspecified."""
    for name, check in (
        ("rocm", current_platform.is_rocm),
        ("cuda", current_platform.is_cuda),
        ("xpu", current_platform.is_xpu),
        ("cpu", current_platform.is_cpu),
        ("tpu", current_platform.is_tpu),
        ("oot", current_platform.is_out_of_tree),
    ):
        if check():
            return name
    return "unspecified"


@register_custom_op(OP_NAME)
class Gemma4Routing(custom_op_base(OP_NAME)):
    """Gemma 4 MoE routing as a vLLM CustomOp.

    ``forward(gating_output [T, E], topk, per_expert_scale [E], is_padding [T] or
    None)`` returns float32 weights and int32 ids, both ``[T, topk]``, with the
    contract of :func:`vllm_gemma4_router.gemma4_routing_reference` (equal
    logits: lowest id first; rows sorted by unscaled weight, descending).
    Rows that ``is_padding`` (bool/uint8) marks get ids -1 and weights 0: no
    expert, which vLLM's dispatch and experts skip; the other rows are exactly
    what they are without the mask.

    CUDA, ROCm and XPU run the Triton kernel; every other platform runs the
    torch reference. Unlike vLLM's own ops it stays on when ``custom_ops`` is
    ``["none"]``: it runs inside vLLM's opaque fused-MoE op, where a native
    fallback would be eager torch. ``-gemma4_routing`` turns it off; the native
    fallback is then compiled whenever vLLM compiles.
    """

    def __init__(self, *_in_tree_args, **_in_tree_kwargs) -> None:
        # Where this class overrides an in-tree op of the same name (custom_op_base),
        # vLLM's code builds it with that op's arguments: this op needs none of them,
        # and runs CustomOp's own __init__, not the in-tree op's.
        CustomOp.__init__(self, compile_native=True)
        # Enabled on a platform without the kernel, vLLM would hand back an eager
        # forward_native; compile it exactly like the disabled-op fallback.
        if self._forward_method in (self.forward_cpu, self.forward_tpu, self.forward_oot):
            self._forward_method = self.maybe_compile(self.forward_native)

    @property
    def dispatch(self) -> str:
        """The forward this op runs: ``forward_native`` or a Triton one (``forward_cuda``...)."""
        return inspect.unwrap(self._forward_method).__name__

    @property
    def compiled(self) -> bool:
        """True when the forward is wrapped in ``torch.compile`` by the op itself."""
        return inspect.unwrap(self._forward_method) is not self._forward_method

    def forward(
        self,
        gating_output: torch.Tensor,
        topk: int,
        per_expert_scale: torch.Tensor | None,
        is_padding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Logged only where Python really runs per call (eager, or inside vLLM's
        # opaque fused-MoE op on GPUs). While Dynamo traces (vLLM's model compile
        # on CPU) is_compiling() is a constant True: the branch vanishes from the
        # graph instead of breaking it, and the flag is not even read.
        global _first_call_logged
        if not torch.compiler.is_compiling() and not _first_call_logged:
            _first_call_logged = True
            logger.info(
                first_call_line(
                    self.dispatch,
                    platform_name(),
                    gating_output.shape[0],
                    gating_output.shape[-1],
                    topk,
                )
            )
        return self._forward_method(gating_output, topk, per_expert_scale, is_padding)

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
        is_padding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return gemma4_routing_reference(
            gating_output, topk, per_expert_scale, is_padding=is_padding
        )

    def forward_cuda(
        self,
        gating_output: torch.Tensor,
        topk: int,
        per_expert_scale: torch.Tensor | None,
        is_padding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from .triton_routing import gemma4_routing_triton

        return gemma4_routing_triton(gating_output, topk, per_expert_scale, is_padding=is_padding)

    def forward_hip(self, gating_output, topk, per_expert_scale, is_padding=None):
        return self.forward_cuda(gating_output, topk, per_expert_scale, is_padding)

    def forward_xpu(self, gating_output, topk, per_expert_scale, is_padding=None):
        return self.forward_cuda(gating_output, topk, per_expert_scale, is_padding)


def dispatch_summary(ops: Iterable[Gemma4Routing]) -> list[str]:
    """One line per distinct forward among ``ops``, e.g.
    ``gemma4_routing: 30 layers dispatch to forward_cuda (platform cuda)``.

    A native forward that the op compiles itself says ``, torch.compile``.
    """
    counts = Counter((op.dispatch, op.compiled) for op in ops)
    platform = platform_name()
    if not counts:
        return [no_layers_line(platform)]
    return [
        dispatch_line(n, method, platform, compiled)
        for (method, compiled), n in sorted(counts.items())
    ]
