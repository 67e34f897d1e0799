"""The opt-in fused router in vLLM: the CustomOp's switch, the claim, real decoder layers.

Real layers come from one vLLM release per Gemma4 layout family, each in a
fresh interpreter (tests/scripts/fused_real_layer.py), exactly as
test_plugin.py routes them: one layer built with ``+gemma4_fused_router``, one
with the default, the same random weights.
"""

import copy

import numpy as np
import pytest
import torch
from oracle import assert_matches_oracle, oracle_fp64
from test_plugin import REPO, VLLM_FAMILY_RELEASES, _release_env, _run
from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config
from vllm.config.compilation import CompilationMode

from vllm_gemma4_router.fused_router import handover
from vllm_gemma4_router.fused_router.handover import logits_view
from vllm_gemma4_router.fused_router.reference import gemma4_fused_router_reference
from vllm_gemma4_router.integration.custom_ops import FUSED_ROUTER_OP_NAME, Gemma4FusedRouter

SCRIPT = REPO / "tests" / "scripts" / "fused_real_layer.py"


def _build_op(custom_ops):
    config = VllmConfig(
        compilation_config=CompilationConfig(mode=CompilationMode.NONE, custom_ops=custom_ops)
    )
    with set_current_vllm_config(config):
        return Gemma4FusedRouter()


@pytest.mark.parametrize(
    ("custom_ops", "active"),
    [
        ([], False),
        (["all"], False),
        (["none"], False),
        ([f"+{FUSED_ROUTER_OP_NAME}"], True),
        (["none", f"+{FUSED_ROUTER_OP_NAME}"], True),
        (["all", f"-{FUSED_ROUTER_OP_NAME}"], False),
        (["+gemma4_routing"], False),
    ],
)
def test_fused_router_is_opt_in(custom_ops, active):
    assert _build_op(custom_ops).active is active


def test_fused_router_rejects_plus_and_minus_together():
    with pytest.raises(ValueError, match="gemma4_fused_router"):  # vLLM 0.32's own check
        _build_op([f"+{FUSED_ROUTER_OP_NAME}", f"-{FUSED_ROUTER_OP_NAME}"])
    # Ours, for releases without it (or a config changed after its validation).
    config = VllmConfig(
        compilation_config=CompilationConfig(
            mode=CompilationMode.NONE, custom_ops=[f"+{FUSED_ROUTER_OP_NAME}"]
        )
    )
    config.compilation_config.custom_ops.append(f"-{FUSED_ROUTER_OP_NAME}")
    with (
        set_current_vllm_config(config),
        pytest.raises(ValueError, match="both enables and disables gemma4_fused_router"),
    ):
        Gemma4FusedRouter()


def _router_inputs(gen, tokens=11, hidden=48, experts=12):
    x = torch.randn(tokens, hidden, generator=gen)
    scale = torch.rand(hidden, generator=gen) + 0.5
    weight = torch.randn(experts, hidden, generator=gen)
    per_expert_scale = torch.rand(experts, generator=gen) + 0.5
    return x, scale, weight, per_expert_scale


def test_forward_returns_the_torch_ops_packed_buffer(gen):
    op = _build_op([f"+{FUSED_ROUTER_OP_NAME}"])
    x, scale, weight, pes = _router_inputs(gen)
    topk = 3
    packed = op(x, scale, weight, pes, 1e-6, topk)
    assert packed.dtype == torch.float32 and packed.dim() == 1
    logits = logits_view(packed, x.shape[0], weight.shape[0])
    ref_logits, _, _ = gemma4_fused_router_reference(x, scale, weight, pes, 1e-6, topk)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)  # CPU runs that chain
    claimed = handover.claim_routing(logits, topk)
    assert claimed is not None
    assert_matches_oracle(*claimed, logits, topk, pes)


def _fused_then_route(topk, change):
    # topk a constant of the traced function, as a router's plan holds it.
    def fused_then_route(x, scale, weight, pes):
        packed = torch.ops.vllm_gemma4_router.fused_router(x, scale, weight, pes, 1e-6, topk)
        logits = logits_view(packed, x.shape[0], weight.shape[0])
        if change == "clone":
            logits = logits.clone()
        elif change == "scale":
            logits = logits * 2.0
        weights, ids = handover.claim_fused_routing(logits, topk, pes)
        return logits, weights, ids

    return fused_then_route


