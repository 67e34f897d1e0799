"""The split fused router on a GPU with the installed vLLM's real ``Gemma4Router``.

gemma-4-26B-A4B's router shapes (H = 2816, E = 128, K = 8, bf16) on CUDA, linked with
``+gemma4_fused_router`` under the packaged policy row of this platform and release
(vLLM 0.26.0 on Hopper: own kernels at T = 17-64) or, where that row
does not split, under one that does. At the gate's counts the logits are vLLM's
forward's bit for bit (``ll_bf16_gemm`` at T <= 16 where the gate has it); at the
router's own counts they are the one-launch build's on the gate's operand (the gate's
logits up to the fp32 summation order), and the routing in its buffer is claimed.
Eager and replayed from CUDA graphs.

Needs vLLM importable next to a CUDA torch (the device's runtime: ci/device_runtime/).
"""

from __future__ import annotations

import types

import pytest
import torch
from fused_oracle import assert_gate_contract
from oracle import assert_matches_oracle
from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config
from vllm.config.compilation import CompilationMode
from vllm.forward_context import set_forward_context

from vllm_gemma4_router.fused_router import handover
from vllm_gemma4_router.fused_router.launch_table import DECODE_PATH
from vllm_gemma4_router.fused_router.torch_library import fused_router_packed
from vllm_gemma4_router.integration import gemma4_layouts
from vllm_gemma4_router.integration import op_policy as policy
from vllm_gemma4_router.integration.custom_ops import (
    FUSED_ROUTER_OP_NAME,
    running_platform_family,
)
from vllm_gemma4_router.integration.fused_or_gate import takes_own_kernel

pytestmark = [pytest.mark.gpu, pytest.mark.vllm]

HIDDEN, EXPERTS, TOPK = 2816, 128, 8
SPLIT = ((17, 64), (16384, None))  # where the packaged row does not split


@pytest.fixture
def split_router(gen, monkeypatch):
    """vLLM's Gemma4Router on CUDA, linked fused and split; its VllmConfig and own tokens."""
    import vllm
    from vllm.model_executor import parameter
    from vllm.model_executor.layers import linear
    from vllm.model_executor.models import gemma4

    from vllm_gemma4_router.plugin import register

    for module in (linear, parameter):  # one rank of one, no distributed group
        monkeypatch.setattr(module, "get_tensor_model_parallel_rank", lambda: 0)
        monkeypatch.setattr(module, "get_tensor_model_parallel_world_size", lambda: 1)
    register()
    family = running_platform_family()
    own = policy.fused_router_own_tokens(family, vllm.__version__)
    if own is None:
        own = SPLIT
        row = policy.PolicyRow(family, (0, 0, 0), (9, 0, 0), "within_noise", False, "x.md", own)
        monkeypatch.setitem(policy._POLICIES, policy.FUSED_ROUTER_TABLE, (row,))
    config = types.SimpleNamespace(
        hidden_size=HIDDEN, rms_norm_eps=1e-6, num_experts=EXPERTS, top_k_experts=TOPK
    )
    vllm_config = VllmConfig(
        compilation_config=CompilationConfig(
            mode=CompilationMode.NONE, custom_ops=[f"+{FUSED_ROUTER_OP_NAME}"]
        )
    )
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with set_current_vllm_config(vllm_config), torch.device("cuda"):
            router = gemma4.Gemma4Router(config, prefix="model.layers.0.router")
    finally:
        torch.set_default_dtype(default_dtype)
    with torch.no_grad():
        router.proj.weight.copy_(torch.randn(EXPERTS, HIDDEN, generator=gen).to(torch.bfloat16))
        router.scale.copy_(torch.rand(HIDDEN, generator=gen) + 0.5)
    # The module whose routing function the fused router feeds (Gemma4MoE in 0.19 - 0.30,
    # the router itself from 0.31): what the adapter needs of it.
    owner = getattr(router, "per_expert_scale", None)
    if not isinstance(owner, torch.nn.Parameter):
        holder = torch.nn.Module()
        holder.per_expert_scale = torch.nn.Parameter(
            (torch.rand(EXPERTS, generator=gen) + 0.5).cuda(), requires_grad=False
        )
        layer = types.SimpleNamespace(moe=holder)
    else:
        holder, layer = router, router
        with torch.no_grad():
            router.per_expert_scale.copy_(torch.rand(EXPERTS, generator=gen) + 0.5)
    holder.__dict__[gemma4_layouts.OP_ATTRIBUTE] = object()
    with set_current_vllm_config(vllm_config):
        gemma4_layouts._link_fused_router(layer, router, config)
        router.proj.quant_method.process_weights_after_loading(router.proj)
    plan = getattr(router, gemma4_layouts.FUSED_PLAN_ATTRIBUTE)
    assert plan.gate_name is not None
    handover.forget_all()
    return router, vllm_config, own, holder.per_expert_scale


