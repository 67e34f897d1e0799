"""The plugin's vLLM CustomOps: ``gemma4_routing``, ``gemma4_fused_router`` and
``gemma4_gate_tier``.

``Gemma4Routing`` routes from the router logits (Triton on CUDA, ROCm and XPU,
the torch reference elsewhere and under ``-gemma4_routing``);
``Gemma4FusedRouter`` (opt-in, ``+gemma4_fused_router``) runs norm, scale, gate
GEMM and routing in one launch; ``Gemma4GateTier`` (opt-in, ``+gemma4_gate_tier``)
lets vLLM's own gate pick its GEMM tier per call inside compiled code.

A vLLM release may register its own ``gemma4_routing`` (an upstream CustomOp
for the in-tree kernel). Registering the name again would fail at import
(``CustomOp.register`` asserts the name is new), and the plugin would not
load. There the plugin's class subclasses vLLM's and is registered with
``CustomOp.register_oot`` instead, the way out-of-tree platforms override an
in-tree op: vLLM's own code that builds the op then builds ours.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Iterable

import torch
import vllm
from vllm.config import get_cached_compilation_config
from vllm.model_executor import custom_op as _custom_op
from vllm.model_executor.custom_op import CustomOp
from vllm.platforms import current_platform

from vllm_gemma4_router.fused_router import torch_library as fused_library
from vllm_gemma4_router.integration.gate_tier import gate_tier
from vllm_gemma4_router.integration.op_policy import fused_router_on, gate_tier_on, platform_family
from vllm_gemma4_router.log_contract import (
    dispatch_line,
    first_call_line,
    logger,
    no_layers_line,
    overrides_in_tree_op_line,
)
from vllm_gemma4_router.routing.reference import gemma4_routing_reference


def _registry() -> dict[str, type]:
    # A module global in recent vLLM, a class attribute in older ones.
    registry = getattr(_custom_op, "op_registry", None)
    if registry is None:
        registry = getattr(CustomOp, "op_registry", {})
    return registry


def in_tree_op(name: str) -> type | None:
    """vLLM's own CustomOp class registered as ``name``, or ``None``."""
    return _registry().get(name)


def custom_op_base(name: str) -> type:
    """The base class for the plugin's op ``name``: vLLM's in-tree op of that name if it
    has one (so the override is a subclass, as ``register_oot`` expects), else CustomOp."""
    return in_tree_op(name) or CustomOp


def register_custom_op(name: str) -> Callable[[type], type]:
    """``CustomOp.register(name)``, or, where vLLM has its own op ``name``, the plugin's
    class registered to replace it (``register_oot``) under the same ``name`` for
    ``custom_ops`` (``+name`` / ``-name``). Logs one line when it overrides."""

    def decorator(op_cls: type) -> type:
        in_tree = in_tree_op(name)
        if in_tree is None:
            return CustomOp.register(name)(op_cls)
        # vLLM looks overrides up by the in-tree class's __name__ when that class is built.
        CustomOp.register_oot(name=in_tree.__name__)(op_cls)
        op_cls.name = name
        logger.info(overrides_in_tree_op_line(name, f"{in_tree.__module__}.{in_tree.__qualname__}"))
        return op_cls

    return decorator


def explicit_choice(name: str) -> bool | None:
    """The user's choice for the op ``name`` in ``custom_ops``: True (``+name``), False
    (``-name``) or None (neither); both is refused with a ``ValueError``."""
    custom_ops = get_cached_compilation_config().custom_ops
    on, off = f"+{name}" in custom_ops, f"-{name}" in custom_ops
    if on and off:
        raise ValueError(f"custom_ops both enables and disables {name}")
    return True if on else False if off else None


ROUTING_OP_NAME = "gemma4_routing"

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


def running_platform_family() -> str:
    """This process's platform family for the fused-router policy: ``cuda-sm90`` (Hopper),
    ``cuda-other``, or :func:`platform_name`'s word."""
    platform = platform_name()
    capability = current_platform.get_device_capability() if platform == "cuda" else None
    return platform_family(platform, capability)


