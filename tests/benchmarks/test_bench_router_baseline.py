"""Issue #34 item 3's additions to the router benchmark, on the CPU: vLLM's ll_bf16_gemm
tier (eligibility, reasons, a stub in its place), hot and cold in one run, the compiled
layer tail's serving-equivalent column and its formula, the anchors-only files and
their comparison. The timing itself needs CUDA graphs: a fake timer stands in."""

import math
import types
from pathlib import Path

import pytest
import torch

from benchmarks.common import ll_gemm
from benchmarks.common.tables import row_cells
from benchmarks.kernel import bench_router, compare_anchors
from tests.benchmarks.test_bench_router import LAYER_BYTES, _router

H200_L2 = 50 * 2**20
VLLM_034 = Path(__file__).resolve().parents[2] / ".cache" / "vllm-src" / "vllm-0.34.0"


def test_device_shape_and_token_reasons_follow_gate_linear():
    assert ll_gemm.device_reason((9, 0)) is None
    assert ll_gemm.device_reason((10, 0)) is None and ll_gemm.device_reason((10, 3)) is None
    assert ll_gemm.device_reason((8, 9)).startswith("SM89: GateLinear enables ll_bf16_gemm")
    assert ll_gemm.device_reason((12, 0)).startswith("SM120:")
    assert ll_gemm.device_reason(None).startswith("no CUDA device")
    assert ll_gemm.shape_reason(2816, torch.bfloat16) is None
    assert "bf16 weights only" in ll_gemm.shape_reason(2816, torch.float16)
    assert ll_gemm.shape_reason(2820, torch.bfloat16) == (
        "K=2820: ll_bf16_gemm requires K divisible by 8"
    )
    assert ll_gemm.token_reason(16) is None
    assert ll_gemm.token_reason(17) == "T > 16: GateLinear dispatches cuBLAS"


def _stub_module(available=True, calls=None):
    def ll_bf16_gemm(hidden_states, router_weight, output_dtype=torch.float32):
        if calls is not None:
            calls.append((hidden_states.shape, hidden_states.is_contiguous(), output_dtype))
        return hidden_states.float() @ router_weight.float().t()

    return types.SimpleNamespace(is_available=lambda: available, ll_bf16_gemm=ll_bf16_gemm)


def test_load_ll_gemm_calls_the_kernel_as_gate_linear_and_names_why_not():
    calls = []
    ll = ll_gemm.load_ll_gemm(
        "installed", (9, 0), 64, torch.bfloat16, importer=lambda src: _stub_module(calls=calls)
    )
    assert ll.fn is not None and ll.reason is None
    assert "ll_bf16_gemm (installed), nvidia-cutlass-dsl" in ll.label
    assert ll.eligible(1) and ll.eligible(16) and not ll.eligible(17)
    assert ll.skip_reason(17) == "T > 16: GateLinear dispatches cuBLAS"
    x, w = torch.randn(4, 64).bfloat16(), torch.randn(8, 64).bfloat16()
    assert ll.fn(x, w).dtype == torch.float32
    assert calls == [((4, 64), True, torch.float32)]  # two arguments: the default fp32 out

    def no_module(source):
        raise ImportError("No module named 'vllm.model_executor.kernels.linear.cute_dsl'")

    for kwargs, expected in (
        (dict(importer=no_module), "no vllm.model_executor.kernels.linear.cute_dsl.ll_bf16"),
        (dict(capability=(8, 0)), "SM80: GateLinear enables ll_bf16_gemm on SM90 and SM100"),
        (dict(capability=None), "no CUDA device"),
        (dict(weight_dtype=torch.float32), "bf16 weights only"),
        (dict(importer=lambda s: _stub_module(available=False)), "cutlass.cute not importable"),
    ):
        args = dict(source="installed", capability=(9, 0), hidden=64, weight_dtype=torch.bfloat16)
        args["importer"] = lambda src: _stub_module()
        args.update(kwargs)
        ll = ll_gemm.load_ll_gemm(**args)
        assert ll.fn is None and expected in ll.reason, (kwargs, ll.reason)
        assert not ll.eligible(1) and ll.skip_reason(1) == ll.reason


