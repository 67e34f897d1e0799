"""Everything this package knows about vLLM's Gemma4 model code, by version.

vLLM has shipped two layouts of Gemma4 MoE routing:

* ``moe_closure`` (vLLM 0.20 - 0.28): ``Gemma4MoE.__init__`` owns
  ``per_expert_scale`` and passes a local ``routing_function`` closure to
  ``FusedMoE(custom_routing_function=...)``.
* ``router_method`` (vLLM 0.31 - 0.33): ``Gemma4Router`` owns
  ``per_expert_scale`` and a ``routing_function`` method, which the decoder
  layer passes as ``custom_routing_function`` to the fused-MoE factory.

Either way each owner gets a ``gemma4_routing`` op module, and the routing
callable handed to vLLM's fused MoE reads ``owner.per_expert_scale`` at call
time (so ``functional_call`` and weight reloads see the live tensor). The
multimodal Gemma4 architectures build their text layers from the same module,
so they are covered too.
"""

from __future__ import annotations

import functools
import inspect
from types import ModuleType

from .log_contract import install_line, logger, unrecognised_line

GEMMA4_MODULE = "vllm.model_executor.models.gemma4"
OP_ATTRIBUTE = "gemma4_routing"
_INSTALLED_FLAG = "_vllm_gemma4_router_layout"

_ROUTING_SIGNATURE = ["self", "hidden_states", "gating_output", "topk", "renormalize"]


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


def _is_moe_closure_layout(module: ModuleType) -> bool:
    moe = getattr(module, "Gemma4MoE", None)
    init_code = getattr(getattr(moe, "__init__", None), "__code__", None)
    if init_code is None or not callable(getattr(module, "FusedMoE", None)):
        return False
    return any(
        getattr(const, "co_name", None) == "routing_function" for const in init_code.co_consts
    )


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

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        # The closure is born and handed to FusedMoE inside __init__, so swap it
        # at that hand-over: FusedMoE, and everything it passes the callable on
        # to, only ever sees ours.
        fused_moe = module.FusedMoE

        def routing_function(hidden_states, gating_output, topk, renormalize):
            return _route(self, gating_output, topk)

        def fused_moe_with_our_routing(*fargs, **fkwargs):
            if "custom_routing_function" in fkwargs:
                fkwargs["custom_routing_function"] = routing_function
            return fused_moe(*fargs, **fkwargs)

        module.FusedMoE = fused_moe_with_our_routing
        try:
            original_init(self, *args, **kwargs)
        finally:
            module.FusedMoE = fused_moe
        _attach_op(self)

    moe_cls.__init__ = __init__


_LAYOUTS = (
    ("router_method", _is_router_method_layout, _install_router_method),
    ("moe_closure", _is_moe_closure_layout, _install_moe_closure),
)


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
            return name
    setattr(module, _INSTALLED_FLAG, None)
    logger.warning(unrecognised_line(str(getattr(module, "__name__", module))))
    return None
