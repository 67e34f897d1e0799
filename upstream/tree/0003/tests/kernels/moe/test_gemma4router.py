# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Gemma 4 MoE routing: the Triton kernel and the torch function.

The routing contract: softmax over all experts, top-k, renormalize over the
k, times the per-expert scale. The Triton kernel also fixes the order: rows
are sorted by logit, descending, and equal logits go lowest expert id first.
The torch function (torch.topk) may order equal logits either way.

Run on CPU tensors with TRITON_INTERPRET=1 (Triton's interpreter; use small
num_tokens there, e.g.
-k "not 2048 and not 250000 and not 512-500 and not 24-17").
"""

import os
import random

import numpy as np
import pytest
import torch

from vllm.model_executor.layers.fused_moe.router.gemma4_routing import (
    gemma4_fused_routing_kernel_triton,
    gemma4_routing_function_torch,
)
from vllm.platforms import current_platform

ROUTING_FUNCTIONS = {
    "triton": gemma4_fused_routing_kernel_triton,
    "torch": gemma4_routing_function_torch,
}


@pytest.fixture
def device() -> str:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    if not (current_platform.is_cuda_alike() or current_platform.is_xpu()):
        pytest.skip("Triton needs a CUDA, ROCm or XPU device, or TRITON_INTERPRET=1")
    return current_platform.device_type


@pytest.fixture
def seed() -> int:
    """A fresh seed per test (printed, and in every assertion message)."""
    value = random.SystemRandom().randrange(2**31)
    print(f"seed={value}")
    return value


def sort_by_id(w, ids):
    order = ids.argsort(dim=-1)
    return w.gather(1, order), ids.gather(1, order)


# Gemma4 MoE Model has context length of 250K
# the minus 1 is to ensure that edge cases are tested
@pytest.mark.parametrize("num_tokens", [1, 2, 2048, 250000])
@pytest.mark.parametrize("num_experts", [128])  # gemma4 moe experts
@pytest.mark.parametrize("topk", [8])  # gemma4 topk
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.half, torch.float32])
def test_gemma4_routing_kernel_triton(
    num_tokens: int,
    num_experts: int,
    topk: int,
    dtype: torch.dtype,
    device: str,
):
    torch.manual_seed(0)

    gating = torch.randn(num_tokens, num_experts, dtype=dtype, device=device)
    scales = torch.rand(num_experts, dtype=torch.float32, device=device)

    ref_w, ref_ids = gemma4_routing_function_torch(gating, topk, scales)
    tri_w, tri_ids = gemma4_fused_routing_kernel_triton(gating, topk, scales)

    # Sort by expert id — to remove tie-breaking differences
    ref_ws, ref_is = sort_by_id(ref_w, ref_ids)
    tri_ws, tri_is = sort_by_id(tri_w, tri_ids)

    ids_match = (ref_is == tri_is).all().item()
    weights_match = torch.allclose(ref_ws, tri_ws, atol=1e-2, rtol=1e-2)
    all_match = ids_match and weights_match
    max_err = (ref_ws - tri_ws).abs().max().item()
    print(
        f"T={num_tokens:5d} E={num_experts:4d} K={topk} "
        f"{str(dtype).split('.')[-1]:7s} ids={ids_match} max_Δweight={max_err:.2e}"
    )
    if not all_match:
        bad = (ref_is != tri_is).any(dim=-1).nonzero(as_tuple=True)[0]
        if len(bad):
            r = bad[0].item()
            print(
                f"  first bad row {r}: ref_ids={ref_ids[r].tolist()} "
                f"tri_ids={tri_ids[r].tolist()}"
            )
        assert all_match


@pytest.mark.parametrize(
    ("num_tokens", "num_real"), [(1, 0), (16, 9), (24, 17), (512, 500)]
)
def test_gemma4_routing_kernel_triton_skips_padding(
    num_tokens: int, num_real: int, device: str
):
    torch.manual_seed(0)
    num_experts, topk = 128, 8
    gating = torch.randn(num_tokens, num_experts, dtype=torch.bfloat16, device=device)
    scales = torch.rand(num_experts, dtype=torch.float32, device=device)
    # CUDA-graph padding fills the tail of the batch.
    is_padding = torch.arange(num_tokens, device=device) >= num_real

    ref_w, ref_ids = gemma4_fused_routing_kernel_triton(gating, topk, scales)
    w, ids = gemma4_fused_routing_kernel_triton(
        gating, topk, scales, is_padding=is_padding
    )

    # Real rows are bit-identical to the unmasked call; padding rows select nothing.
    assert torch.equal(ids[:num_real], ref_ids[:num_real])
    assert torch.equal(w[:num_real], ref_w[:num_real])
    assert (ids[num_real:] == -1).all()
    assert (w[num_real:] == 0).all()


def oracle_fp64(
    gating: torch.Tensor, topk: int, scales: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """The contract in float64: ids by (logit descending, id ascending), then
    softmax over all experts renormalized over the top k, times the scale."""
    logits = gating.double().cpu().numpy()
    num_tokens, num_experts = logits.shape
    ids = np.empty((num_tokens, topk), dtype=np.int64)
    for row in range(num_tokens):
        order = np.lexsort((np.arange(num_experts), -logits[row]))
        ids[row] = order[:topk]
    top = np.take_along_axis(logits, ids, axis=1)
    # The softmax denominator cancels in the renormalization.
    unnorm = np.exp(top - logits.max(axis=1, keepdims=True))
    weights = unnorm / unnorm.sum(axis=1, keepdims=True)
    return weights * scales.double().cpu().numpy()[ids], ids


def random_gating(
    num_tokens: int,
    num_experts: int,
    topk: int,
    dtype: torch.dtype,
    device: str,
    gen: torch.Generator,
) -> torch.Tensor:
    """Normal logits in dtype; every other row gets exact ties across its
    k-th largest logit, where the tie order decides which expert is picked."""
    gating = torch.randn(num_tokens, num_experts, generator=gen).to(dtype)
    for row in range(0, num_tokens, 2):
        kth = gating[row].float().topk(topk).indices[-1]
        others = torch.randperm(num_experts, generator=gen)[:2]
        gating[row, others] = gating[row, kth].item()
    return gating.to(device)


@pytest.mark.parametrize("num_tokens", [1, 5])
@pytest.mark.parametrize(("num_experts", "topk"), [(128, 8), (100, 8), (16, 1)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.half, torch.float32])
def test_gemma4_routing_kernel_triton_matches_fp64_oracle(
    num_tokens: int,
    num_experts: int,
    topk: int,
    dtype: torch.dtype,
    device: str,
    seed: int,
):
    gen = torch.Generator().manual_seed(seed)
    gating = random_gating(num_tokens, num_experts, topk, dtype, device, gen)
    scales = (torch.rand(num_experts, generator=gen) + 0.5).to(device)

    weights, ids = gemma4_fused_routing_kernel_triton(gating, topk, scales)

    ref_w, ref_ids = oracle_fp64(gating, topk, scales)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    # Exact ids, in order: ties go lowest id first, rows are descending.
    np.testing.assert_array_equal(ids.cpu().numpy(), ref_ids, err_msg=f"{seed=}")
    np.testing.assert_allclose(
        weights.cpu().double().numpy(),
        ref_w,
        rtol=1e-5,
        atol=1e-6,
        err_msg=f"{seed=}",
    )


@pytest.mark.parametrize(("num_experts", "topk"), [(128, 8), (100, 8)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gemma4_routing_function_torch_matches_fp64_oracle(
    num_experts: int, topk: int, dtype: torch.dtype, seed: int
):
    gen = torch.Generator().manual_seed(seed)
    gating = random_gating(64, num_experts, topk, dtype, "cpu", gen)
    scales = torch.rand(num_experts, generator=gen) + 0.5

    weights, ids = gemma4_routing_function_torch(gating, topk, scales)

    ref_w, ref_ids = oracle_fp64(gating, topk, scales)
    # torch.topk may order equal logits either way: the logits picked, in
    # order, are the oracle's; the weights follow the ids picked.
    picked = gating.double().gather(1, ids.long()).numpy()
    expected = np.take_along_axis(gating.double().numpy(), ref_ids, axis=1)
    np.testing.assert_array_equal(picked, expected, err_msg=f"{seed=}")
    unnorm = np.exp(picked - gating.double().numpy().max(axis=1, keepdims=True))
    own_w = unnorm / unnorm.sum(axis=1, keepdims=True) * scales.double().numpy()[ids]
    # It computes in the gating dtype (Gemma 4's gate outputs float32).
    rtol = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    np.testing.assert_allclose(
        weights.double().numpy(), own_w, rtol=rtol, atol=rtol / 10, err_msg=f"{seed=}"
    )
    no_ties = ~np.array(
        [len(set(row)) < len(row) for row in np.sort(gating.float().numpy())]
    )
    np.testing.assert_array_equal(ids.numpy()[no_ties], ref_ids[no_ties])


def random_bits(
    num_tokens: int, num_experts: int, dtype: torch.dtype, gen: torch.Generator
) -> torch.Tensor:
    """Any bit patterns: NaNs of both signs, infinities, zeros, subnormals."""
    int_dtype = {torch.float32: torch.int32}.get(dtype, torch.int16)
    info = torch.iinfo(int_dtype)
    bits = torch.randint(
        info.min, info.max, (num_tokens, num_experts), generator=gen, dtype=int_dtype
    )
    gating = bits.view(dtype)
    # Rows made mostly of non-finite values and signed zeros.
    specials = torch.tensor(
        [float("nan"), -float("nan"), float("inf"), -float("inf"), 0.0, -0.0]
    ).to(dtype)
    pick = torch.randint(
        0, len(specials), (num_tokens // 2, num_experts), generator=gen
    )
    gating[: num_tokens // 2] = specials[pick]
    return gating


@pytest.mark.parametrize("routing", ROUTING_FUNCTIONS)
@pytest.mark.parametrize(("num_experts", "topk"), [(128, 8), (100, 8)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.half, torch.float32])
def test_gemma4_routing_any_input_bits_give_distinct_ids(
    routing: str,
    num_experts: int,
    topk: int,
    dtype: torch.dtype,
    device: str,
    seed: int,
):
    """Non-finite logits rank however the implementation compares them (not
    pinned); every row still names k distinct experts that exist."""
    gen = torch.Generator().manual_seed(seed)
    gating = random_bits(4, num_experts, dtype, gen).to(device)
    scales = (torch.rand(num_experts, generator=gen) + 0.5).to(device)

    weights, ids = ROUTING_FUNCTIONS[routing](gating, topk, scales)

    assert ids.shape == weights.shape == (4, topk)
    ids = ids.long().cpu()
    assert ((ids >= 0) & (ids < num_experts)).all(), f"{seed=}"
    assert (ids.sort(dim=1).values.diff(dim=1) > 0).all(), f"{seed=}"