@pytest.mark.skipif(not (VLLM_034 / ll_gemm.LL_PACKAGE_DIR).is_dir(), reason="no 0.34.0 tree")
def test_ll_bf16_of_a_source_tree_loads_by_path_and_names_its_version():
    assert ll_gemm.tree_version(VLLM_034) == "0.34.0"
    module = ll_gemm.import_from_tree(VLLM_034, "0.34.0")
    assert module.__name__ == "_bench_vllm_cute_dsl_0_34_0.ll_bf16"
    assert callable(module.ll_bf16_gemm) and callable(module.is_available)
    ll = ll_gemm.load_ll_gemm(str(VLLM_034), None, 2816, torch.bfloat16)
    assert ll.label.startswith(f"vllm 0.34.0 ll_bf16_gemm (from {VLLM_034}")
    assert ll.fn is None and ll.reason.startswith("no CUDA device")
    with pytest.raises(FileNotFoundError):
        ll_gemm.import_from_tree(VLLM_034 / "vllm", "x")


def test_cache_modes_anchor_mode_and_their_default_token_lists():
    args = bench_router.parse_args(["--cache", "both"])
    assert args.tokens == list(bench_router.ISSUE_TOKENS) and args.layers == ["auto", "30"]
    assert args.tokens == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384]
    assert bench_router.default_tag(args) == "cache-both"
    args = bench_router.parse_args(["--cache", "hot", "--hot-layers", "20", "--tokens", "8"])
    assert args.layers == ["20"] and args.tokens == [8]
    assert bench_router.parse_args(["--cache", "cold"]).layers == ["auto"]
    args = bench_router.parse_args(["--anchors-only", "--ll-source", "/x/vllm-0.34.0"])
    assert args.tokens == [1, 2, 4, 8, 16] and args.layers == ["auto", "30"]
    assert args.ll_source == "/x/vllm-0.34.0" and args.cache == "both"
    args = bench_router.parse_args(["--cache", "both", "--producer"])
    assert bench_router.default_tag(args) == "cache-both_producer"
    plain = bench_router.parse_args([])
    assert plain.ll_source == "installed" and bench_router.default_tag(plain) == ""
    for bad in (["--cache", "both", "--layers", "30"], ["--cache", "warm"], ["--hot-layers", "0"]):
        with pytest.raises(SystemExit):
            bench_router.parse_args(bad)


def _ll(fn=None, reason=None):
    def cublas_like(x, w):
        return x.float() @ w.float().t()

    return ll_gemm.LLGemm(None if reason else (fn or cublas_like), "stub ll", reason, "0.26.0")


def _with_tail(router):
    hidden = router.weights[0].shape[1]
    router.tail = bench_router.layer_tail
    router.tail_router = bench_router.layer_tail_router
    router.tail_weights = tuple(torch.ones(hidden, dtype=torch.bfloat16) for _ in range(3))
    return router


def _counting_timer():
    def timer(fn, layers):  # every set once; 1, 2, 3, ... us in call order
        for i in range(layers):
            fn(i)
        timer.calls += 1
        return float(timer.calls)

    timer.calls = 0
    return timer


@pytest.mark.parametrize("num_tokens, tier", [(8, "ll_bf16"), (24, "cuBLAS")])
def test_serving_equivalent_is_marginal_norm_plus_dispatched_gemm_plus_routing(num_tokens, tier):
    router, _ = _router(layers=2)
    router.ll = _ll(fn=router.gemm)  # this torch's cuBLAS-tier stand-in: the check passes
    _with_tail(router)
    rows = bench_router.measure_point(
        router, num_tokens, [2], LAYER_BYTES, H200_L2, _counting_timer(), lambda: None,
        2e-2, torch.bfloat16, "cpu",
    )  # fmt: skip
    row = rows[0]
    assert row["check"] == "ok", row
    assert row["gemm_tier"] == tier
    if tier == "ll_bf16":
        assert row["ll_err"] <= bench_router.LL_LOGIT_RTOL
        assert row["gemm_ll_us"] > 0 and row["chain_ll_us"] > 0
        gemm = row["gemm_ll_us"]
    else:
        assert math.isnan(row["gemm_ll_us"]) and math.isnan(row["chain_ll_us"])
        assert math.isnan(row["ll_err"]) and math.isnan(row["ll_over_cublas"])
        gemm = row["gemm_us"]
    marginal = row["tail_router_us"] - row["tail_us"]
    assert row["norm_marginal_us"] == pytest.approx(marginal) and marginal == 1.0
    assert row["serving_equiv_us"] == pytest.approx(marginal + gemm + row["route_vllm_us"])
    ratio = row["serving_equiv_us"] / row["fused_us"]
    assert row["serving_over_fused"] == pytest.approx(ratio, abs=1e-3)
    # the plugin's own chain: the same tier, our routing
    assert row["plugin_equiv_us"] == pytest.approx(marginal + gemm + row["route_ours_us"])
    ratio = row["plugin_equiv_us"] / row["fused_us"]
    assert row["plugin_over_fused"] == pytest.approx(ratio, abs=1e-3)


