"""``gemma4_gate_tier`` on vLLM's real ``GateLinear`` (CPU), piece by piece.

The adapter gives a Gemma4 gate the op only where the op is on (``+`` wins, ``-``
wins, else the gate-tier policy: off until measured) and the gate has a
token-count tier in this release on this GPU; never for a fused router. Linked,
the gate is still a ``GateLinear``, registered in the static forward context, and
its output is vLLM's forward's at every token count, tier chosen per call, also
after a trace at a large M. Its kernels are warmed once per shape; a failed
warm-up is one warning. The plugin's state enters vLLM's compile-cache key.

Tier 1 (``ll_bf16_gemm``, Hopper/Blackwell) is forced eligible and replaced by a
counting stand-in that computes the GEMM in fp32; the fp64 reference is ``x @ W.T``.
"""

from __future__ import annotations

import types

import pytest
import torch
from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config
from vllm.config.compilation import CompilationMode
from vllm.forward_context import set_forward_context
from vllm.model_executor.kernels.linear.cute_dsl import ll_bf16
from vllm.model_executor.layers.fused_moe.router.gate_linear import GateLinear

from vllm_gemma4_router import log_contract
from vllm_gemma4_router.integration import compile_cache_key, gemma4_layouts
from vllm_gemma4_router.integration.custom_ops import Gemma4GateTier
from vllm_gemma4_router.integration.gate_tier import (
    REGISTERED_NAME_SUFFIX,
    RunTimeTierGate,
    gate_tier,
)

HIDDEN, EXPERTS = 64, 16
PREFIX = "model.layers.0.router.proj"


def _config(*custom_ops: str) -> VllmConfig:
    return VllmConfig(
        compilation_config=CompilationConfig(mode=CompilationMode.NONE, custom_ops=list(custom_ops))
    )


@pytest.fixture(autouse=True)
def one_rank(monkeypatch):
    """Build linear layers without vLLM's distributed state (one rank of one)."""
    from vllm.model_executor import parameter
    from vllm.model_executor.layers import linear

    for module in (linear, parameter):
        monkeypatch.setattr(module, "get_tensor_model_parallel_rank", lambda: 0)
        monkeypatch.setattr(module, "get_tensor_model_parallel_world_size", lambda: 1)


@pytest.fixture
def tier_one(monkeypatch):
    """Tier 1 replaced by a counting fp32 GEMM; its warm-up recorded; warmed shapes reset."""
    calls: list[int] = []
    warmups: list[tuple] = []
    state = types.SimpleNamespace(calls=calls, warmups=warmups, weight=None)

    def counting(x, weight, output_dtype=torch.float32):
        # vLLM's CPU linear method prepacks the gate's weight after loading (an empty
        # placeholder is left): the stand-in uses the weight the test loaded.
        calls.append(x.shape[0])
        return x.float() @ state.weight.float().T

    class Kernel:
        def warmup(self, *, shapes, m_values):
            warmups.append((tuple(shapes), tuple(m_values)))

    monkeypatch.setattr(ll_bf16, "ll_bf16_gemm", counting)
    monkeypatch.setattr(ll_bf16, "ll_bf16_gemm_kernel", Kernel())
    monkeypatch.setattr(gemma4_layouts, "_warmed_gate_shapes", set())
    return state


def _router(config: VllmConfig, gen, tier_one, *, tier: bool = True, prefix: str = PREFIX):
    """A Gemma4 router as the adapter sees it: ``proj``, vLLM's GateLinear (bf16, fp32 out),
    loaded with a random weight (kept as ``tier_one.weight``) and processed as vLLM does."""
    with set_current_vllm_config(config):
        gate = GateLinear(
            HIDDEN,
            EXPERTS,
            bias=False,
            out_dtype=torch.float32,
            params_dtype=torch.bfloat16,
            prefix=prefix,
        )
    weight = torch.randn(EXPERTS, HIDDEN, generator=gen).to(torch.bfloat16)
    with torch.no_grad():
        gate.weight.copy_(weight)
    with set_current_vllm_config(config):
        gate.quant_method.process_weights_after_loading(gate)
    tier_one.weight = weight
    gate.allow_ll_bf16_gemm = tier
    return types.SimpleNamespace(proj=gate, weight=weight)


def _link(config: VllmConfig, router) -> None:
    with set_current_vllm_config(config):
        gemma4_layouts._link_gate_tier(router)


def _reference(router, x: torch.Tensor) -> torch.Tensor:
    return x.double() @ router.weight.double().T


def _forward(config: VllmConfig, gate, x: torch.Tensor) -> torch.Tensor:
    with set_forward_context(None, config):
        logits, bias = gate(x)
    assert bias is None
    return logits


