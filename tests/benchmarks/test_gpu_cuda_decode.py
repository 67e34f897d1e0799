"""GPU: the CUDA C++ decode prototype meets the fused router's contract (logits within
the fp32 bound of the fp64 chain, routing exactly the reference's of its own logits,
valid distinct ids), with the padding mask, and leaves its counter ready for the next
launch."""

import pytest
import torch
from fused_oracle import assert_fused_contract, router_inputs
from oracle import assert_ids_valid

from benchmarks.kernel.cuda_decode import BUILDS, parse_build, route_decode, takes

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
]
EPS = 1e-6


def _run(h, s, w, pes, build, is_padding=None, pdl=False):
    t, e = h.shape[0], w.shape[0]
    out = (
        torch.full((t, e), float("nan"), device="cuda"),
        torch.full((t, 8), float("nan"), device="cuda"),
        torch.full((t, 8), 7, dtype=torch.int32, device="cuda"),
    )
    warps, per_block, flags = parse_build(build)
    route_decode(h, s, w, pes, EPS, 8, out, warps=warps, experts_per_block=per_block,
                 is_padding=is_padding, pdl=pdl, **flags)  # fmt: skip
    torch.cuda.synchronize()
    return out


# T = 1-16 for every build; up to 64 (two to four MMA row tiles) where the build takes it
BUILD_TOKENS = [
    (build, t, dtype)
    for build in BUILDS
    for t in (1, 2, 3, 5, 8, 13, 16, 17, 40, 64)
    for dtype in (torch.bfloat16, torch.float32)
    if takes(build, t, dtype)
]


@pytest.mark.parametrize(("build", "num_tokens", "scale_dtype"), BUILD_TOKENS)
def test_gpu_prototype_meets_the_contract(build, num_tokens, scale_dtype, gen):
    h, s, w, pes = router_inputs(num_tokens, 2816, 128, torch.bfloat16, gen, device="cuda")
    s = s.to(scale_dtype)
    out = _run(h, s, w, pes, build)
    assert_fused_contract(*out, h, s, w, pes, EPS, 8)
    again = _run(h, s, w, pes, build)  # the counter was reset: same bits
    assert all(torch.equal(a, b) for a, b in zip(out, again, strict=True))


@pytest.mark.parametrize("build", ["4x1", "8x8c", "8x16c", "8x1p", "8x8cp"])
def test_gpu_prototype_without_expert_scale_and_with_padding(build, gen):
    h, s, w, pes = router_inputs(8, 2816, 128, torch.bfloat16, gen, device="cuda")
    mask = torch.tensor([0, 1, 0, 0, 1, 1, 0, 0], dtype=torch.bool, device="cuda")
    logits, weights, ids = _run(h, s, w, None, build, mask)
    assert bool((ids[mask] == -1).all()) and bool((weights[mask] == 0).all())
    plain = _run(h, s, w, None, build)
    keep = ~mask
    assert torch.equal(ids[keep], plain[2][keep]) and torch.equal(weights[keep], plain[1][keep])
    assert_fused_contract(*plain, h, s, w, None, EPS, 8)


def test_gpu_prototype_refuses_more_tokens_than_it_holds(gen):
    h, s, w, pes = router_inputs(17, 2816, 128, torch.bfloat16, gen, device="cuda")
    with pytest.raises(ValueError, match="hidden_states"):
        _run(h, s, w, pes, "4x1")
    h, s, w, pes = router_inputs(65, 2816, 128, torch.bfloat16, gen, device="cuda")
    with pytest.raises(ValueError, match="hidden_states"):
        _run(h, s, w, pes, "8x8c")


@pytest.mark.parametrize("num_tokens", [1, 16])
def test_gpu_prototype_with_pdl_gives_the_same_bits(num_tokens, gen):
    h, s, w, pes = router_inputs(num_tokens, 2816, 128, torch.bfloat16, gen, device="cuda")
    plain = _run(h, s, w, pes, "8x2")
    with_pdl = _run(h, s, w, pes, "8x2", pdl=True)
    assert all(torch.equal(a, b) for a, b in zip(plain, with_pdl, strict=True))
    assert_fused_contract(*with_pdl, h, s, w, pes, EPS, 8)


@pytest.mark.parametrize(
    ("build", "num_tokens"), [("8x1", 5), ("8x8c", 5), ("8x8c", 40), ("8x8cp", 40)]
)
def test_gpu_prototype_non_finite_rows_give_valid_ids(build, num_tokens, gen):
    h, s, w, pes = router_inputs(num_tokens, 2816, 128, torch.bfloat16, gen, device="cuda")
    h[0, 3] = float("nan")
    h[1] = float("inf")
    h[2, :7] = float("-inf")
    _, weights, ids = _run(h, s, w, pes, build)
    assert_ids_valid(ids, 128)
    finite = slice(3, num_tokens)
    assert bool(torch.isfinite(weights[finite]).all())


@pytest.mark.parametrize(("build", "num_tokens"), [("8x1", 3), ("8x8c", 16), ("8x8cp", 33)])
def test_gpu_prototype_ties_go_to_the_lower_id(build, num_tokens, gen):
    # Experts 3, 40 and 97 share one gate row (and 64, 65 another): equal logits, bit for
    # bit, whichever block or MMA column computes them.
    h, s, w, pes = router_inputs(num_tokens, 2816, 128, torch.bfloat16, gen, device="cuda")
    w[40] = w[3]
    w[97] = w[3]
    w[65] = w[64]
    w[3] *= 4  # likely in every token's top 8
    w[40], w[97] = w[3], w[3]
    out = _run(h, s, w, pes, build)
    logits, _, ids = out
    assert torch.equal(logits[:, 3], logits[:, 40]) and torch.equal(logits[:, 3], logits[:, 97])
    assert_fused_contract(*out, h, s, w, pes, EPS, 8)
    chosen = ids.long()
    for a, b in ((3, 40), (40, 97)):
        # where the higher id of a tie is chosen, so is the lower one
        assert bool(((chosen == b).any(1) <= (chosen == a).any(1)).all())