@pytest.mark.parametrize(
    ("num_tokens", "branch"), [(8, "gate tier"), (24, "own kernel"), (99, "own kernel")]
)
def test_split_column_takes_the_policy_rows_branch_per_count(num_tokens, branch):
    router, _ = _router(layers=2)
    router.ll = _ll(fn=router.gemm)  # this torch's cuBLAS-tier stand-in: the check passes
    _with_tail(router)
    router.own_tokens = ((17, 64), (90, None))
    router.fused_operand = bench_router.load_fused_operand()  # on the CPU: the op on h
    rows = bench_router.measure_point(
        router, num_tokens, [2], LAYER_BYTES, H200_L2, _counting_timer(), lambda: None,
        2e-2, torch.bfloat16, "cpu",
    )  # fmt: skip
    row = rows[0]
    assert row["split_branch"] == branch and row["check"] == "ok", row
    # the own-count kernel is timed on its own: the operand path, not the op on h
    assert row["fused_operand_us"] > 0 and row["fused_operand_us"] != row["fused_us"]
    # the operand's lines run in the compiled layer on both branches
    expected = (
        row["norm_marginal_us"] + row["fused_operand_us"]
        if branch == "own kernel"
        else row["plugin_equiv_us"]
    )
    assert row["split_equiv_us"] == pytest.approx(expected)
    assert row["plugin_over_split"] == pytest.approx(row["plugin_equiv_us"] / expected, abs=1e-3)
    lines = bench_router.serving_table_lines(rows, 2)
    assert f"({branch})" in lines[-1] and "plugin-equiv / split" in lines[2]
    assert "split" in bench_router.short_table_lines(rows)[0]


def test_no_split_column_without_a_splitting_row():
    router, _ = _router(layers=2)
    router.ll = _ll(fn=router.gemm)
    _with_tail(router)
    rows = bench_router.measure_point(
        router, 24, [2], LAYER_BYTES, H200_L2, _counting_timer(), lambda: None,
        2e-2, torch.bfloat16, "cpu",
    )  # fmt: skip
    assert "split_equiv_us" not in rows[0] and "split_branch" not in rows[0]
    assert "split" not in " ".join(bench_router.serving_table_lines(rows, 2)[2:3])


def test_producer_is_not_ahead_of_the_tail_and_anchors_only_times_three_pieces():
    router, _ = _router(layers=2)
    router.ll = _ll(fn=router.gemm)  # this torch's cuBLAS-tier stand-in: the check passes
    _with_tail(router)
    timer = _counting_timer()
    rows = bench_router.measure_point(
        router, 4, [2], LAYER_BYTES, H200_L2, timer, lambda: None, 2e-2, torch.bfloat16, "cpu",
        producer=True,
    )  # fmt: skip
    # producer 1; 9 pieces (no split launch) + gemm_ll, chain_ll: 2..12, minus 1; tails 13, 14
    assert timer.calls == 1 + 9 + 2 + 2
    assert rows[0]["producer_us"] == 1.0 and rows[0]["gemm_ll_us"] == 10.0
    assert (rows[0]["tail_us"], rows[0]["tail_router_us"]) == (13.0, 14.0)
    timer = _counting_timer()
    rows = bench_router.measure_point(
        router, 4, [2, 1], LAYER_BYTES, H200_L2, timer, lambda: None, 2e-2, torch.bfloat16,
        "cpu", only=bench_router.ANCHOR_PIECES,
    )  # fmt: skip
    assert timer.calls == 3 * 2
    assert [k for k in rows[0] if k.endswith("_us")] == ["gemm_us", "gemm_ll_us", "fused_us"]
    assert "serving_equiv_us" not in rows[0] and "vllm_over_fused" not in rows[0]
    assert rows[0]["ll_over_cublas"] == 3.0  # timed in pieces() order: gemm 1, fused 2, ll 3


