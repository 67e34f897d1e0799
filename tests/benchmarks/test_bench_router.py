"""The router benchmark's CPU parts: arguments, the weight rotation, the check, the report.

The timing itself needs CUDA graphs; here a fake timer stands in for it and the
torch reference for the fused op and for vLLM's routing kernel (ours runs under
TRITON_INTERPRET=1, see conftest).
"""

import csv
import math

import pytest
import torch

from benchmarks.common import timing
from benchmarks.common.tables import row_cells
from benchmarks.kernel import bench_router
from vllm_gemma4_router import gemma4_routing_reference, gemma4_routing_triton
from vllm_gemma4_router.fused_router.reference import gemma4_fused_router_reference

H200_L2 = 50 * 2**20
LAYER_BYTES = (128 * 2816 + 2816 + 128) * 2  # gate weight, scale, per_expert_scale in bf16


def test_arguments_default_to_the_issue_sweep_and_check_layers():
    args = bench_router.parse_args([])
    assert args.tokens == [2**t for t in range(15)] and args.tokens[-1] == 16384
    assert (args.hidden, args.experts, args.topk) == (2816, 128, 8)
    assert args.layers == ["auto"] and args.min_layers == 30
    assert not args.real_step_estimate and args.model_layers == 30
    args = bench_router.parse_args(["--layers", "auto, 30", "--tokens", "16,64"])
    assert args.layers == ["auto", "30"] and args.tokens == [16, 64]
    for bad in ("0", "-3", "many"):
        with pytest.raises(SystemExit):
            bench_router.parse_args(["--layers", bad])


def test_rotation_reaches_three_l2s_of_gate_weights():
    assert bench_router.layer_bytes(2816, 128, 2) == LAYER_BYTES == 726784
    auto = math.ceil(3 * H200_L2 / LAYER_BYTES)
    assert auto == 217 and auto * LAYER_BYTES >= 3 * H200_L2 > (auto - 1) * LAYER_BYTES
    assert bench_router.resolve_layers(["auto"], LAYER_BYTES, H200_L2, 30) == [217]
    # a small L2 still rotates at least --min-layers sets; duplicates collapse
    assert bench_router.resolve_layers(["auto", "30"], LAYER_BYTES, 2**20, 30) == [30]
    assert bench_router.resolve_layers(["auto", "30"], LAYER_BYTES, H200_L2, 30) == [217, 30]
    assert bench_router.weights_location(217, LAYER_BYTES, H200_L2) == "HBM"
    assert bench_router.weights_location(30, LAYER_BYTES, H200_L2) == "L2"  # 21.8 MB
    assert bench_router.weights_location(100, LAYER_BYTES, H200_L2) == "mixed"
    # one graph is whole passes over the sets, at least 32 calls
    assert timing.rotation_calls(217) == 217
    assert timing.rotation_calls(30) == 60
    assert timing.rotation_calls(1) == 32
    with pytest.raises(ValueError):
        timing.rotation_calls(0)
    with pytest.raises(ValueError):
        timing.rotation_sets(0, H200_L2)


def _no_split_launch(*args):
    return None


def _router(
    fused=gemma4_fused_router_reference,
    layers=3,
    hidden=64,
    experts=16,
    topk=4,
    fused_pdl=_no_split_launch,
):
    gen = torch.Generator().manual_seed(1)
    weights, scales, expert_scales = bench_router.make_layer_sets(
        layers, hidden, experts, torch.bfloat16, "cpu", gen
    )
    gemm, gemm_label = bench_router.gate_gemm("cpu")
    router = bench_router.Router(
        weights=weights,
        scales=scales,
        expert_scales=expert_scales,
        root_size=torch.tensor(hidden**-0.5).to(torch.bfloat16),
        eps=1e-6,
        topk=topk,
        norm=bench_router.router_norm,
        gemm=gemm,
        route_vllm=gemma4_routing_reference,
        route_ours=gemma4_routing_triton,
        fused=fused,
        fused_gemm=gemma4_fused_router_reference,
        fused_pdl=fused_pdl,
    )
    return router, gemm_label


def test_gate_gemm_gives_fp32_logits_and_names_its_path():
    router, label = _router()
    x = torch.randn(5, 64).to(torch.bfloat16)
    logits = router.gemm(x, router.weights[0])
    assert logits.dtype == torch.float32 and logits.shape == (5, 16)
    exact = x.float() @ router.weights[0].float().t()
    if label.startswith("torch.mm("):  # fp32 output
        torch.testing.assert_close(logits, exact)
    else:  # this torch has no CPU kernel for mm's out_dtype: F.linear's bf16 output, cast
        assert "no torch.mm out_dtype" in label
        torch.testing.assert_close(logits, exact, rtol=2**-8, atol=1e-6)
        assert torch.equal(logits, logits.bfloat16().float())


