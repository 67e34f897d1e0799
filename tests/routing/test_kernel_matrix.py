"""The kernel over the E x K x dtype matrix, against the fp64 oracle.

Every (E, K, logits dtype) combination runs; token count, scale dtype and
contiguous/strided rows rotate with the case index so each appears across the
matrix while the interpreter run stays short. On a GPU the same cases run there.
"""

import itertools

import pytest
import torch
from oracle import assert_ids_valid, assert_matches_oracle

from vllm_gemma4_router import gemma4_routing_triton

EXPERTS = [8, 16, 32, 60, 64, 100, 128, 256, 384, 512, 1024]
TOPKS = [1, 2, 4, 6, 8, 16, "E"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOKENS = [1, 2, 3, 7, 8, 15, 16, 31, 33, 64, 127]
SCALES = [torch.float32, torch.bfloat16, None]


def _cases():
    combos = [
        (e, e if k == "E" else k, d)
        for e, k, d in itertools.product(EXPERTS, TOPKS, DTYPES)
        if k == "E" or k <= e
    ]
    for index, (num_experts, topk, dtype) in enumerate(combos):
        num_tokens = TOKENS[index % len(TOKENS)]
        if num_experts * num_tokens > 2**15:  # keep the interpreter quick on wide rows
            num_tokens = max(1, 2**15 // num_experts)
        yield pytest.param(
            num_tokens,
            num_experts,
            topk,
            dtype,
            SCALES[index % 3],
            index % 2 == 1,
            id=f"T{num_tokens}-E{num_experts}-K{topk}-{str(dtype)[6:]}-s{index % 3}-{index % 2}",
        )


CASES = list(_cases())
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_matrix_is_large_enough():
    assert len(CASES) >= 200


@pytest.mark.parametrize(
    ("num_tokens", "num_experts", "topk", "dtype", "scale_dtype", "strided"), CASES
)
def test_kernel_matrix(num_tokens, num_experts, topk, dtype, scale_dtype, strided, gen):
    logits = (torch.randn(num_tokens, num_experts + 3 * strided, generator=gen) * 2).to(dtype)
    if strided:
        logits = logits[:, 1 : num_experts + 1]
    # Coarse values in some rows make exact ties common.
    logits[::4] = (logits[::4].float() * 2).round().to(dtype) / 2
    scale = None
    if scale_dtype is not None:
        scale = (torch.rand(num_experts, generator=gen) + 0.5).to(scale_dtype)
    weights, ids = gemma4_routing_triton(
        logits.to(DEVICE), topk, None if scale is None else scale.to(DEVICE)
    )
    assert_ids_valid(ids.cpu(), num_experts)
    # fp32 arithmetic throughout, whatever the logit dtype (16-bit logits widen
    # exactly): ~2e-6 for exp (the GPU's ex2.approx path), scale and division,
    # plus up to K-1 roundings of 2^-24 in the K-term sum.
    rtol = 2e-6 + topk * 2.0**-24
    assert_matches_oracle(weights.cpu(), ids.cpu(), logits, topk, scale, rtol=rtol, atol=1e-7)
