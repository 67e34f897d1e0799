"""Everything this package knows about vLLM's Gemma4 model code, by version.

vLLM has shipped two layouts of Gemma4 MoE routing (``ci/release_matrix.md``
lists every release from 0.19.0 to 0.33.0):

* ``moe_closure`` (vLLM 0.19.0 - 0.30.0): ``Gemma4MoE.__init__`` owns
  ``per_expert_scale`` and hands a local ``routing_function`` closure, as
  ``custom_routing_function``, to the fused MoE it builds: ``FusedMoE`` up to
  0.26.0, ``FusedMoEFactory`` from 0.27.0. The hand-over is found by what
  ``__init__`` calls, not by version.
* ``router_method`` (vLLM 0.31.0 - 0.33.0): ``Gemma4Router`` owns
  ``per_expert_scale`` and a ``routing_function`` method, which the decoder
  layer passes as ``custom_routing_function`` to the fused-MoE factory.

Either way each owner gets a ``gemma4_routing`` op module, and the routing
callable handed to vLLM's fused MoE reads ``owner.per_expert_scale`` at call
time (so ``functional_call`` and weight reloads see the live tensor; vLLM's
own closure copied it into a local at ``__init__`` through 0.21.0). The
multimodal, MTP and other Gemma4 architectures build their layers from the
same module, so they are covered too.
"""

from __future__ import annotations

import functools
import inspect
import os
from types import ModuleType

from .log_contract import install_line, logger, simulated_routing_line, unrecognised_line

GEMMA4_MODULE = "vllm.model_executor.models.gemma4"
OP_ATTRIBUTE = "gemma4_routing"
_INSTALLED_FLAG = "_vllm_gemma4_router_layout"

_ROUTING_SIGNATURE = ["self", "hidden_states", "gating_output", "topk", "renormalize"]
_HANDOVER_PARAMETER = "custom_routing_function"
# vLLM's router factory swaps any custom routing for a simulated router when set.
ROUTING_SIMULATION_ENV = "VLLM_MOE_ROUTING_SIMULATION_STRATEGY"


def _log_dispatch_after_build(module: ModuleType) -> None:
    """Log, once the whole model is built, which forward its routing ops run.

    Construction is the one moment every process passes through in Python:
    once vLLM compiles the model (CPU) or captures CUDA graphs, a call-time
    log may never run. Both layouts build through ``Gemma4ForCausalLM`` (the
    multimodal architectures wrap it), so that is where the ops are counted.
    """
    model_cls = getattr(module, "Gemma4ForCausalLM", None)
    if model_cls is None:
        return
    original_init = model_cls.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        from .vllm_op import Gemma4Routing, dispatch_summary

        ops = [m for m in self.modules() if isinstance(m, Gemma4Routing)]
        for line in dispatch_summary(ops):
            logger.info(line)

    model_cls.__init__ = __init__


def _attach_op(owner) -> None:
    from .vllm_op import Gemma4Routing

    owner.gemma4_routing = Gemma4Routing()


def _route(owner, gating_output, topk):
    return getattr(owner, OP_ATTRIBUTE)(gating_output, topk, owner.per_expert_scale)


def _is_router_method_layout(module: ModuleType) -> bool:
    router = getattr(module, "Gemma4Router", None)
    method = getattr(router, "routing_function", None)
    if not callable(method):
        return False
    try:
        params = list(inspect.signature(method).parameters)
    except (TypeError, ValueError):
        return False
    return params == _ROUTING_SIGNATURE


def _handover_signature(target) -> inspect.Signature | None:
    """``target``'s signature if it takes a ``custom_routing_function``, else ``None``."""
    if not callable(target):
        return None
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    return signature if _HANDOVER_PARAMETER in signature.parameters else None


