"""The fused router split by token count: its own kernels where the policy row says they
win, vLLM's gate (its own tier) and the routing chain elsewhere (``fused_or_gate``).

vLLM 0.32's real ``Gemma4Router`` on the CPU, patched by the plugin in this process and
linked as its decoder layer would link it, under a policy row that splits the counts
(own kernels at T = 2-3 and T >= 9). On the CPU the fused op runs the torch chain;
the gate's forward is vLLM's CPU linear method.
"""

from __future__ import annotations

import sys

import pytest
import torch
from oracle import assert_matches_oracle
from test_plugin import REPO
from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config
from vllm.config.compilation import CompilationMode
from vllm.forward_context import set_forward_context

from vllm_gemma4_router.fused_router import handover
from vllm_gemma4_router.fused_router.reference import gemma4_fused_router_reference
from vllm_gemma4_router.integration import fused_or_gate, gemma4_layouts
from vllm_gemma4_router.integration import op_policy as policy
from vllm_gemma4_router.integration.custom_ops import FUSED_ROUTER_OP_NAME
from vllm_gemma4_router.integration.fused_or_gate import (
    REGISTERED_NAME_SUFFIX,
    fused_router_or_gate,
    takes_own_kernel,
)

OWN_TOKENS = ((2, 3), (9, None))
HIDDEN, EXPERTS, TOPK = 32, 8, 2


def test_token_ranges_are_inclusive_and_the_last_may_be_unbounded():
    taken = [t for t in range(1, 40) if takes_own_kernel(t, OWN_TOKENS)]
    assert taken == [2, 3, *range(9, 40)]
    assert takes_own_kernel(10**6, OWN_TOKENS)
    assert not any(takes_own_kernel(t, ((17, 64),)) for t in (1, 16, 65, 16384))
    assert not takes_own_kernel(1, ())


@pytest.fixture
def split_policy(monkeypatch):
    """A CPU row that splits the token counts as ``OWN_TOKENS``."""
    row = policy.PolicyRow("cpu", (0, 0, 0), (9, 0, 0), "within_noise", False, "x.md", OWN_TOKENS)
    monkeypatch.setitem(policy._POLICIES, policy.FUSED_ROUTER_TABLE, (row,))


@pytest.fixture
def real_router(gen, monkeypatch):
    """vLLM 0.32's Gemma4Router, fused (``+gemma4_fused_router``) and linked; its config."""
    return _real_router(gen, monkeypatch, tier=True)


def _real_router(gen, monkeypatch, *, tier: bool):
    import vllm.model_executor.layers.linear as linear
    import vllm.model_executor.parameter as parameter

    for module in (linear, parameter):  # one rank of one, no distributed group
        monkeypatch.setattr(module, "get_tensor_model_parallel_rank", lambda: 0)
        monkeypatch.setattr(module, "get_tensor_model_parallel_world_size", lambda: 1)
    sys.path.insert(0, str(REPO / "tests" / "scripts"))
    from route_real_layer import tiny_gemma4_config
    from vllm.model_executor.models import gemma4

    from vllm_gemma4_router.plugin import register

    register()
    config = tiny_gemma4_config(num_experts=EXPERTS, topk=TOPK, hidden_size=HIDDEN)
    vllm_config = VllmConfig(
        compilation_config=CompilationConfig(
            mode=CompilationMode.NONE, custom_ops=[f"+{FUSED_ROUTER_OP_NAME}"]
        )
    )
    with set_current_vllm_config(vllm_config):
        router = gemma4.Gemma4Router(config, prefix="model.layers.0.router")
    with torch.no_grad():
        router.proj.weight.copy_(torch.randn(router.proj.weight.shape, generator=gen))
        router.scale.copy_(torch.rand(router.scale.shape, generator=gen) + 0.5)
        router.per_expert_scale.copy_(torch.rand(EXPERTS, generator=gen) + 0.5)
    gate = router.proj.weight.detach().clone()  # vLLM's CPU post-load may empty proj.weight
    # The split was measured with the gate's low-latency tier: a gate without one (as on
    # the CPU) keeps the fused router's own kernels. Eligible here; the tier itself only
    # takes bf16 input, so the CPU's fp32 calls still run vLLM's linear method.
    router.proj.allow_ll_bf16_gemm = tier
    monkeypatch.setattr(gemma4_layouts, "_warm_token_count_tiers", lambda gate: None)
    with set_current_vllm_config(vllm_config):
        gemma4_layouts._link_fused_router(router, router, config)
        router.proj.quant_method.process_weights_after_loading(router.proj)
    handover.forget_all()
    return router, gate, vllm_config


def _vllms_forward(router, x):
    # The plugin's patch wraps vLLM's own Gemma4Router.forward (functools.wraps).
    return type(router).forward.__wrapped__(router, x)