class _PolicyDefaultOp:
    """An opt-in op whose default comes from a measured policy table.

    Mixed in before the CustomOp base (``custom_op_base``): ``+name`` / ``-name`` in
    ``custom_ops`` wins; without either, ``_policy_on(explicit, platform family, vLLM
    version)`` decides. :attr:`active` records the decision at construction.
    """

    name: str
    # A staticmethod in each subclass: the table's decision function (op_policy).
    _policy_on: Callable[[bool | None, str, str], bool]

    def __init__(self, *_in_tree_args, **_in_tree_kwargs) -> None:
        # Not an in-tree op's __init__, nor its arguments (see Gemma4Routing.__init__).
        CustomOp.__init__(self)
        self.active = self.enabled()

    @classmethod
    def enabled(cls) -> bool:
        return cls._policy_on(
            explicit_choice(cls.name), running_platform_family(), vllm.__version__
        )

    @classmethod
    def asked(cls) -> bool:
        """Whether ``custom_ops`` names the op (``+name`` / ``-name``), so the policy
        table did not decide."""
        return explicit_choice(cls.name) is not None


@register_custom_op(ROUTING_OP_NAME)
class Gemma4Routing(custom_op_base(ROUTING_OP_NAME)):
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
        from vllm_gemma4_router.routing.launcher import gemma4_routing_triton

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


FUSED_ROUTER_OP_NAME = "gemma4_fused_router"


@register_custom_op(FUSED_ROUTER_OP_NAME)
class Gemma4FusedRouter(_PolicyDefaultOp, custom_op_base(FUSED_ROUTER_OP_NAME)):
    """The whole Gemma 4 router (norm, scales, gate GEMM, routing) as one vLLM CustomOp.

    ``forward(hidden_states [T, H], scale [H], gate_weight [E, H], per_expert_scale [E]
    or None, eps, topk)`` returns the packed 1-D float32 buffer of
    ``torch.ops.vllm_gemma4_router.fused_router`` (logits, weights, ids; see
    ``handover``). Every platform calls that torch op, which picks the torch
    chain (CPU) or the Triton kernel (GPUs) itself, so torch.compile records the
    op, not Python.

    ``"+gemma4_fused_router"`` / ``"-gemma4_fused_router"`` in ``custom_ops`` turns it
    on / off, whatever the base mode (``none``/``all``); without either, the
    measured policy's default for this platform and vLLM release
    (``op_policy``: off everywhere so far). :attr:`active` says whether it is on.
    """

    _policy_on = staticmethod(fused_router_on)

    def forward_native(
        self,
        hidden_states: torch.Tensor,
        scale: torch.Tensor,
        gate_weight: torch.Tensor,
        per_expert_scale: torch.Tensor | None,
        eps: float,
        topk: int,
    ) -> torch.Tensor:
        return fused_library.fused_router_packed(
            hidden_states, scale, gate_weight, per_expert_scale, eps, topk
        )

    def forward_cuda(self, hidden_states, scale, gate_weight, per_expert_scale, eps, topk):
        return self.forward_native(hidden_states, scale, gate_weight, per_expert_scale, eps, topk)


GATE_TIER_OP_NAME = "gemma4_gate_tier"


@register_custom_op(GATE_TIER_OP_NAME)
class Gemma4GateTier(_PolicyDefaultOp, custom_op_base(GATE_TIER_OP_NAME)):
    """Gemma 4's gate GEMM with the tier vLLM's ``GateLinear`` picks per call.

    ``forward(x [T, H] bf16 contiguous, layer_name, out_features)`` returns the
    fp32 logits ``[T, out_features]`` of the gate registered as ``layer_name``
    (``integration.gate_tier``), computed by that gate's own forward at run time,
    so compiled code keeps vLLM's token-count tiers (``ll_bf16_gemm`` at small T on
    Hopper) instead of the one frozen at the first trace.

    ``"+gemma4_gate_tier"`` / ``"-gemma4_gate_tier"`` in ``custom_ops`` turns it on /
    off; without either, the gate-tier policy's default for this platform and vLLM
    release (``op_policy``: off until measured). :attr:`active` says whether it is on.
    The adapter gives it only to gates whose release has such a tier here.
    """

    _policy_on = staticmethod(gate_tier_on)

    def forward_native(self, x: torch.Tensor, layer_name: str, out_features: int) -> torch.Tensor:
        return gate_tier(x, layer_name, out_features)

    def forward_cuda(self, x: torch.Tensor, layer_name: str, out_features: int) -> torch.Tensor:
        return self.forward_native(x, layer_name, out_features)
