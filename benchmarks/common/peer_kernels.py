"""Load vLLM's and SGLang's in-tree Gemma4 routing kernels for side-by-side runs.

Each comes from an installed package when there is one, else from the source
file that ``fetch_peer_kernels.sh`` unpacked from the PyPI wheel. vLLM's kernel
sits inside its Gemma4 model module, whose imports need a whole vLLM; without
vLLM installed, only the kernel and its launcher are taken out of that file
(by name, with ``ast``) and compiled next to torch and triton.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch

Router = Callable[[torch.Tensor, int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
PEER_DIR = Path(__file__).resolve().parents[2] / ".cache" / "peer_kernels"


def _latest(pattern: str) -> Path | None:
    found = sorted(PEER_DIR.glob(pattern))
    return found[-1] if found else None


def load_vllm_router(source: Path | None = None) -> tuple[str, Router]:
    """vLLM's ``gemma4_fused_routing_kernel_triton(gating_output, topk, scale)``."""
    if source is None:
        try:
            import vllm
            from vllm.model_executor.models.gemma4 import gemma4_fused_routing_kernel_triton

            return f"vllm {vllm.__version__} (installed)", gemma4_fused_routing_kernel_triton
        except ImportError:
            source = _latest("vllm-*/gemma4.py")
    if source is None:
        raise FileNotFoundError(
            "no vLLM: install it or run benchmarks/common/fetch_peer_kernels.sh"
        )
    wanted = {"_gemma4_routing_kernel", "gemma4_fused_routing_kernel_triton"}
    tree = ast.parse(source.read_text())
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    if {n.name for n in nodes} != wanted:
        raise LookupError(f"{source} does not define {sorted(wanted)}")
    lines = source.read_text().splitlines()
    segments = []
    for node in nodes:
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        segments.append("\n".join(lines[first - 1 : node.end_lineno]))
    module_source = "\n\n\n".join(segments)
    # triton.jit reads a kernel's source back from its file: write a real one.
    extracted = source.with_name("_extracted_routing.py")
    extracted.write_text(
        "import torch\nimport triton\nimport triton.language as tl\n\n\n" + module_source
    )
    spec = importlib.util.spec_from_file_location("vllm_gemma4_routing_extracted", extracted)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return f"{source.parent.name} (wheel source)", module.gemma4_fused_routing_kernel_triton


def load_sglang_router(source: Path | None = None) -> tuple[str, Router]:
    """SGLang's ``gemma4_fused_routing(gating_output, per_expert_scale, topk)``."""
    if source is None:
        try:
            import sglang
            from sglang.kernels.ops.moe.gemma4_routing import gemma4_fused_routing

            label = f"sglang {sglang.__version__} (installed)"
            return label, lambda g, k, s: gemma4_fused_routing(g, s, k)
        except ImportError:
            source = _latest("sglang-*/gemma4_routing.py")
    if source is None:
        raise FileNotFoundError(
            "no SGLang: install it or run benchmarks/common/fetch_peer_kernels.sh"
        )
    spec = importlib.util.spec_from_file_location("sglang_gemma4_routing", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return f"{source.parent.name} (wheel source)", lambda g, k, s: module.gemma4_fused_routing(
        g, s, k
    )
