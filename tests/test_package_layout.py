"""The package's two rooms: the runtime (what vLLM imports) never reaches into the harness."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vllm_gemma4_router"
HARNESS_ONLY = ("transformers", "tokenizers", "safetensors", "lm_eval", "matplotlib", "benchmarks")


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative ones resolved), at any depth."""
    package = "vllm_gemma4_router"
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package if node.level == 1 else None
                assert base is not None, f"{path.name}: import from above the package"
                module = f"{base}.{node.module}" if node.module else base
                names.update([module, *(f"{module}.{alias.name}" for alias in node.names)])
            else:
                names.add(node.module)
    return names


def test_runtime_modules_never_import_the_harness_or_its_dependencies():
    runtime = sorted(PACKAGE.glob("*.py"))
    assert {p.stem for p in runtime} >= {"plugin", "vllm_adapter", "vllm_op", "log_contract"}
    for path in runtime:
        for name in _imported_modules(path):
            assert not name.startswith("vllm_gemma4_router.harness"), (path.name, name)
            assert name.split(".")[0] not in HARNESS_ONLY, (path.name, name)
    # the harness's modules moved out of the runtime's room
    assert not {p.stem for p in runtime} & {"cli", "demo", "serving", "tiny_model"}


def test_registering_the_plugin_loads_no_harness():
    code = (
        "import sys\n"
        "from vllm_gemma4_router.plugin import register\n"
        "register()\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('vllm_gemma4_router.harness')"
        " or m.split('.')[0] in ('transformers', 'vllm'))\n"
        "print(loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"
