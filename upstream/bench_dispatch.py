"""Host overhead per routing call: the gemma4_routing CustomOp against vLLM 0.34's ``if``.

Both sides call the same stand-in for the routing kernels (returns its inputs),
so what is timed is the dispatch alone: vLLM 0.34's ``routing_function``
(``current_platform.is_cuda_alike() or current_platform.is_xpu()`` on every
call) and the patched one (``self.routing(...)``: ``nn.Module.__call__`` ->
``CustomOp.forward`` -> the forward chosen at construction). On the CUDA-like
branch both also call vLLM's ``get_moe_padding_mask`` (no forward context here).
Under CUDA graphs neither exists: the graph replays the kernel launch.

    PYTHONPATH=<patched vLLM 0.34.0 tree> python upstream/bench_dispatch.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "scripts"))

from vllm_standins import stand_in_for_triton_cpu  # noqa: E402


def trivial(gating_output, topk, per_expert_scale, **kwargs):
    """Stands in for both routing implementations."""
    return gating_output, gating_output


def bench(number: int, repeat: int) -> dict:
    """Median ns per call of each dispatch, per platform branch."""
    stand_in_for_triton_cpu()
    import torch
    from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.fused_moe.router import gemma4_routing
    from vllm.model_executor.layers.fused_moe.router.base_router import get_moe_padding_mask
    from vllm.platforms import PlatformEnum, current_platform

    gemma4_routing.gemma4_fused_routing_kernel_triton = trivial
    gemma4_routing.gemma4_routing_function_torch = trivial

    class InTree(torch.nn.Module):
        """vLLM 0.34.0's Gemma4Router.routing_function, the kernels replaced by ``trivial``."""

        def __init__(self):
            super().__init__()
            self.per_expert_scale = torch.nn.Parameter(torch.ones(16))

        def routing_function(self, hidden_states, gating_output, topk, renormalize):
            if current_platform.is_cuda_alike() or current_platform.is_xpu():
                return trivial(
                    gating_output,
                    topk,
                    self.per_expert_scale,
                    is_padding=get_moe_padding_mask(gating_output.shape[0]),
                )
            return trivial(gating_output, topk, self.per_expert_scale)

    class Patched(torch.nn.Module):
        """The patched Gemma4Router.routing_function."""

        def __init__(self):
            super().__init__()
            self.per_expert_scale = torch.nn.Parameter(torch.ones(16))
            self.routing = gemma4_routing.Gemma4Routing()

        def routing_function(self, hidden_states, gating_output, topk, renormalize):
            return self.routing(gating_output, topk, self.per_expert_scale)

    gating = torch.randn(4, 16)
    out: dict = {}
    original = current_platform._enum
    for name, enum in (("cuda", PlatformEnum.CUDA), ("cpu", PlatformEnum.CPU)):
        current_platform._enum = enum
        with set_current_vllm_config(VllmConfig(compilation_config=CompilationConfig())):
            patched = Patched()
        in_tree = InTree()
        timings = {}
        for label, fn in (
            ("if (vLLM 0.34.0)", in_tree.routing_function),
            ("CustomOp (patched)", patched.routing_function),
        ):
            runs = timeit.repeat(
                lambda fn=fn: fn(None, gating, 4, True), number=number, repeat=repeat
            )
            timings[label] = round(sorted(runs)[len(runs) // 2] / number * 1e9)
        timings["forward"] = patched.routing._forward_method.__name__
        out[name] = timings
    current_platform._enum = original
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the timings (ns per call, median of ``--repeat``) as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "ns_per_call": bench(args.number, args.repeat),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