def test_measure_point_times_every_piece_over_every_layer_and_checks():
    router, _ = _router(layers=3)
    calls = []

    def timer(fn, layers):  # stands in for timing.bench_rotated: call every set once
        calls.append(layers)
        for i in range(layers):
            fn(i)
        return 4.0 if len(calls) % len(bench_router.PIECES) == 7 else 8.0  # "fused" is 7th

    rows = bench_router.measure_point(
        router, 5, [3, 2], LAYER_BYTES, H200_L2, timer, lambda: None, 2e-2, torch.bfloat16, "cpu"
    )
    assert [r["layers"] for r in rows] == [3, 2]
    n = len(bench_router.PIECES) - 1  # no split launch here: no fused_pdl piece
    assert calls == [3] * n + [2] * n  # every other piece, over every layer count
    row = rows[0]
    assert row["T"] == 5 and row["weights_from"] == "L2"
    assert row["check"] == "ok", row
    assert row["logit_err"] < 2e-2 and 0.0 <= row["ids_vs_chain"] <= 1.0
    assert row["fused_us"] == 4.0 and row["chain_vllm_us"] == row["norm_us"] == 8.0
    assert row["vllm_over_fused"] == row["ours_over_fused"] == 2.0
    assert math.isnan(row["fused_pdl_us"]) and "producer_us" not in row


def test_producer_runs_before_every_piece_and_its_time_is_subtracted():
    """``--producer``: each timed call first rewrites the hidden states (same values);
    the producer alone is timed too and taken off every piece, fused_pdl included."""
    seen = []

    def pdl_launch(h, *args):
        seen.append(h.clone())
        return gemma4_fused_router_reference(h, *args)

    router, _ = _router(fused_pdl=pdl_launch)
    names = ["producer", *bench_router.PIECES]

    def timer(fn, layers):  # producer 3 us; every piece 3 + 5 (fused 3 + 2)
        name = names[timer.calls]
        timer.calls += 1
        for i in range(layers):
            fn(i)
        return 3.0 + (0.0 if name == "producer" else 2.0 if name == "fused" else 5.0)

    timer.calls = 0
    rows = bench_router.measure_point(
        router, 5, [2], LAYER_BYTES, H200_L2, timer, lambda: None, 2e-2, torch.bfloat16, "cpu",
        producer=True,
    )  # fmt: skip
    row = rows[0]
    assert timer.calls == len(names) and row["check"] == "ok", row
    assert row["producer_us"] == 3.0 and row["fused_us"] == 2.0
    assert row["fused_pdl_us"] == row["chain_vllm_us"] == row["empty_us"] == 5.0
    assert row["vllm_over_fused"] == 2.5
    # the check's call, then two timed ones: each read the same hidden states
    assert len(seen) >= 3 and all(torch.equal(x, seen[0]) for x in seen)


def test_check_flags_a_pdl_launch_whose_bits_differ():
    h = torch.randn(6, 64).to(torch.bfloat16)

    def off_by_one_ulp(*args):
        logits, weights, ids = gemma4_fused_router_reference(*args)
        return torch.nextafter(logits, torch.full_like(logits, math.inf)), weights, ids

    router, _ = _router(fused_pdl=gemma4_fused_router_reference)
    assert bench_router.check_point(router, h, 2e-2)["check"] == "ok"
    router, _ = _router(fused_pdl=off_by_one_ulp)
    assert bench_router.check_point(router, h, 2e-2)["check"] == "FAIL: PDL launch != the op's bits"


def test_check_flags_wrong_ids_and_far_logits():
    h = torch.randn(6, 64).to(torch.bfloat16)

    def shifted(*args):  # logits off by 10 % of their scale; ids still its own routing
        logits, _, _ = gemma4_fused_router_reference(*args)
        logits = logits + 0.1 * logits.abs().amax()
        weights, ids = gemma4_routing_reference(logits, args[-1], args[3])
        return logits, weights, ids

    def reversed_ids(*args):
        logits, weights, ids = gemma4_fused_router_reference(*args)
        return logits, weights, ids.flip(1)

    router, _ = _router(fused=shifted)
    check = bench_router.check_point(router, h, 2e-2)
    assert check["check"].startswith("FAIL: logits") and check["logit_err"] > 2e-2
    router, _ = _router(fused=reversed_ids)
    check = bench_router.check_point(router, h, 2e-2)
    assert check["check"] == "FAIL: ids != our routing of its logits"
    assert check["ids_vs_chain"] > 0.5  # the same experts, in the wrong order
    router, _ = _router()
    assert bench_router.check_point(router, h, 2e-2)["check"] == "ok"