@pytest.mark.parametrize(("change", "claimed"), [(None, True), ("clone", True), ("scale", False)])
def test_claim_inside_a_compiled_graph(change, claimed, gen):
    # What vLLM's CPU compile does: Dynamo traces router and routing function
    # into one graph; the claim is the claimed_routing op, run by Inductor.
    # Inductor drops a clone of an unmutated tensor, so cloned logits are the
    # op's own buffer and claimed (same values); changed ones are routed.
    handover.forget_all()
    topk = 4
    # Dynamic in the token count only, as vLLM marks its inputs.
    compiled = torch.compile(_fused_then_route(topk, change), fullgraph=True)
    x, scale, weight, pes = _router_inputs(gen)
    before = dict(handover.claim_counts)
    for tokens in (x.shape[0], 5):
        tokens_x = x[:tokens].clone()
        torch._dynamo.mark_dynamic(tokens_x, 0)
        logits, weights, ids = compiled(tokens_x, scale, weight, pes)
        assert_matches_oracle(weights, ids, logits, topk, pes)
    got = {k: handover.claim_counts[k] - before.get(k, 0) for k in ("claimed", "missed")}
    assert got == ({"claimed": 2, "missed": 0} if claimed else {"claimed": 0, "missed": 2})


def test_eager_claim_is_taken_once_and_copies_fall_back(gen):
    x, scale, weight, pes = _router_inputs(gen)
    topk = 2
    packed = torch.ops.vllm_gemma4_router.fused_router(x, scale, weight, pes, 1e-6, topk)
    logits = logits_view(packed, x.shape[0], weight.shape[0])
    assert handover.claim_fused_routing(logits.clone(), topk, pes) is None
    weights, ids = handover.claim_fused_routing(logits, topk, pes)
    ref_w, ref_ids = oracle_fp64(logits, topk, pes)
    assert np.array_equal(ids.long().numpy(), ref_ids)
    np.testing.assert_allclose(weights.double().numpy(), ref_w, rtol=2e-6, atol=1e-7)
    assert handover.claim_fused_routing(logits, topk, pes) is None  # claimed already


NO_CALLS = dict.fromkeys(["fused", "norm", "routing", "fused_off", "norm_off", "routing_off"], 0)


def _calls(**counts):
    return {**NO_CALLS, **counts}


@pytest.mark.parametrize(
    ("family", "release", "source", "layout", "handover", "compiled_ops"),
    VLLM_FAMILY_RELEASES,
    ids=[f"{row[0]}:{row[1]}" for row in VLLM_FAMILY_RELEASES],
)
def test_real_decoder_layer_routes_through_the_fused_router(
    family, release, source, layout, handover, compiled_ops
):
    r, _ = _run(SCRIPT, _release_env(source))
    assert (r["vllm"], r["layout"], r["compiled_ops"]) == (release, layout, compiled_ops), family
    assert r["plan"] == {"on": "_FusedPlan(eps=1e-06, topk=4, gate_name=None)", "off": "None"}
    assert r["feeds"] == [True, False]
    # Option on: the fused op, not vLLM's norm/GEMM chain; its logits pending.
    assert r["router_on_calls"] == _calls(fused=1) and r["pending_after_router"] == 1
    assert r["logits_on"] == [[9, 16], "torch.float32"] and r["logits_on_close_to_fp64"]
    # Option off (default): vLLM's own forward.
    assert r["router_off_calls"] == _calls(norm_off=1) and r["logits_off_close_to_fp64"]
    # Unsupported call (3-D input) with the option on: vLLM's own forward.
    assert r["router_3d"] == {"calls": _calls(norm=1), "close": True}
    # The routing function claims: no routing op call, nothing left pending.
    assert r["claimed_route"] == {
        "calls": NO_CALLS,
        "claims": {"claimed": 1, "missed": 0},
        "pending": 0,
        "matches_oracle": True,
    }
    # Copied logits: routed from them by the routing op.
    assert r["cloned_route"] == {
        "calls": _calls(routing=1),
        "claims": {"claimed": 0, "missed": 1},
        "matches_oracle": True,
    }
    # Option off: the routing op, no claim attempted.
    assert r["off_route"] == {
        "calls": _calls(routing_off=1),
        "claims": {"claimed": 0, "missed": 0},
        "matches_oracle": True,
    }
    if compiled_ops == "loaded":
        # vLLM's CPU post-load processing emptied router.proj.weight (prepacked
        # gate); the fused op used the weight as loaded.
        assert r["gate_weight_numel_after_load"] == 0
        moe = r["moe_block"]
        assert moe["logits_on_close_to_fp64"]
        assert moe["calls"] == _calls(fused=1, norm_off=1, routing_off=1)
        assert moe["id_rows_differing_not_near_tie"] == []
        assert moe["rows_compared"] >= 7  # at most 2 of 9 rows near a tie
        assert moe["max_abs_diff_over_max"] < 1e-5
    else:
        assert r["gate_weight_numel_after_load"] == 16 * 64