def test_check_flags_ll_logits_far_from_cublas():
    h = torch.randn(6, 64).to(torch.bfloat16)
    router, _ = _router()
    router.ll = _ll(fn=lambda x, w: 1.01 * (x.float() @ w.float().t()))
    check = bench_router.check_point(router, h, 2e-2)
    assert check["check"].startswith("FAIL: ll_bf16 logits") and check["ll_err"] > 1e-3
    router.ll = _ll(reason="SM80: no")
    check = bench_router.check_point(router, h, 2e-2)
    assert check["check"] == "ok" and math.isnan(check["ll_err"])


def test_layer_tail_is_gemma4_decoder_order_and_router_norm_is_one_more_output():
    gen = torch.Generator().manual_seed(3)
    attn, res = (torch.randn(5, 64, generator=gen).bfloat16() for _ in range(2))
    w = tuple((1 + 0.1 * torch.randn(64, generator=gen)).bfloat16() for _ in range(3))
    h, mlp_in, moe_in = bench_router.layer_tail(attn, res, *w, 1e-6)

    def rms(x, weight):
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
        return (y.bfloat16() * weight).bfloat16()

    assert torch.equal(h, rms(attn, w[0]) + res)
    assert torch.equal(mlp_in, rms(h, w[1])) and torch.equal(moe_in, rms(h, w[2]))
    root, scale = torch.tensor(64**-0.5).bfloat16(), torch.rand(64, generator=gen).bfloat16()
    *same, normed = bench_router.layer_tail_router(attn, res, *w, 1e-6, root, scale)
    assert all(map(torch.equal, same, (h, mlp_in, moe_in)))
    assert torch.equal(normed, bench_router.router_norm(h, root, scale, 1e-6))


def _rows_with_extras():
    rows = []
    for layers, where in ((217, "HBM"), (30, "L2")):
        for num_tokens in (8, 64):
            ll = num_tokens <= 16
            rows.append(
                dict(
                    T=num_tokens,
                    layers=layers,
                    weights_from=where,
                    weights_MB=1.0,
                    **{f"{p}_us": 2.0 for p in bench_router.PIECES},
                    gemm_ll_us=1.0 if ll else float("nan"),
                    chain_ll_us=4.0 if ll else float("nan"),
                    tail_us=3.0,
                    tail_router_us=3.25,
                    vllm_over_fused=1.0,
                    ours_over_fused=1.0,
                    gemm_tier="ll_bf16" if ll else "cuBLAS",
                    ll_over_cublas=0.5 if ll else float("nan"),
                    norm_marginal_us=0.25,
                    serving_equiv_us=0.25 + (1.0 if ll else 2.0) + 2.0,
                    serving_over_fused=(3.25 if ll else 4.25) / 2.0,
                    plugin_equiv_us=0.25 + (1.0 if ll else 2.0) + 2.0,
                    plugin_over_fused=(3.25 if ll else 4.25) / 2.0,
                    check="ok",
                    logit_err=0.001,
                    ids_vs_chain=1.0,
                    ll_err=1e-6 if ll else float("nan"),
                )
            )
    return rows


STAMP = {
    "date": "2027-01-02 10:00:00 UTC",
    "gpu": "Test GPU",
    "L2_bytes": str(H200_L2),
    "layer_bytes": str(LAYER_BYTES),
    "impl_gemm_ll": "vllm 0.26.0 ll_bf16_gemm (installed), nvidia-cutlass-dsl 4.6.0",
    "gemm_ll_vllm": "0.26.0",
    "gemm_ll_cutlass_dsl": "4.6.0",
    "gemm_ll_skipped": "T > 16 (GateLinear dispatches cuBLAS)",
    "impl_tail": "torch.compile (Inductor)",
}