def _rows():
    rows = []
    for layers, where, slower in ((217, "HBM", 1.5), (30, "L2", 1.0)):
        for num_tokens, fused in ((16, 4.0), (64, 5.0), (4096, 10.0)):
            us = dict(
                norm=2.0 * slower,
                gemm=3.0 * slower,
                route_vllm=2.5,
                route_ours=1.5,
                chain_vllm=3 * fused * slower,
                chain_ours=2 * fused * slower,
                fused=fused * slower,
                fused_gemm=fused * slower * 1.1,
                fused_pdl=fused * slower * 0.9 if num_tokens < 4096 else float("nan"),
                empty=1.0,
            )
            rows.append(
                dict(
                    T=num_tokens,
                    layers=layers,
                    weights_from=where,
                    weights_MB=round(layers * LAYER_BYTES / 1e6, 1),
                    **{f"{k}_us": v for k, v in us.items()},
                    vllm_over_fused=3.0,
                    ours_over_fused=2.0,
                    check="ok" if num_tokens != 4096 else "FAIL: ids != our routing of its logits",
                    logit_err=0.004,
                    ids_vs_chain=0.97,
                )
            )
    return rows


def test_report_has_stamp_tables_ratios_and_real_step_estimate(tmp_path):
    stamp = {
        "date": "2026-12-01 10:00:00 UTC",
        "gpu": "Test GPU",
        "torch": "t",
        "triton": "tr",
        "copy_floor_GBps": "4100",
        "L2_bytes": str(H200_L2),
        "layer_bytes": str(LAYER_BYTES),
        "impl_gemm": "torch.mm(x, w.t(), out_dtype=torch.float32)",
        "logit_rtol": "0.02",
    }
    rows = _rows()
    base = bench_router.write_results(rows, stamp, tmp_path, "", model_layers=30)
    assert base == tmp_path / "bench_router_Test_GPU_2026-12-01"

    csv_text = (tmp_path / "bench_router_Test_GPU_2026-12-01.csv").read_text().splitlines()
    assert csv_text[0].startswith("# date=2026-12-01") and "copy_floor_GBps=4100" in csv_text[0]
    parsed = list(csv.DictReader(csv_text[1:]))
    assert len(parsed) == 6 and parsed[0]["chain_vllm_us"] == "18.0"

    report = (tmp_path / "bench_router_Test_GPU_2026-12-01.md").read_text()
    assert "Copy floor 4100 GB/s; L2 50 MiB; 727 KB of router weights per layer" in report
    assert "torch.mm(x, w.t(), out_dtype=torch.float32)" in report
    hbm, l2 = report.index("## L=217 layer weight sets (HBM: 157.7 MB"), report.index("## L=30")
    assert hbm < l2  # the HBM rotation first
    # T=16, L=217: norm 3, gemm 4.5, routing 2.5 / 1.5, chains 18 / 12, fused 6 (GEMM
    # path 6.6), empty 1
    rows_md = [row_cells(line) for line in report.splitlines() if line.startswith("|")]
    row_16 = ["16", "3.00", "4.50", "2.50", "1.50", "18.00", "12.00", "6.00", "6.60", "5.40"]
    row_16 += ["1.00", "3.00x", "2.00x", "ok"]
    assert row_16 in rows_md
    assert ["4096", "2.00", "3.00"] in [cells[:3] for cells in rows_md]
    assert any(cells[-1].startswith("FAIL: ids != our routing") for cells in rows_md)
    # T=4096, L=30: no split launch, no PDL time
    assert any("| 11.00 | - | 1.00 |" in f"| {' | '.join(cells)} |" for cells in rows_md)
    assert "chain vLLM / fused 3.00x (min 3.00x), chain ours / fused 2.00x" in report
    # (18 - 6) x 30 at T=16 and (22.5 - 7.5) x 30 at T=64, HBM; (12 - 4) x 30 in L2
    assert "L=217: (chain vLLM - fused) x 30 router layers per decode step: " in report
    assert "T=16: 360.0 us; T=64: 450.0 us." in report
    assert "L=30: (chain vLLM - fused) x 30 router layers per decode step: T=16: 240.0 us" in (
        report
    )

    tagged = bench_router.write_results(rows, stamp, tmp_path, "L30", model_layers=None)
    assert tagged.name == "bench_router_Test_GPU_2026-12-01_L30"
    assert "Real-step" not in (tmp_path / f"{tagged.name}.md").read_text()


def test_summary_printed_last_is_the_tables_and_the_estimate():
    lines = bench_router.summary_lines(_rows(), model_layers=30)
    text = "\n".join(lines)
    assert text.index("L=217 weight sets (HBM)") < text.index("L=30 weight sets (L2)")
    assert sum(row_cells(line)[0] == "16" for line in lines if line.startswith("|")) == 2
    assert "geomean chain vLLM / fused 3.00x, chain ours / fused 2.00x" in text
    assert "T=16: 360.0 us; T=64: 450.0 us." in text
    assert "Real-step" not in "\n".join(bench_router.summary_lines(_rows(), None))
