"""What the adapter reads from a release's own routing, and what it refuses.

vLLM 0.34 passes a padding mask to its Triton routing on the CUDA-like/XPU
branch only; the plugin must pass vLLM's mask exactly there, and leave vLLM's
routing alone when a release calls its kernel with anything it does not know.
These tests build Gemma4 modules from source files (the adapter reads the
routing function's source, as it does in a real vLLM package) and check the
real-release side in tests/integration/test_plugin.py and ci/release_matrix.py.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vllm_gemma4_router.integration import gemma4_layouts
from vllm_gemma4_router.log_contract import parse_log
from vllm_gemma4_router.routing.padding import padding_source

REPO = Path(__file__).resolve().parents[2]

# A router_method module shaped like vLLM 0.34's gemma4.py: the mask helper and the
# platform are module globals, and the routing passes the mask on one branch only.
_ROUTER_0_34 = """
import torch

MASK = {{"value": None}}


class Platform:
    cuda_alike = False

    def is_cuda_alike(self):
        return self.cuda_alike

    def is_xpu(self):
        return False


current_platform = Platform()


def get_moe_padding_mask(num_tokens):
    mask = MASK["value"]
    return None if mask is None else mask[:num_tokens]


def gemma4_fused_routing_kernel_triton(
    gating_output, topk, per_expert_scale, *, is_padding=None, **kw
):
    raise AssertionError("vLLM's own kernel ran")


def gemma4_routing_function_torch(gating_output, topk, per_expert_scale):
    raise AssertionError("vLLM's own torch routing ran")


def gemma4_new_kernel(gating_output, topk, per_expert_scale):
    raise AssertionError("vLLM's own new kernel ran")


class Gemma4Router(torch.nn.Module):
    def __init__(self, num_experts):
        super().__init__()
        self.per_expert_scale = torch.nn.Parameter(torch.ones(num_experts))

    def routing_function(self, hidden_states, gating_output, topk, renormalize):
        if current_platform.is_cuda_alike() or current_platform.is_xpu():
            return {kernel_call}
        return gemma4_routing_function_torch(gating_output, topk, self.per_expert_scale)
"""
_MASKED_CALL = (
    "gemma4_fused_routing_kernel_triton(gating_output, topk, self.per_expert_scale, "
    "is_padding=get_moe_padding_mask(gating_output.shape[0]))"
)
_PLAIN_CALL = "gemma4_fused_routing_kernel_triton(gating_output, topk, self.per_expert_scale)"


def _module_from_source(tmp_path: Path, source: str):
    """A real module from a file, so ``inspect.getsource`` reads it as it reads vLLM's."""
    name = f"fake_gemma4_{time.monotonic_ns()}"
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as vLLM's are: the adapter looks modules up by name
    spec.loader.exec_module(module)
    return module


def _router_module(tmp_path: Path, kernel_call: str):
    return _module_from_source(tmp_path, _ROUTER_0_34.format(kernel_call=kernel_call))


@pytest.fixture
def warnings_logged(plugin_records):
    return plugin_records


@pytest.fixture(autouse=True)
def _no_padding_source(fresh_padding_state):
    """Every test starts and ends without a padding source (conftest)."""


def _build(module, num_experts: int):
    from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config

    with set_current_vllm_config(VllmConfig(compilation_config=CompilationConfig(mode=0))):
        return module.Gemma4Router(num_experts)


def test_facts_of_each_kind_of_routing(tmp_path):
    masked = _router_module(tmp_path, _MASKED_CALL)
    facts = gemma4_layouts.read_routing_facts(masked, "router_method")
    assert facts.mask_helper == "get_moe_padding_mask"
    assert facts.mask_branch == "(current_platform.is_cuda_alike() or current_platform.is_xpu())"
    assert not facts.passes_mask(masked)
    masked.current_platform.cuda_alike = True
    assert facts.passes_mask(masked)
    plain = _router_module(tmp_path, _PLAIN_CALL)
    assert (
        gemma4_layouts.read_routing_facts(plain, "router_method") == gemma4_layouts.RoutingFacts()
    )


