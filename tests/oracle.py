"""An independent float64 routing oracle and the checks the tests share.

The oracle applies the package's documented rules (NaN ranks as -inf, equal
logits lowest id first, softmax over the chosen K) with numpy in float64. Since
every path selects on the exact logit values, which float64 holds exactly, ids
must agree exactly; weights agree to the rounding of the path under test.
"""

from __future__ import annotations

import numpy as np
import torch


def oracle_fp64(
    logits: torch.Tensor, topk: int, scale: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return float64 weights and int64 ids, ``[T, topk]``."""
    x = logits.detach().to(torch.float64).cpu().numpy()
    x = np.where(np.isnan(x), -np.inf, x)
    num_tokens, num_experts = x.shape
    order = np.lexsort((np.broadcast_to(np.arange(num_experts), x.shape), -x), axis=-1)
    ids = order[:, :topk]
    vals = np.take_along_axis(x, ids, axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(vals - vals.max(axis=1, keepdims=True))
        weights = e / e.sum(axis=1, keepdims=True)
    if scale is not None:
        weights = weights * scale.detach().to(torch.float64).cpu().numpy()[ids]
    return weights, ids


def assert_ids_valid(ids: torch.Tensor, num_experts: int) -> None:
    """Every row holds distinct ids in [0, E)."""
    ids = ids.cpu().long()
    if ids.numel():
        assert int(ids.min()) >= 0 and int(ids.max()) < num_experts, (
            f"ids out of range [0, {num_experts}): {ids}"
        )
    if ids.shape[1] > 1:
        s = ids.sort(dim=1).values
        assert bool((s[:, 1:] != s[:, :-1]).all()), f"repeated ids in a row: {ids}"


def assert_matches_oracle(
    weights: torch.Tensor,
    ids: torch.Tensor,
    logits: torch.Tensor,
    topk: int,
    scale: torch.Tensor | None,
    rtol: float = 2e-6,
    atol: float = 1e-7,
) -> None:
    """Exact ids and close weights against :func:`oracle_fp64`."""
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    assert tuple(weights.shape) == tuple(ids.shape) == (logits.shape[0], topk)
    ref_w, ref_ids = oracle_fp64(logits, topk, scale)
    got_ids = ids.cpu().numpy()
    bad_rows = np.nonzero((got_ids != ref_ids).any(axis=1))[0]
    assert bad_rows.size == 0, (
        f"ids differ in rows {bad_rows[:5].tolist()}: got {got_ids[bad_rows[:2]]}, "
        f"expected {ref_ids[bad_rows[:2]]}"
    )
    np.testing.assert_allclose(weights.cpu().double().numpy(), ref_w, rtol=rtol, atol=atol)


def fp32_bucket_fault_rows(num_experts: int, gen: torch.Generator) -> torch.Tensor:
    """fp32 rows ``[6, E]`` (E >= 100) for the checked selection's repairs.

    Narrow keys keep an fp32 logit's high bits (its bucket) above the id, so
    values a few ulps apart rank by id. Row 0: two picks of one bucket, the
    higher id worth more (out of order). Row 1: the last pick's bucket holds an
    unpicked expert worth more than the picked one (wrong set). Row 2: a crowded
    last bucket that narrow keys get right. Row 3: exact ties (bf16 values).
    Rows 4, 5: random rows, one of them with every fault at once."""

    def ulps(value: float, n: int) -> float:
        return float((torch.tensor([value]).view(torch.int32) + n).view(torch.float32))

    x = torch.randn(6, num_experts, generator=gen) * 0.1
    x[0, 3], x[0, 10] = 4.0, ulps(4.0, 5)
    for row in (1, 2):
        for j, expert in enumerate((30, 40, 50, 60, 70, 80, 90)):
            x[row, expert] = 5.0 + j
    x[1, 3], x[1, 20] = 1.0, ulps(1.0, 3)
    x[2, 3], x[2, 20] = ulps(1.0, 3), 1.0
    x[3] = torch.randn(num_experts, generator=gen).to(torch.bfloat16).float()
    x[3, 5:40] = 0.5
    x[5, 1], x[5, 9] = 3.0, ulps(3.0, 2)
    x[5, 2], x[5, 12], x[5, 33] = 1.5, ulps(1.5, 1), ulps(1.5, 4)
    for j, expert in enumerate((40, 41, 42, 43, 44)):
        x[5, expert] = 6.0 + j
    return x


def narrow_key_ranking(logits: torch.Tensor, topk: int) -> np.ndarray:
    """Top-``topk`` ids ranked by 32-bit narrow keys alone (bucket, then lowest id):
    what the checked selection starts from, before its repairs."""
    num_experts = logits.shape[1]
    block_e = 1 << (num_experts - 1).bit_length()
    bits = logits.float().view(torch.int32).numpy().astype(np.int64)
    ordered = np.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    bucket = ordered & -block_e
    order = np.lexsort((np.broadcast_to(np.arange(num_experts), bucket.shape), -bucket), axis=-1)
    return order[:, :topk]
