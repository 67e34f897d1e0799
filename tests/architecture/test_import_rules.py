"""The package's rooms and their import rules.

Floors, lowest first: the base (``_version``, ``log_contract``), ``routing``,
``fused_router``, ``integration``, then ``plugin`` and the ``harness``. A module
imports only from its own floor or below; only ``integration`` imports vLLM; no
runtime module imports the harness, the benchmarks or the offline tuning.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "vllm_gemma4_router"
NAME = "vllm_gemma4_router"
HARNESS_ONLY = ("transformers", "tokenizers", "safetensors", "lm_eval", "matplotlib", "tabulate")
OFFLINE = ("benchmarks", "ci", "tests")
#: room -> floor; the package's root modules by name
FLOORS = {"_version": 0, "log_contract": 0, "routing": 1, "fused_router": 2, "integration": 3}
FLOORS |= {"plugin": 4, "__init__": 4, "harness": 5}
RUNTIME_ROOMS = ("routing", "fused_router", "integration")


def _room(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    return rel[0] if len(rel) > 1 else path.stem


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative ones resolved), at any depth."""
    package = ".".join((NAME, *path.relative_to(PACKAGE).parts[:-1]))
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
                names.update([module, *(f"{module}.{alias.name}" for alias in node.names)])
            else:
                names.add(node.module)
    return names


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_lives_in_a_known_room():
    rooms = {_room(p) for p in _modules()}
    assert rooms == set(FLOORS), rooms ^ set(FLOORS)


def test_no_module_imports_from_a_floor_above_its_own():
    for path in _modules():
        own = FLOORS[_room(path)]
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != NAME or len(parts) < 2 or parts[1] not in FLOORS:
                continue
            assert FLOORS[parts[1]] <= own, f"{path.relative_to(PACKAGE)} imports {name}"


def test_rooms_of_one_floor_do_not_import_each_other():
    for path in _modules():
        room = _room(path)
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == NAME and len(parts) > 1 and parts[1] in FLOORS:
                other = parts[1]
                if other != room and FLOORS[other] == FLOORS[room] and FLOORS[room] > 0:
                    raise AssertionError(f"{path.relative_to(PACKAGE)} imports {name}")


def test_only_the_integration_imports_vllm():
    for path in _modules():
        vllm = {n for n in _imports(path) if n.split(".")[0] == "vllm"}
        if _room(path) != "integration":
            assert not vllm, (str(path.relative_to(PACKAGE)), vllm)
    assert any(
        n.split(".")[0] == "vllm"
        for p in (PACKAGE / "integration").glob("*.py")
        for n in _imports(p)
    )


def test_runtime_modules_never_import_the_harness_tuning_or_benchmarks():
    runtime = [p for p in _modules() if _room(p) != "harness"]
    assert {_room(p) for p in runtime} >= {"plugin", *RUNTIME_ROOMS, "log_contract"}
    for path in runtime:
        for name in _imports(path):
            assert not name.startswith(f"{NAME}.harness"), (path.name, name)
            assert name.split(".")[0] not in HARNESS_ONLY + OFFLINE, (path.name, name)


def test_no_room_holds_more_than_forty_percent_of_the_package():
    lines: dict[str, int] = {}
    for path in _modules():
        lines[_room(path)] = lines.get(_room(path), 0) + len(path.read_text().splitlines())
    total = sum(lines.values())
    for room, count in lines.items():
        assert count <= 0.4 * total, (room, count, total)


def test_runtime_package_carries_no_date_stamps():
    stamp = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b")
    for path in _modules():
        found = stamp.findall(path.read_text())
        assert not found, (str(path.relative_to(PACKAGE)), found)


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
