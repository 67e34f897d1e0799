"""Fused Gemma 4 MoE expert routing for vLLM.

``gemma4_routing_reference`` needs only torch; ``gemma4_routing_triton`` needs
triton too and is imported on first use; the vLLM op and plugin live in
``vllm_op`` / ``plugin`` and are the only parts that import vLLM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .reference import gemma4_routing_reference

if TYPE_CHECKING:
    from .triton_routing import gemma4_routing_triton

# The one version source: pyproject.toml reads it (setuptools dynamic version),
# the plugin's first log line shows it, CHANGELOG.md's newest release matches it.
__version__ = "0.1.0"
__all__ = ["gemma4_routing_reference", "gemma4_routing_triton", "__version__"]


def __getattr__(name: str):
    if name == "gemma4_routing_triton":
        from .triton_routing import gemma4_routing_triton

        return gemma4_routing_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
