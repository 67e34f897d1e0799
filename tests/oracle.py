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