@pytest.mark.parametrize("cuda_alike", [True, False], ids=["cuda-like branch", "cpu branch"])
def test_mask_passed_exactly_where_the_release_passes_it(tmp_path, gen, cuda_alike):
    from oracle import oracle_fp64

    module = _router_module(tmp_path, _MASKED_CALL)
    module.current_platform.cuda_alike = cuda_alike  # as vLLM's platform is fixed per process
    assert gemma4_layouts.install(module) == "router_method"
    num_experts, topk, num_tokens = 16, 4, 9
    router = _build(module, num_experts)
    assert (padding_source() is not None) == cuda_alike  # the fused router's run-time source
    scale = torch.rand(num_experts, generator=gen) + 0.5
    router.per_expert_scale = torch.nn.Parameter(scale)
    mask_buffer = torch.zeros(32, dtype=torch.bool)
    module.MASK["value"] = mask_buffer
    logits = torch.randn(num_tokens, num_experts, generator=gen)
    ref_weights, ref_ids = oracle_fp64(logits, topk, scale)
    for padding_rows in ([], [0, 4, 8], list(range(num_tokens))):
        # One buffer rewritten in place between calls, as vLLM's runner does.
        mask_buffer.zero_()
        mask_buffer[padding_rows] = True
        with torch.no_grad():
            weights, ids = router.routing_function(None, logits, topk, True)
        real = [r for r in range(num_tokens) if not cuda_alike or r not in padding_rows]
        assert np.array_equal(ids[real].long().numpy(), ref_ids[real])
        np.testing.assert_allclose(
            weights[real].double().numpy(), ref_weights[real], rtol=1e-5, atol=1e-7
        )
        if cuda_alike and padding_rows:
            assert (ids[padding_rows] == -1).all() and (weights[padding_rows] == 0).all()
    module.MASK["value"] = None  # no forward context / VLLM_MOE_SKIP_PADDING=0
    with torch.no_grad():
        weights, ids = router.routing_function(None, logits, topk, True)
    assert np.array_equal(ids.long().numpy(), ref_ids)


_REFUSED_CALLS = {
    "unknown keyword": (
        "gemma4_fused_routing_kernel_triton(gating_output, topk, self.per_expert_scale, "
        "is_padding=get_moe_padding_mask(gating_output.shape[0]), num_warps=4)",
        "arguments the plugin does not know (num_warps)",
    ),
    "extra positional": (
        "gemma4_fused_routing_kernel_triton(gating_output, topk, self.per_expert_scale, 4)",
        "arguments the plugin does not know",
    ),
    "mask from elsewhere": (
        "gemma4_fused_routing_kernel_triton(gating_output, topk, self.per_expert_scale, "
        "is_padding=MASK['value'])",
        "passes is_padding=MASK['value']",
    ),
    "unknown kernel": (
        "gemma4_new_kernel(gating_output, topk, self.per_expert_scale)",
        "calls gemma4_new_kernel()",
    ),
}


@pytest.mark.parametrize("what", list(_REFUSED_CALLS))
def test_unknown_routing_call_keeps_vllms_routing_and_says_why(tmp_path, warnings_logged, what):
    call, reason = _REFUSED_CALLS[what]
    module = _router_module(tmp_path, call)
    routing, init = module.Gemma4Router.routing_function, module.Gemma4Router.__init__
    assert gemma4_layouts.install(module) is None
    assert gemma4_layouts.install(module) is None  # idempotent: one line
    assert module.Gemma4Router.routing_function is routing
    assert module.Gemma4Router.__init__ is init
    messages = [r.getMessage() for r in warnings_logged]
    assert len(messages) == 1 and reason in messages[0], messages
    parsed = parse_log("\n".join(messages))
    assert parsed.refused == [module.__name__] and not parsed.layouts


def test_gemma4_location_on_disk(tmp_path, warnings_logged):
    root = tmp_path / "vllm"
    models = root / "model_executor" / "models"
    models.mkdir(parents=True)
    assert "no vllm/model_executor/models/gemma4.py" in gemma4_layouts.where_gemma4_lives(root)
    (models / "gemma4.py").write_text("")
    assert gemma4_layouts.where_gemma4_lives(root) is None
    (root / "models" / "gemma4").mkdir(parents=True)
    assert "new model tree (vllm/models/gemma4)" in gemma4_layouts.where_gemma4_lives(root)
    # The installed vLLM keeps Gemma 4 where the plugin patches it: no line.
    assert gemma4_layouts.check_gemma4_location() is None
    assert not warnings_logged


