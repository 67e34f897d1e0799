"""Registering the plugin's vLLM CustomOps, also on a vLLM that has ops of the same name.

A vLLM release may register its own ``gemma4_routing`` (an upstream CustomOp
for the in-tree kernel). Registering the name again would fail at import
(``CustomOp.register`` asserts the name is new), and the plugin would not
load. There the plugin's class subclasses vLLM's and is registered with
``CustomOp.register_oot`` instead, the way out-of-tree platforms override an
in-tree op: vLLM's own code that builds the op then builds ours.
"""

from __future__ import annotations

from collections.abc import Callable

from vllm.model_executor import custom_op as _custom_op
from vllm.model_executor.custom_op import CustomOp

from .log_contract import logger, overrides_in_tree_op_line


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
