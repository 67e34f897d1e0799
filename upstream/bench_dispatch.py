"""Host overhead per routing call: the gemma4_routing CustomOp against vLLM 0.34's ``if``.

Times vLLM's own ``Gemma4Router.routing_function``, from the pristine 0.34.0
sdist and from a copy with the series applied, each in its own process. In both,
the two routing implementations (module globals of ``gemma4.py``) are replaced
by one stand-in that returns its inputs, so what is timed is the dispatch alone:
the pristine ``if current_platform.is_cuda_alike() or current_platform.is_xpu()``
on every call, against ``self.routing(...)`` (``nn.Module.__call__`` ->
``CustomOp.forward`` -> the forward chosen at construction). On the CUDA-like
branch both also call vLLM's ``get_moe_padding_mask`` (no forward context here).
Under CUDA graphs neither exists: the graph replays the kernel launch.

    python upstream/bench_dispatch.py              # builds both trees under .cache/upstream
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import timeit
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "scripts"))
sys.path.insert(0, str(HERE))

from vllm_standins import stand_in_for_triton_cpu  # noqa: E402


def trivial(gating_output, topk, per_expert_scale, **kwargs):
    """Stands in for both routing implementations."""
    return gating_output, gating_output


def bench(number: int, repeat: int) -> dict:
    """Median ns per call of the ``vllm`` on ``sys.path``, per platform branch."""
    stand_in_for_triton_cpu()
    import torch
    from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config
    from vllm.model_executor.models import gemma4
    from vllm.platforms import PlatformEnum, current_platform

    gemma4.gemma4_fused_routing_kernel_triton = trivial
    gemma4.gemma4_routing_function_torch = trivial
    gating = torch.randn(4, 16)
    out: dict = {"patched": hasattr(gemma4, "Gemma4Routing")}
    original = current_platform._enum
    for name, enum in (("cuda", PlatformEnum.CUDA), ("cpu", PlatformEnum.CPU)):
        current_platform._enum = enum
        # Only what routing_function reads: per_expert_scale, and the op if any.
        router = gemma4.Gemma4Router.__new__(gemma4.Gemma4Router)
        torch.nn.Module.__init__(router)
        router.per_expert_scale = torch.nn.Parameter(torch.ones(16))
        if out["patched"]:
            with set_current_vllm_config(VllmConfig(compilation_config=CompilationConfig())):
                router.routing = gemma4.Gemma4Routing()
        runs = timeit.repeat(
            lambda router=router: router.routing_function(None, gating, 4, True),
            number=number,
            repeat=repeat,
        )
        out[name] = round(sorted(runs)[len(runs) // 2] / number * 1e9)
    current_platform._enum = original
    return out


def _in_subprocess(tree: Path, number: int, repeat: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run(
        [sys.executable, __file__, "--one", "--number", str(number), "--repeat", str(repeat)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Print the timings (ns per call, median of ``--repeat``) as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--one", action="store_true", help="time the vllm on sys.path only")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(bench(args.number, args.repeat)))
        return 0
    import series

    base = series.default_base()
    cache = series.REPO / ".cache" / "upstream" / "bench"
    trees = {
        # Copies without vllm.egg-info (it would make vLLM look for a GPU build).
        "if (vLLM 0.34.0)": series.build_work_repo(base, cache / "pristine", []),
        "CustomOp (patched)": series.build_work_repo(base, cache / "patched"),
    }
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "ns_per_call": {
            label: _in_subprocess(tree, args.number, args.repeat) for label, tree in trees.items()
        },
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
