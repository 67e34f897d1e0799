"""Gemma 4 MoE expert routing for vLLM: a Triton kernel, a vLLM CustomOp and a plugin.

The package has three rooms and a harness:

* ``routing``: the routing op (softmax over E, top-K, renormalise, per-expert
  scale): torch reference, Triton kernel and launcher, torch.library op;
* ``fused_router``: norm, scale, gate GEMM and routing in one launch (opt-in);
* ``integration``: the vLLM CustomOps, Gemma 4's layouts by vLLM release and
  the plugin's install; the only room that imports vLLM;
* ``harness``: CLI, demo, servers and the tiny model (never imported by the above).

``gemma4_routing_reference`` needs only torch; ``gemma4_routing_triton`` needs
triton too and is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vllm_gemma4_router._version import __version__
from vllm_gemma4_router.routing.reference import gemma4_routing_reference

if TYPE_CHECKING:
    from vllm_gemma4_router.routing.launcher import gemma4_routing_triton

__all__ = [
    "gemma4_routing_reference",
    "gemma4_routing_triton",
    "__version__",
]


def __getattr__(name: str):
    if name == "gemma4_routing_triton":
        from vllm_gemma4_router.routing.launcher import gemma4_routing_triton

        return gemma4_routing_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