class _QuantizedGate:
    """Stands in for a quantized linear method (anything but UnquantizedLinearMethod)."""


@pytest.mark.parametrize(
    ("custom_ops", "change", "fused"),
    [
        ([f"+{FUSED_ROUTER_OP_NAME}"], None, True),
        ([], None, False),
        ([f"+{FUSED_ROUTER_OP_NAME}"], "quantized", False),
        ([f"+{FUSED_ROUTER_OP_NAME}"], "bias", False),
        ([f"+{FUSED_ROUTER_OP_NAME}"], "top-17", False),  # beyond the kernel's MAX_FUSED_TOPK
    ],
)
def test_real_router_fuses_only_an_unquantized_gate_without_bias(
    custom_ops, change, fused, gen, monkeypatch
):
    # vLLM 0.32's Gemma4Router, patched by the plugin in this process, linked
    # as its decoder layer would link it (router_method: it owns per_expert_scale).
    # Its replicated gate asks for the TP rank/size: one process, no group.
    import sys

    import vllm.model_executor.layers.linear as linear
    import vllm.model_executor.parameter as parameter

    for module in (linear, parameter):
        monkeypatch.setattr(module, "get_tensor_model_parallel_rank", lambda: 0)
        monkeypatch.setattr(module, "get_tensor_model_parallel_world_size", lambda: 1)

    sys.path.insert(0, str(REPO / "tests" / "scripts"))
    from route_real_layer import tiny_gemma4_config
    from vllm.model_executor.models import gemma4

    from vllm_gemma4_router.integration import gemma4_layouts
    from vllm_gemma4_router.plugin import register

    register()
    config = tiny_gemma4_config(num_experts=8, topk=2, hidden_size=32)
    vllm_config = VllmConfig(
        compilation_config=CompilationConfig(mode=CompilationMode.NONE, custom_ops=custom_ops)
    )
    with set_current_vllm_config(vllm_config):
        router = gemma4.Gemma4Router(config)
    with torch.no_grad():
        router.proj.weight.copy_(torch.randn(router.proj.weight.shape, generator=gen))
        router.scale.copy_(torch.rand(router.scale.shape, generator=gen) + 0.5)
    gate = router.proj.weight.detach().clone()  # vLLM's CPU post-load may empty proj.weight
    original_method = router.proj.quant_method
    if change == "quantized":
        router.proj.quant_method = _QuantizedGate()
    elif change == "bias":
        router.proj.bias = torch.nn.Parameter(torch.zeros(8))
    link_config = config
    if change == "top-17":
        link_config = copy.copy(config)
        link_config.num_experts, link_config.top_k_experts = 32, 17
    with set_current_vllm_config(vllm_config):
        gemma4_layouts._link_fused_router(router, router, link_config)
    assert (getattr(router, gemma4_layouts.FUSED_PLAN_ATTRIBUTE, None) is not None) is fused
    assert getattr(router, gemma4_layouts.FUSED_FEEDS_ATTRIBUTE, False) is fused
    assert "gemma4_fused_router" not in dict(router.named_buffers())  # nothing registered
    router.proj.quant_method = original_method  # vLLM's forward needs a real method
    with set_current_vllm_config(vllm_config):
        original_method.process_weights_after_loading(router.proj)
    x = torch.randn(6, 32, generator=gen)
    calls = []
    router.norm.register_forward_hook(lambda *args: calls.append("norm"))
    router.gemma4_fused_router.register_forward_hook(lambda *args: calls.append("fused"))
    with torch.no_grad():
        logits = router(x)
    assert calls == (["fused"] if fused else ["norm"])
    if fused:  # the op's own logits (the CPU runs the reference chain)
        want, _, _ = gemma4_fused_router_reference(
            x, router.scale, gate, router.per_expert_scale, router.norm.variance_epsilon, 2
        )
        torch.testing.assert_close(logits, want, rtol=0, atol=0)
    h = x.double()
    rms = torch.rsqrt((h * h).mean(-1, keepdim=True) + router.norm.variance_epsilon)
    ref = (h * router.scale.double()) @ gate.double().t() * rms * 32**-0.5
    torch.testing.assert_close(logits.double(), ref, rtol=1e-5, atol=1e-6)