def test_nothing_patched_is_logged_by_register(tmp_path):
    # A vLLM whose Gemma 4 moved to the new model tree: register() says so, once.
    fake = tmp_path / "site" / "vllm"
    (fake / "models" / "gemma4").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    code = textwrap.dedent(
        """
        import logging, sys
        from vllm_gemma4_router.log_contract import LOGGER_NAME
        lines = []
        handler = logging.Handler(logging.INFO)
        handler.emit = lambda record: lines.append(record.getMessage())
        logging.getLogger(LOGGER_NAME).addHandler(handler)
        from vllm_gemma4_router.plugin import register
        register(); register()
        print("\\n".join(lines))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": f"{fake.parent}:{REPO}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    parsed = parse_log(proc.stdout)
    assert parsed.nothing_patched == 1, proc.stdout
    assert "vllm/models/gemma4" in proc.stdout


_IN_TREE_OP = """
import logging
from vllm.model_executor.custom_op import CustomOp
from vllm_gemma4_router.log_contract import LOGGER_NAME

lines = []
handler = logging.Handler(logging.INFO)
handler.emit = lambda record: lines.append(record.getMessage())
logging.getLogger(LOGGER_NAME).addHandler(handler)
logging.getLogger(LOGGER_NAME).setLevel(logging.INFO)


@CustomOp.register("gemma4_routing")
class Gemma4Routing(CustomOp):  # a vLLM that ships its own op of that name
    def __init__(self, num_warps):
        super().__init__()

    def forward_native(self, gating_output, topk, per_expert_scale, is_padding=None):
        raise AssertionError("vLLM's in-tree op ran")


import torch
from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config
from vllm_gemma4_router.integration import custom_ops
from vllm_gemma4_router.plugin import register

register()
in_tree = Gemma4Routing
for chosen in ([], ["-gemma4_routing"]):
    config = VllmConfig(compilation_config=CompilationConfig(mode=0, custom_ops=chosen))
    with set_current_vllm_config(config):
        built = in_tree(num_warps=4)  # vLLM's own code building its op gets ours
        assert isinstance(built, custom_ops.Gemma4Routing), type(built)
        assert issubclass(custom_ops.Gemma4Routing, in_tree)
        assert custom_ops.Gemma4Routing.enabled() == (not chosen)
        logits = torch.randn(5, 8)
        mask = torch.tensor([0, 1, 0, 0, 1], dtype=torch.bool)
        weights, ids = built(logits, 2, None, mask)
        assert (ids[mask] == -1).all() and (ids[~mask] >= 0).all()
print("\\n".join(lines))
print("ok")
"""


def test_in_tree_gemma4_routing_op_is_overridden_not_registered_twice():
    proc = subprocess.run(
        [sys.executable, "-c", _IN_TREE_OP], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("ok")
    assert "vLLM registers its own gemma4_routing CustomOp" in proc.stdout


# vLLM 0.34.0 with the upstream series (upstream/): the routing function calls the
# in-tree ``gemma4_routing`` CustomOp, whose CUDA forward passes the mask; ROCm runs
# the base class's forward_hip (-> forward_cuda), XPU calls forward_cuda itself.
_ROUTER_WITH_OP = """
import torch


def get_moe_padding_mask(num_tokens):
    return None


class CustomOp(torch.nn.Module):
    def forward_hip(self, *args, **kwargs):
        return self.forward_cuda(*args, **kwargs)


def gemma4_fused_routing_kernel_triton(
    gating_output, topk, per_expert_scale, *, is_padding=None
):
    raise AssertionError("vLLM's own kernel ran")


def gemma4_routing_function_torch(gating_output, topk, per_expert_scale):
    raise AssertionError("vLLM's own torch routing ran")


class Gemma4Routing(CustomOp):
    name = "gemma4_routing"

    def forward_native(self, gating_output, topk, per_expert_scale):
        return gemma4_routing_function_torch(gating_output, topk, per_expert_scale)

    def forward_cuda(self, gating_output, topk, per_expert_scale):
        return {kernel_call}

    def forward_xpu(self, gating_output, topk, per_expert_scale):
        return self.forward_cuda(gating_output, topk, per_expert_scale)


class Gemma4Router(torch.nn.Module):
    def __init__(self, num_experts):
        super().__init__()
        self.per_expert_scale = torch.nn.Parameter(torch.ones(num_experts))
        self.routing = Gemma4Routing()

    def routing_function(self, hidden_states, gating_output, topk, renormalize):
        return self.routing(gating_output, topk, self.per_expert_scale)
"""


def test_facts_of_the_in_tree_routing_op(tmp_path, monkeypatch):
    """The mask helper and platforms come from the op's forwards, followed through
    ``self.forward_cuda`` calls; the branch is evaluated over vLLM's platform."""
    masked_call = _MASKED_CALL.replace("self.per_expert_scale", "per_expert_scale")
    module = _module_from_source(tmp_path, _ROUTER_WITH_OP.format(kernel_call=masked_call))
    facts = gemma4_layouts.read_routing_facts(module, "router_method")
    assert facts.mask_helper == "get_moe_padding_mask"
    assert facts.mask_module == module.__name__
    assert facts.mask_branch == (
        "current_platform.is_cuda() or current_platform.is_rocm() or current_platform.is_xpu()"
    )
    from vllm.platforms import current_platform

    assert not facts.passes_mask(module)  # this host's CPU platform
    for platform_test in ("is_cuda", "is_rocm", "is_xpu"):
        with monkeypatch.context() as patch:
            patch.setattr(type(current_platform), platform_test, lambda self: True)
            assert facts.passes_mask(module), platform_test
    plain_call = _PLAIN_CALL.replace("self.per_expert_scale", "per_expert_scale")
    plain = _module_from_source(tmp_path, _ROUTER_WITH_OP.format(kernel_call=plain_call))
    assert gemma4_layouts.read_routing_facts(plain, "router_method") == (
        gemma4_layouts.RoutingFacts()
    )
    unknown = _module_from_source(
        tmp_path,
        _ROUTER_WITH_OP.format(kernel_call="gemma4_new_kernel(gating_output, topk)").replace(
            "class CustomOp", "def gemma4_new_kernel(*args):\n    pass\n\n\nclass CustomOp"
        ),
    )
    with pytest.raises(gemma4_layouts.RoutingRefused, match="gemma4_new_kernel"):
        gemma4_layouts.read_routing_facts(unknown, "router_method")