def test_linked_gate_runs_vllms_forward_with_the_tier_of_each_call(gen, tier_one):
    config = _config("+gemma4_gate_tier")
    router = _router(config, gen, tier_one)
    _link(config, router)
    gate = router.proj
    assert isinstance(gate, GateLinear) and isinstance(gate, RunTimeTierGate)
    name = PREFIX + REGISTERED_NAME_SUFFIX
    assert config.compilation_config.static_forward_context[name] is gate
    for num_tokens in (1, 5, 16, 17, 64):
        x = torch.randn(num_tokens, HIDDEN, generator=gen).to(torch.bfloat16)
        logits = _forward(config, gate, x)
        assert logits.dtype == torch.float32 and logits.shape == (num_tokens, EXPERTS)
        torch.testing.assert_close(logits.double(), _reference(router, x), rtol=2e-2, atol=2e-2)
    assert tier_one.calls == [1, 5, 16]  # vLLM's M <= 16 branch, taken per call


def test_a_trace_at_a_large_m_does_not_freeze_the_tier(gen, tier_one):
    """Traced once at M = 512 (dynamic, fullgraph), later calls at M <= 16 still reach tier 1."""
    config = _config("+gemma4_gate_tier")
    router = _router(config, gen, tier_one)
    _link(config, router)
    gate = router.proj
    compiled = torch.compile(
        lambda x: gate(x)[0], backend="aot_eager", fullgraph=True, dynamic=True
    )
    torch._dynamo.reset()
    try:
        for num_tokens in (512, 2, 9, 300):
            x = torch.randn(num_tokens, HIDDEN, generator=gen).to(torch.bfloat16)
            with set_forward_context(None, config):
                logits = compiled(x)
            torch.testing.assert_close(logits.double(), _reference(router, x), rtol=2e-2, atol=2e-2)
    finally:
        torch._dynamo.reset()
    assert tier_one.calls == [2, 9]


def test_strided_input_reaches_the_gate_contiguous(gen, tier_one):
    config = _config("+gemma4_gate_tier")
    router = _router(config, gen, tier_one)
    _link(config, router)
    wide = torch.randn(4, 2 * HIDDEN, generator=gen).to(torch.bfloat16)
    x = wide[:, ::2]
    assert not x.is_contiguous()
    logits = _forward(config, router.proj, x)
    torch.testing.assert_close(logits.double(), _reference(router, x), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    "custom_ops, linked",
    [((), False), (("-gemma4_gate_tier",), False), (("+gemma4_gate_tier",), True)],
    ids=["policy-default-off", "minus", "plus"],
)
def test_the_users_choice_wins_and_the_default_is_the_policys(gen, tier_one, custom_ops, linked):
    config = _config(*custom_ops)
    router = _router(config, gen, tier_one)
    _link(config, router)
    assert isinstance(router.proj, RunTimeTierGate) is linked
    assert (
        PREFIX + REGISTERED_NAME_SUFFIX in config.compilation_config.static_forward_context
    ) is (linked)


def test_plus_and_minus_together_are_refused(gen, tier_one):
    """vLLM 0.32 refuses this in its config already; older releases do not."""
    config = _config("+gemma4_gate_tier")
    config.compilation_config.custom_ops.append("-gemma4_gate_tier")
    router = _router(config, gen, tier_one)
    with pytest.raises(ValueError, match="both enables and disables gemma4_gate_tier"):
        _link(config, router)


def test_a_gate_without_a_token_count_tier_keeps_vllms_forward(gen, tier_one):
    """No CuTe DSL, no Hopper/Blackwell, or a release before 0.26: vLLM's gate as it is."""
    config = _config("+gemma4_gate_tier")
    router = _router(config, gen, tier_one, tier=False)
    _link(config, router)
    assert type(router.proj) is GateLinear and not tier_one.warmups
    assert config.compilation_config.static_forward_context == {}


def test_a_fused_router_keeps_its_gate(gen, tier_one):
    config = _config("+gemma4_gate_tier")
    router = _router(config, gen, tier_one)
    setattr(router, gemma4_layouts.FUSED_PLAN_ATTRIBUTE, object())
    _link(config, router)
    assert type(router.proj) is GateLinear


def test_two_gates_under_one_name_are_refused(gen, tier_one):
    config = _config("+gemma4_gate_tier")
    _link(config, _router(config, gen, tier_one))
    with pytest.raises(ValueError, match="Duplicate layer name"):
        _link(config, _router(config, gen, tier_one))


