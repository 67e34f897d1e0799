"""The stage ablation of the fused router's split launch (benchmarks.kernel.fused_stages), on
the CPU under TRITON_INTERPRET=1: each stage computes what the runtime kernel computes
up to that point, and the last one is the runtime kernel bit for bit."""

import pytest
import torch
from fused_oracle import router_inputs

from benchmarks.common.tables import row_cells
from benchmarks.kernel import bench_fused_stages
from benchmarks.kernel.fused_stages import STAGES, launch_stage
from vllm_gemma4_router.fused_router.launcher import (
    FusedLaunchConfig,
    _counters,
    launch_with_config,
)

EPS = 1e-6
SPLIT = FusedLaunchConfig(16, 16, 64, 64, 4, 2)  # 2 expert slices x 2 H slices at H=128, E=32


def _out(t, e, k):
    return (
        torch.full((t, e), float("nan")),
        torch.full((t, k), float("nan")),
        torch.full((t, k), -1, dtype=torch.int32),
    )


def _slice_sums(h, s, w, slice_h):
    """fp64 sums of bf16(h * s) @ w.T per H slice: ``[slices, T, E]``."""
    operand = (h.float() * s.float()).to(torch.bfloat16).double()  # the GEMM operand
    parts = [
        operand[:, i : i + slice_h] @ w.double()[:, i : i + slice_h].t()
        for i in range(0, h.shape[1], slice_h)
    ]
    return torch.stack(parts)


def test_each_stage_computes_the_kernel_up_to_it(gen):
    h, s, w, pes = router_inputs(3, 128, 32, torch.bfloat16, gen)
    expected = _slice_sums(h, s, w, 64)
    partial = torch.full((2 * 3 * 32,), float("nan"))
    out = _out(3, 32, 4)
    launch_stage("dot", SPLIT, h, s, w, pes, EPS, 4, out, partial=partial)
    torch.testing.assert_close(partial.view(2, 3, 32).double(), expected, rtol=1e-5, atol=1e-4)
    assert out[0].isnan().all()  # nothing past the partial sums
    launch_stage("handoff", SPLIT, h, s, w, pes, EPS, 4, out)
    assert out[0].isnan().all() and int(_counters(h.device)[0]) == 0  # reset for the next
    launch_stage("gather", SPLIT, h, s, w, pes, EPS, 4, out)
    torch.testing.assert_close(out[0].double(), expected.sum(0), rtol=1e-5, atol=1e-4)
    assert (out[2] == -1).all()  # not routed
    launch_stage("route", SPLIT, h, s, w, pes, EPS, 4, out)
    kernel = _out(3, 32, 4)
    launch_with_config(SPLIT, h, s, w, pes, EPS, 4, kernel)
    for a, b in zip(out, kernel, strict=True):
        assert torch.equal(a, b)
    assert int(_counters(h.device)[0]) == 0


def test_bad_stage_or_a_config_without_stages_is_refused(gen):
    h, s, w, pes = router_inputs(2, 128, 32, torch.bfloat16, gen)
    with pytest.raises(ValueError, match="stage must be one of"):
        launch_stage("all", SPLIT, h, s, w, pes, EPS, 4, _out(2, 32, 4))
    whole = FusedLaunchConfig(16, 32, 64, 2**31, 4, 2)
    with pytest.raises(ValueError, match="does not split"):
        launch_stage("dot", whole, h, s, w, pes, EPS, 4, _out(2, 32, 4))
    assert STAGES == ("dot", "handoff", "gather", "route")


def test_report_rows_give_each_stage_its_increment():
    us = dict(empty=0.7, dot=3.0, handoff=4.5, gather=5.0, route=8.0, kernel=8.1)
    row = bench_fused_stages.row_for(16, SPLIT, us, 260, "HBM", 1.1)
    assert row["d_dot_us"] == 2.3 and row["d_handoff_us"] == 1.5
    assert row["d_gather_us"] == 0.5 and row["d_route_us"] == 3.0
    assert row["kernel_us"] == 8.1 and row["producer_us"] == 1.1
    (line,) = bench_fused_stages.table_lines([row])[2:]
    config = "(16, 16, 64, 64, 4, 2, 16, False, 'exact', 'per_pick')"
    cells = row_cells(line)
    assert cells[:4] == ["16", config, "0.70", "3.00"]
    assert cells[-4:] == ["+2.30", "+1.50", "+0.50", "+3.00"]
    args = bench_fused_stages.parse_args([])
    assert args.tokens == [1, 16, 64, 256] and not args.producer
