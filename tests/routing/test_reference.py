"""The torch reference against HF transformers' Gemma4TextRouter and the fp64 oracle."""

import pytest
import torch
from oracle import assert_ids_valid, assert_matches_oracle
from transformers import Gemma4TextConfig
from transformers.models.gemma4.modeling_gemma4 import Gemma4TextRouter

from vllm_gemma4_router import gemma4_routing_reference


def _hf_router(num_experts: int, topk: int, dtype: torch.dtype, gen: torch.Generator):
    config = Gemma4TextConfig(
        hidden_size=64,
        num_experts=num_experts,
        top_k_experts=topk,
        enable_moe_block=True,
        moe_intermediate_size=32,
    )
    router = Gemma4TextRouter(config)
    with torch.no_grad():
        for p in router.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
        router.per_expert_scale.copy_(torch.rand(num_experts, generator=gen) + 0.5)
    return router.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("num_experts", "topk"), [(128, 8), (64, 4), (20, 6)])
def test_reference_matches_hf_gemma4_text_router(dtype, num_experts, topk, gen):
    router = _hf_router(num_experts, topk, dtype, gen)
    hidden = torch.randn(96, 64, generator=gen).to(dtype)
    logits = []
    router.proj.register_forward_hook(lambda mod, args, out: logits.append(out))
    with torch.no_grad():
        probs, hf_weights, hf_ids = router(hidden)
    (gating_output,) = logits
    assert gating_output.dtype == dtype

    weights, ids = gemma4_routing_reference(gating_output, topk, router.per_expert_scale)

    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    ids = ids.long()
    # HF ranks by probability and breaks ties its own way: both must pick a
    # valid top-K of the same probabilities, in the same (descending) order.
    torch.testing.assert_close(probs.gather(1, ids), probs.gather(1, hf_ids), rtol=0, atol=0)
    scale = router.per_expert_scale.detach().float()
    torch.testing.assert_close(
        weights / scale[ids], hf_weights.float() / scale[hf_ids], rtol=1e-5, atol=1e-7
    )
    same = ids == hf_ids
    torch.testing.assert_close(weights[same], hf_weights.float()[same], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("num_experts", "topk"), [(1, 1), (5, 5), (128, 8), (300, 16)])
def test_reference_matches_fp64_oracle(dtype, num_experts, topk, gen):
    logits = (torch.randn(50, num_experts, generator=gen) * 3).to(dtype)
    scale = torch.rand(num_experts, generator=gen) + 0.5
    weights, ids = gemma4_routing_reference(logits, topk, scale)
    assert_matches_oracle(weights, ids, logits, topk, scale)


def test_reference_ties_take_lowest_id(gen):
    # A coarse grid makes many exact ties; -0.0 and +0.0 must tie too.
    logits = torch.randint(-2, 3, (64, 32), generator=gen).float()
    logits[0] = 0.0
    logits[0, ::2] = -0.0
    weights, ids = gemma4_routing_reference(logits, 8, None)
    assert_matches_oracle(weights, ids, logits, 8, None)
    assert ids[0].tolist() == list(range(8))


def test_reference_non_finite_rows_follow_the_documented_rules(gen):
    logits = torch.randn(6, 16, generator=gen)
    logits[0, 3] = float("nan")  # NaN ranks last, weight 0: the row stays finite
    logits[1, :] = float("nan")  # all NaN == all -inf: NaN weights, valid ids
    logits[2, 5] = float("inf")  # +inf max: NaN weights
    logits[3, :] = float("-inf")
    logits[4, 7] = float("-inf")  # one -inf: finite row
    weights, ids = gemma4_routing_reference(logits, 4, None)
    assert_ids_valid(ids, 16)
    assert_matches_oracle(weights, ids, logits, 4, None)
    assert 3 not in ids[0].tolist() and bool(torch.isfinite(weights[0]).all())
    assert bool(weights[1].isnan().all()) and ids[1].tolist() == [0, 1, 2, 3]
    assert bool(weights[2].isnan().all()) and int(ids[2, 0]) == 5
    assert bool(weights[3].isnan().all())
    assert bool(torch.isfinite(weights[4]).all()) and bool(torch.isfinite(weights[5]).all())
