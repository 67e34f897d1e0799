"""The public surface, pinned: what users, vLLM and CI rely on stays put.

Listed in docs/design.md ("Public surface"). A change here is a change users see:
update both, and CHANGELOG.md.
"""

from __future__ import annotations

import importlib
import re
from importlib import metadata
from pathlib import Path

import pytest
import torch

import vllm_gemma4_router
from vllm_gemma4_router import log_contract

REPO = Path(__file__).resolve().parents[2]

ENTRY_POINTS = {
    "vllm.general_plugins": {"gemma4_router": "vllm_gemma4_router.plugin:register"},
}
SCRIPTS = {"vllm-gemma4-router": "vllm_gemma4_router.harness.cli:main"}
PUBLIC_NAMES = {"gemma4_routing_reference", "gemma4_routing_triton", "__version__"}
CUSTOM_OPS = {
    "gemma4_routing": "vllm_gemma4_router.integration.custom_ops.Gemma4Routing",
    "gemma4_fused_router": "vllm_gemma4_router.integration.custom_ops.Gemma4FusedRouter",
    "gemma4_gate_tier": "vllm_gemma4_router.integration.custom_ops.Gemma4GateTier",
}
TORCH_OPS = {
    "routing": "vllm_gemma4_router::routing(Tensor gating_output, SymInt topk, "
    "Tensor? per_expert_scale, Tensor? is_padding=None) -> (Tensor, Tensor)",
    "fused_router": "vllm_gemma4_router::fused_router(Tensor hidden_states, Tensor scale, "
    "Tensor gate_weight, Tensor? per_expert_scale, float eps, SymInt topk) -> Tensor",
    "claimed_routing": "vllm_gemma4_router::claimed_routing(Tensor gating_output, SymInt topk, "
    "Tensor? per_expert_scale) -> (Tensor, Tensor)",
    "gate_tier": "vllm_gemma4_router::gate_tier(Tensor x, str layer_name, SymInt out_features) "
    "-> Tensor",
}
#: Environment variables the package reads (vLLM's own, read through vLLM, are not listed).
ENV_VARS = {
    "VLLM_GEMMA4_FUSED_PDL": "vllm_gemma4_router/fused_router",
    "VLLM_MOE_ROUTING_SIMULATION_STRATEGY": "vllm_gemma4_router/integration/gemma4_layouts.py",
    "TRITON_INTERPRET": "vllm_gemma4_router/routing/launcher.py",
}
V = vllm_gemma4_router.__version__
#: The log lines users and CI grep for, exactly as written.
LOG_LINES = [
    (
        log_contract.install_line("router_method"),
        f"vllm-gemma4-router {V}: Gemma4 MoE routing -> gemma4_routing op (router_method)",
    ),
    (
        log_contract.refused_line("m", "why"),
        f"vllm-gemma4-router {V}: refused Gemma4 routing in m: why; "
        "leaving vLLM's routing unchanged",
    ),
    (
        log_contract.nothing_patched_line("why"),
        f"vllm-gemma4-router {V}: nothing patched: why",
    ),
    (
        log_contract.dispatch_line(30, "forward_cuda", "cuda", True),
        "gemma4_routing: 30 layers dispatch to forward_cuda (platform cuda, torch.compile)",
    ),
    (
        log_contract.first_call_line("forward_cuda", "cuda", 1, 128, 8),
        "gemma4_routing: first call ran forward_cuda (platform cuda, 1 tokens, 128 experts, top-8)",
    ),
    (
        log_contract.fused_router_line(30, 30, True, asked=True),
        "gemma4_fused_router: 30 of 30 routers fused (custom_ops on, as asked)",
    ),
    (
        log_contract.fused_router_loses_line("cuda-sm90", "0.26.0", "r.md"),
        "gemma4_fused_router: +gemma4_fused_router is on as asked, but on cuda-sm90 with "
        "vLLM 0.26.0 it measured slower than the router it replaces (r.md)",
    ),
    (
        log_contract.gate_tier_line(30, 30, 30, True),
        "gemma4_gate_tier: 30 of 30 gates pick their GEMM tier per call "
        "(custom_ops on, by default; 30 with a token-count tier here)",
    ),
    (
        log_contract.handover_claimed_line(1, 128, 8, True),
        "gemma4_fused_router: first hand-over claimed (1 tokens, 128 experts, top-8, "
        "compiled graph)",
    ),
]


def test_entry_points_and_scripts():
    # The installed metadata: what vLLM's plugin loader and the shell see.
    found: dict[str, dict[str, str]] = {}
    for ep in metadata.distribution("vllm-gemma4-router").entry_points:
        found.setdefault(ep.group, {})[ep.name] = ep.value
    assert found.pop("console_scripts") == SCRIPTS
    assert found == ENTRY_POINTS
    for target in [*ENTRY_POINTS["vllm.general_plugins"].values(), *SCRIPTS.values()]:
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr))


def test_package_face():
    assert set(vllm_gemma4_router.__all__) == PUBLIC_NAMES
    for name in PUBLIC_NAMES:
        assert getattr(vllm_gemma4_router, name) is not None
    assert re.fullmatch(r"\d+\.\d+\.\d+", vllm_gemma4_router.__version__)


def test_torch_library_ops_and_schemas():
    importlib.import_module("vllm_gemma4_router.routing.torch_library")
    importlib.import_module("vllm_gemma4_router.fused_router.torch_library")
    importlib.import_module("vllm_gemma4_router.fused_router.handover")
    importlib.import_module("vllm_gemma4_router.integration.gate_tier")
    for name, schema in TORCH_OPS.items():
        assert str(getattr(torch.ops.vllm_gemma4_router, name).default._schema) == schema


def test_custom_op_names():
    pytest.importorskip("vllm", reason="the CustomOps register into vLLM's registry")
    from vllm.model_executor import custom_op

    ops = importlib.import_module("vllm_gemma4_router.integration.custom_ops")
    registry = getattr(custom_op, "op_registry", None) or custom_op.CustomOp.op_registry
    for name, qualname in CUSTOM_OPS.items():
        cls = getattr(ops, qualname.rsplit(".", 1)[1])
        assert registry[name] is cls


def test_environment_variables_are_read_where_documented():
    for var, where in ENV_VARS.items():
        path = REPO / where
        files = path.rglob("*.py") if path.is_dir() else [path]
        assert any(var in f.read_text() for f in files), (var, where)
    design = (REPO / "docs" / "design.md").read_text()
    for var in ENV_VARS:
        assert var in design, var


@pytest.mark.parametrize("written, expected", LOG_LINES)
def test_log_lines(written, expected):
    assert written == expected
    assert log_contract.parse_log(written) is not None