def test_the_split_router_takes_its_own_kernels_only_at_the_measured_counts(
    split_policy, real_router, gen
):
    router, gate, vllm_config = real_router
    plan = getattr(router, gemma4_layouts.FUSED_PLAN_ATTRIBUTE)
    assert plan.gate_name == f"model.layers.0.router.proj{REGISTERED_NAME_SUFFIX}"
    context = vllm_config.compilation_config.static_forward_context
    assert context[plan.gate_name] is router.proj  # vLLM's gate itself, unchanged
    assert type(router.proj).__name__ == "GateLinear"
    from vllm.model_executor.models import gemma4

    model = torch.nn.ModuleList([router])
    assert gemma4_layouts._fused_router_split_summary(gemma4, model) == (
        "gemma4_fused_router: 1 of 1 fused router runs its own kernels at T = 2-3, 9+ "
        "and vLLM's gate (its own tier) at other token counts"
    )
    eps = router.norm.variance_epsilon
    counts_before = dict(handover.claim_counts)
    for num_tokens in (1, 2, 3, 5, 8, 9, 17):
        x = torch.randn(num_tokens, HIDDEN, generator=gen)
        with torch.no_grad(), set_forward_context(None, vllm_config):
            logits = router(x)
            vllm_logits = _vllms_forward(router, x)
        # What the layer's routing function asks first.
        claimed = handover.claim_fused_routing(logits, TOPK, router.per_expert_scale)
        if takes_own_kernel(num_tokens, OWN_TOKENS):
            # The fused op (the CPU's torch chain), its routing pending for the claim.
            want, want_weights, want_ids = gemma4_fused_router_reference(
                x, router.scale, gate, router.per_expert_scale, eps, TOPK
            )
            torch.testing.assert_close(logits, want, rtol=0, atol=0)
            assert claimed is not None, num_tokens
            torch.testing.assert_close(claimed[0], want_weights, rtol=0, atol=0)
            assert torch.equal(claimed[1], want_ids)
            assert_matches_oracle(*claimed, logits, TOPK, router.per_expert_scale)
            torch.testing.assert_close(logits, vllm_logits, rtol=1e-5, atol=1e-5)
        else:
            # vLLM's gate on the operand vLLM computes: its forward's logits, bit for bit;
            # nothing to claim, so the routing function routes them.
            assert torch.equal(logits, vllm_logits), num_tokens
            assert claimed is None
    assert handover._PRODUCED == {} and handover._UNROUTED == {}
    counts = {k: handover.claim_counts[k] - counts_before.get(k, 0) for k in handover.claim_counts}
    # The gate's logits are routed by the routing function, as expected: not a miss.
    assert (counts.get("claimed"), counts.get("unrouted"), counts.get("missed", 0)) == (4, 3, 0)


def test_a_compiled_split_router_chooses_per_call(split_policy, real_router, gen):
    router, _, vllm_config = real_router
    compiled = torch.compile(router, dynamic=True, fullgraph=True)
    with torch.no_grad(), set_forward_context(None, vllm_config):
        for num_tokens in (16, 2, 5, 3, 1, 11):  # traced at 16, as vLLM traces at its largest
            x = torch.randn(num_tokens, HIDDEN, generator=gen)
            logits = compiled(x)
            own = handover.claim_routing(logits, TOPK) is not None
            assert own is takes_own_kernel(num_tokens, OWN_TOKENS), num_tokens
            torch.testing.assert_close(logits, _vllms_forward(router, x), rtol=1e-5, atol=1e-5)


def test_without_a_split_row_the_router_keeps_its_own_kernels_at_every_count(real_router):
    router, _, vllm_config = real_router
    plan = getattr(router, gemma4_layouts.FUSED_PLAN_ATTRIBUTE)
    assert plan.gate_name is None  # the packaged CPU row does not split
    from vllm.model_executor.models import gemma4

    assert gemma4_layouts._fused_router_split_summary(gemma4, torch.nn.ModuleList([router])) is None
    registered = vllm_config.compilation_config.static_forward_context
    assert not any(name.endswith(REGISTERED_NAME_SUFFIX) for name in registered)


def test_a_gate_without_its_low_latency_tier_keeps_the_own_kernels(split_policy, gen, monkeypatch):
    router, _, vllm_config = _real_router(gen, monkeypatch, tier=False)
    assert getattr(router, gemma4_layouts.FUSED_PLAN_ATTRIBUTE).gate_name is None
    registered = vllm_config.compilation_config.static_forward_context
    assert not any(name.endswith(REGISTERED_NAME_SUFFIX) for name in registered)


def test_a_release_whose_router_computes_another_operand_does_not_split():
    from vllm.model_executor.models import gemma4

    assert gemma4_layouts.router_operand_known(gemma4.Gemma4Router.forward.__wrapped__)

    def forward(self, x):
        x = self.norm(x)
        x = x * self.scale.to(x.dtype)  # no root_size
        router_logits, _ = self.proj(x)
        return router_logits

    assert not gemma4_layouts.router_operand_known(forward)
    assert not gemma4_layouts.router_operand_known(len)  # no source


def test_the_op_refuses_what_it_cannot_take(split_policy, real_router, gen):
    router, gate, vllm_config = real_router
    plan = getattr(router, gemma4_layouts.FUSED_PLAN_ATTRIBUTE)
    x = torch.randn(5, HIDDEN, generator=gen)
    args = (router.scale, gate, router.per_expert_scale, 1e-6, TOPK)
    with set_forward_context(None, vllm_config):
        with pytest.raises(ValueError, match="x_gate must match hidden_states"):
            fused_router_or_gate(x, x[:, :4], *args, plan.gate_name)
        with pytest.raises(ValueError, match="x_gate must match hidden_states"):
            torch.ops.vllm_gemma4_router.fused_router_or_gate(
                x, x.double(), *args, plan.gate_name
            )  # the op itself checks too, for callers of torch.ops
        with pytest.raises(KeyError, match="nowhere"):
            fused_router_or_gate(x, x, *args, "nowhere")
    context = vllm_config.compilation_config.static_forward_context
    with pytest.raises(ValueError, match="Duplicate layer name"):
        fused_or_gate.register_gate(router.proj, context, OWN_TOKENS)