def closure_handover(module: ModuleType) -> str | None:
    """Name of the global that ``Gemma4MoE.__init__`` hands its routing closure to.

    Structural, not a version list: ``__init__`` must define a nested
    ``routing_function`` and read a module global that accepts a
    ``custom_routing_function`` argument (``FusedMoE`` in vLLM 0.19 - 0.26,
    ``FusedMoEFactory`` in 0.27 - 0.30). ``None`` when there is no such pair.
    """
    moe = getattr(module, "Gemma4MoE", None)
    init = getattr(moe, "__init__", None)
    # Unwrapped: after install, __init__ is our wrapper around vLLM's.
    init_code = getattr(inspect.unwrap(init), "__code__", None) if callable(init) else None
    if init_code is None or not any(
        getattr(const, "co_name", None) == "routing_function" for const in init_code.co_consts
    ):
        return None
    namespace = vars(module)
    candidates = [
        name
        for name in init_code.co_names
        if name in namespace and _handover_signature(namespace[name]) is not None
    ]
    # Two candidates would leave it open which one gets the closure.
    return candidates[0] if len(candidates) == 1 else None


def _is_moe_closure_layout(module: ModuleType) -> bool:
    return closure_handover(module) is not None


def _install_router_method(module: ModuleType) -> None:
    router_cls = module.Gemma4Router
    original_init = router_cls.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        _attach_op(self)

    def routing_function(self, hidden_states, gating_output, topk, renormalize):
        """Gemma 4 routing through the ``gemma4_routing`` op (vllm-gemma4-router)."""
        return _route(self, gating_output, topk)

    router_cls.__init__ = __init__
    router_cls.routing_function = routing_function


def _install_moe_closure(module: ModuleType) -> None:
    moe_cls = module.Gemma4MoE
    original_init = moe_cls.__init__
    handover_name = closure_handover(module)

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        # The closure is born and handed over inside __init__, so swap it at
        # that hand-over: the fused MoE, and everything it passes the callable
        # on to, only ever sees ours.
        handover = getattr(module, handover_name)
        signature = _handover_signature(handover)

        def routing_function(hidden_states, gating_output, topk, renormalize):
            return _route(self, gating_output, topk)

        def handover_with_our_routing(*hargs, **hkwargs):
            bound = signature.bind(*hargs, **hkwargs)
            if bound.arguments.get(_HANDOVER_PARAMETER) is not None:
                bound.arguments[_HANDOVER_PARAMETER] = routing_function
            return handover(*bound.args, **bound.kwargs)

        setattr(module, handover_name, handover_with_our_routing)
        try:
            original_init(self, *args, **kwargs)
        finally:
            setattr(module, handover_name, handover)
        _attach_op(self)

    moe_cls.__init__ = __init__


_LAYOUTS = (
    ("router_method", _is_router_method_layout, _install_router_method),
    ("moe_closure", _is_moe_closure_layout, _install_moe_closure),
)


def _log_if_routing_is_simulated() -> None:
    strategy = os.environ.get(ROUTING_SIMULATION_ENV, "")
    if strategy:
        logger.warning(simulated_routing_line(ROUTING_SIMULATION_ENV, strategy))


def detect_layout(module: ModuleType) -> str | None:
    """Name of the Gemma4 routing layout ``module`` has, or ``None`` if unknown."""
    for name, matches, _ in _LAYOUTS:
        if matches(module):
            return name
    return None


def install(module: ModuleType) -> str | None:
    """Route every Gemma4 MoE layer that ``module`` builds through ``gemma4_routing``.

    Idempotent. Returns the layout name, or ``None`` (after one warning, with
    nothing changed) when the module's Gemma4 code is not recognised.
    """
    if hasattr(module, _INSTALLED_FLAG):
        return getattr(module, _INSTALLED_FLAG)
    for name, matches, apply in _LAYOUTS:
        if matches(module):
            apply(module)
            _log_dispatch_after_build(module)
            setattr(module, _INSTALLED_FLAG, name)
            logger.info(install_line(name))
            _log_if_routing_is_simulated()
            return name
    setattr(module, _INSTALLED_FLAG, None)
    logger.warning(unrecognised_line(str(getattr(module, "__name__", module))))
    return None