def test_report_has_ll_columns_the_serving_table_and_its_formula(tmp_path):
    rows = _rows_with_extras()
    base = bench_router.write_results(rows, STAMP, tmp_path, "cache-both", model_layers=None)
    assert base.name == "bench_router_Test_GPU_2027-01-02_cache-both"
    report = Path(f"{base}.md").read_text()
    assert "vllm 0.26.0 ll_bf16_gemm (installed), nvidia-cutlass-dsl 4.6.0, called as" in report
    assert "`-` where: T > 16 (GateLinear dispatches cuBLAS)." in report
    hbm = report.index("### Serving-equivalent, L=217")
    assert report.index(bench_router.SERVING_FORMULA, hbm) < report.index("layer tail |", hbm)
    cells = [row_cells(line) for line in report.splitlines() if line.startswith("|")]
    # main table: the ll columns and chain ll / fused; T=64 has '-' there
    assert ["8", *["2.00"] * 10, "1.00", "4.00", "1.00x", "1.00x", "2.00x", "ok"] in cells
    assert ["64", *["2.00"] * 10, "-", "-", "1.00x", "1.00x", "-", "ok"] in cells
    # serving table: tail, tail + norm, marginal, tier, its GEMM, routing vLLM, serving,
    # routing ours, plugin, fused, the two ratios
    assert ["8", "3.00", "3.25", "0.25", "ll_bf16", "1.00", "2.00", "3.25", "2.00", "3.25"] + [
        "2.00", "1.62x", "1.62x",
    ] in cells  # fmt: skip
    assert ["64", "3.00", "3.25", "0.25", "cuBLAS", "2.00", "2.00", "4.25", "2.00", "4.25"] + [
        "2.00", "2.12x", "2.12x",
    ] in cells  # fmt: skip
    summary = "\n".join(bench_router.summary_lines(rows, None))
    assert bench_router.SERVING_FORMULA in summary

    back = bench_router.read_csv_rows(f"{base}.csv")
    assert len(back) == 4 and back[0]["T"] == 8 and back[0]["gemm_tier"] == "ll_bf16"
    assert math.isnan(back[1]["gemm_ll_us"]) and back[1]["serving_equiv_us"] == 4.25
    short = bench_router.short_table_lines(back)
    assert row_cells(short[0]) == [
        "T", "L", "weights", "cuBLAS", "ll_bf16", "chain cuBLAS", "chain ll", "serving-eq",
        "plugin-eq", "fused", "check",
    ]  # fmt: skip
    assert row_cells(short[2]) == ["8", "217", "HBM", "2.00", "1.00", "2.00", "4.00", "3.25"] + [
        "3.25",
        "2.00",
        "ok",
    ]


def test_anchor_files_and_their_comparison(tmp_path):
    def anchors(ll_us, cublas_us):
        return [
            dict(T=t, layers=layers, weights_from=where, weights_MB=1.0, gemm_us=cublas_us,
                 gemm_ll_us=ll_us, fused_us=3.0, gemm_tier="ll_bf16",
                 ll_over_cublas=ll_us / cublas_us, check="ok", logit_err=0.0,
                 ids_vs_chain=1.0, ll_err=0.0)
            for layers, where in ((217, "HBM"), (30, "L2"))
            for t in (1, 16)
        ]  # fmt: skip

    base_a = bench_router.write_anchor_results(anchors(2.0, 4.0), STAMP, tmp_path, "a")
    stamp_b = {**STAMP, "gemm_ll_vllm": "0.34.0", "gemm_ll_cutlass_dsl": "4.8.0"}
    base_b = bench_router.write_anchor_results(anchors(1.5, 4.4), stamp_b, tmp_path, "b")
    assert base_a.name == "bench_router_anchors_Test_GPU_2027-01-02_a"
    report = Path(f"{base_a}.md").read_text()
    assert "gate GEMM ll_bf16: vllm 0.26.0 ll_bf16_gemm (installed)" in report
    assert ["16", "4.00", "2.00", "3.00", "0.50x", "ok"] in [
        row_cells(line) for line in report.splitlines() if line.startswith("|")
    ]
    lines = compare_anchors.comparison_lines(
        bench_router.read_csv_rows(f"{base_a}.csv"), bench_router.read_csv_rows(f"{base_b}.csv")
    )
    cells = [row_cells(line) for line in lines[2:]]
    assert len(cells) == 4 and cells[0][:3] == ["1", "217", "HBM"]
    # ll 2.0 -> 1.5 (0.75x), cuBLAS 4.0 -> 4.4 (1.10x), fused 1.00x; 0.75 / 1.1 = 0.68x
    assert cells[0][3:] == ["2.00", "1.50", "0.75x", "1.10x", "1.00x", "0.68x"]


@pytest.mark.parametrize(
    ("vllm_version", "capability", "expected"),
    [
        ("0.26.0", (9, 0), "cuda-sm90 vLLM 0.26.0: own kernel at T = 17-64"),
        ("0.26.0", (10, 0), "no split column: no cuda-other row for vLLM 0.26.0 splits"),
        ("0.32.0", (9, 0), "no split column: no cuda-sm90 row for vLLM 0.32.0 splits"),
    ],
)
def test_split_policy_reads_the_packaged_row(monkeypatch, vllm_version, capability, expected):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: vllm_version)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability)
    own, label = bench_router.split_policy("cuda")
    assert label == expected
    assert (own is not None) == label.startswith("cuda-sm90 vLLM 0.26.0")