def _vllms_forward(router, x):
    return type(router).forward.__wrapped__(router, x)


def _operand(router, x):
    # vLLM's lines (ROUTER_OPERAND_SOURCE), as the split router computes them
    x_gate = router.norm(x)
    x_gate = x_gate * router.root_size.to(x_gate.dtype)
    return x_gate * router.scale.to(x_gate.dtype)


def _check_own(router, per_expert_scale, x, logits, claimed):
    assert claimed is not None
    weights, ids = claimed
    if DECODE_PATH.build_for(x.shape[0]) is not None:
        # a one-launch build on the gate's operand: the gate's logits, no second norm
        operand = _operand(router, x)
        assert_gate_contract(logits, weights, ids, operand, router.proj.weight,
                             per_expert_scale, TOPK)  # fmt: skip
        return
    packed = fused_router_packed(x, router.scale, router.proj.weight, per_expert_scale, 1e-6, TOPK)
    num_tokens = x.shape[0]
    assert torch.equal(logits, handover.logits_view(packed, num_tokens, EXPERTS))
    handover.claim_routing(handover.logits_view(packed, num_tokens, EXPERTS), TOPK)
    assert_matches_oracle(weights.cpu(), ids.cpu(), logits.cpu(), TOPK, per_expert_scale.cpu())


def test_gpu_split_router_takes_the_gate_or_its_own_kernels_per_count(split_router, gen):
    router, vllm_config, own, per_expert_scale = split_router
    for num_tokens in (1, 8, 16, 17, 32, 33, 64, 65, 128):
        x = torch.randn(num_tokens, HIDDEN, generator=gen).to(torch.bfloat16).cuda()
        with torch.no_grad(), set_forward_context(None, vllm_config):
            logits = router(x)
            vllm_logits = _vllms_forward(router, x)
        claimed = handover.claim_routing(logits, TOPK)
        if takes_own_kernel(num_tokens, own):
            _check_own(router, per_expert_scale, x, logits, claimed)
            torch.testing.assert_close(logits, vllm_logits, rtol=2e-2, atol=2e-2)
            if DECODE_PATH.build_for(num_tokens) is not None:  # the same operand, fp32 sums
                scale = vllm_logits.abs().amax(dim=-1, keepdim=True)
                assert float(((logits - vllm_logits).abs() / scale).max()) <= 1e-4
        else:
            assert claimed is None, num_tokens
            assert torch.equal(logits, vllm_logits), num_tokens
    assert handover._PRODUCED == {}


@pytest.mark.parametrize("num_tokens", [8, 32])
def test_gpu_split_router_replays_from_a_cuda_graph(split_router, num_tokens, gen):
    router, vllm_config, own, per_expert_scale = split_router
    x = torch.randn(num_tokens, HIDDEN, generator=gen).to(torch.bfloat16).cuda()
    with torch.no_grad(), set_forward_context(None, vllm_config):
        handover.claim_routing(router(x), TOPK)  # warm: kernels compiled outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = router(x)
            claimed = handover.claim_routing(logits, TOPK)
        x.copy_(torch.randn(num_tokens, HIDDEN, generator=gen).to(torch.bfloat16))
        graph.replay()
        torch.cuda.synchronize()
        eager = _vllms_forward(router, x)
    if takes_own_kernel(num_tokens, own):
        _check_own(router, per_expert_scale, x, logits, claimed)
    else:
        assert claimed is None
        assert torch.equal(logits, eager)