def test_kernels_warm_once_per_shape_before_any_call(gen, tier_one):
    config = _config("+gemma4_gate_tier")
    for layer in range(3):
        _link(config, _router(config, gen, tier_one, prefix=f"model.layers.{layer}.router.proj"))
    assert tier_one.warmups == [(((HIDDEN, EXPERTS),), tuple(range(1, 17)))]
    assert tier_one.calls == []


def test_a_failed_warmup_is_one_warning_and_the_gate_still_linked(
    gen, tier_one, monkeypatch, plugin_records
):
    class Broken:
        def warmup(self, *, shapes, m_values):
            raise RuntimeError("no sm_90 here")

    monkeypatch.setattr(ll_bf16, "ll_bf16_gemm_kernel", Broken())
    config = _config("+gemma4_gate_tier")
    routers = [_router(config, gen, tier_one, prefix=f"l{i}.proj") for i in range(2)]
    for router in routers:
        _link(config, router)
    expected = log_contract.gate_tier_warmup_failed_line(
        HIDDEN, EXPERTS, repr(RuntimeError("no sm_90 here"))
    )
    assert [r.getMessage() for r in plugin_records] == [expected]
    assert all(isinstance(r.proj, RunTimeTierGate) for r in routers)


def test_the_op_refuses_a_name_no_gate_holds(gen):
    config = _config("+gemma4_gate_tier")
    x = torch.randn(2, HIDDEN, generator=gen).to(torch.bfloat16)
    with set_forward_context(None, config), pytest.raises(KeyError, match="nowhere"):
        gate_tier(x, "nowhere", EXPERTS)


def test_the_customop_is_off_by_default_on_this_machine():
    with set_current_vllm_config(_config()):
        assert Gemma4GateTier().active is False
    with set_current_vllm_config(_config("+gemma4_gate_tier")):
        assert Gemma4GateTier().active is True


# --- vLLM's compile-cache key ---------------------------------------------------------


def test_the_plugins_state_enters_vllms_compile_cache_keys():
    from vllm.compilation.caching import aot_compile_hash_factors

    plain, keyed, tiered = _config(), _config(), _config("+gemma4_gate_tier")
    for config in (keyed, tiered):
        with set_current_vllm_config(config):
            assert compile_cache_key.key_compile_cache() is True
    entry = keyed.additional_config[compile_cache_key.CACHE_KEY_ENTRY]
    assert entry["gate_tier"] is False and entry["fused_router"] is False
    assert tiered.additional_config[compile_cache_key.CACHE_KEY_ENTRY]["gate_tier"] is True
    assert entry["sources"] == compile_cache_key.sources_digest()
    assert len(entry["sources"]) == 16 and int(entry["sources"], 16) >= 0
    hashes = {c.compute_hash() for c in (plain, keyed)}
    assert len(hashes) == 2
    assert aot_compile_hash_factors(plain) != aot_compile_hash_factors(keyed)


def test_a_non_dict_additional_config_is_one_warning(monkeypatch, plugin_records):
    monkeypatch.setattr(compile_cache_key, "_not_set_logged", False)
    config = types.SimpleNamespace(additional_config=types.SimpleNamespace())
    assert compile_cache_key.key_compile_cache(config) is False
    assert compile_cache_key.key_compile_cache(config) is False
    assert [r.getMessage() for r in plugin_records] == [
        log_contract.cache_key_not_set_line("SimpleNamespace")
    ]


# --- the summary line -----------------------------------------------------------------


def test_the_summary_line_round_trips_and_refuses_bad_counts():
    line = log_contract.gate_tier_line(3, 4, 30, False)
    assert line == (
        "gemma4_gate_tier: 3 of 30 gates pick their GEMM tier per call "
        "(custom_ops off, by default; 4 with a token-count tier here)"
    )
    [parsed] = log_contract.parse_log(f"(Worker pid=7) INFO x.py:1] {line}").gate_tiers
    assert (parsed.pid, parsed.tiered, parsed.eligible, parsed.gates, parsed.enabled) == (
        7,
        3,
        4,
        30,
        False,
    )
    assert parsed.asked is False
    asked = log_contract.gate_tier_line(4, 4, 30, True, asked=True)
    assert "(custom_ops on, as asked; 4 with" in asked
    assert log_contract.parse_log(asked).gate_tiers[0].asked is True
    # A line from before the plugin said who decided still parses, as "not said".
    old = asked.replace(", as asked", "")
    assert log_contract.parse_log(old).gate_tiers[0].asked is None
    assert "1 of 1 gate pick" in log_contract.gate_tier_line(1, 1, 1, True)
    for bad in ((2, 1, 3), (0, 4, 3), (-1, 0, 0)):
        with pytest.raises(ValueError, match="tiered <= eligible <= gates"):
            log_contract.gate_tier_line(*bad, True)
