"""The kernel benchmark's report writer (runs on CPU with synthetic timings)."""

import csv
import math

import pytest

from benchmarks.common.tables import markdown_table, row_cells
from benchmarks.common.timing import geomean
from benchmarks.kernel import bench_kernel


def test_report_has_stamp_speedups_and_geomeans(tmp_path):
    rows = []
    for method, factor in (("ours", 1.0), ("vllm", 2.0), ("sglang", 3.0), ("copy", 0.5)):
        for mode, slower in (("hot", 1.0), ("cold", 1.5)):
            for num_tokens, base_us in ((1, 2.0), (4096, 8.0)):
                rows.append(
                    dict(
                        method=method,
                        mode=mode,
                        correct=True,
                        us=base_us * factor * slower,
                        dtype="float32",
                        family="gemm_fp32",
                        E=128,
                        K=8,
                        T=num_tokens,
                        bytes=num_tokens * (128 * 4 + 64),
                    )
                )
    stamp = {"gpu": "Test GPU", "torch": "t", "triton": "tr", "date": "2026-12-01"}
    bench_kernel.write_results(rows, stamp, 4000.0, tmp_path, "unit", 128, 8)

    csv_text = (tmp_path / "bench_kernel_Test_GPU_unit.csv").read_text().splitlines()
    assert csv_text[0].startswith("# gpu=Test GPU") and "date=2026-12-01" in csv_text[0]
    parsed = list(csv.DictReader(csv_text[1:]))
    assert len(parsed) == len(rows) and parsed[0]["method"] == "ours"
    report = (tmp_path / "bench_kernel_Test_GPU_unit.md").read_text()
    assert "## float32 (gemm_fp32), E=128, K=8, hot" in report
    assert "## float32 (gemm_fp32), E=128, K=8, cold" in report
    rows_md = [row_cells(line) for line in report.splitlines() if line.startswith("|")]
    assert ["4096", "8.00", "16.00", "24.00", "4.00"] in [r[:5] for r in rows_md]  # hot
    assert ["4096", "12.00", "24.00", "36.00", "6.00"] in [r[:5] for r in rows_md]  # cold
    assert "vllm: geomean 2.00x (min 2.00x)" in report
    assert "sglang: geomean 3.00x (min 3.00x)" in report
    # bytes / time: 4096 * 576 B in 8 us = 295 GB/s = 7 % of the 4000 GB/s floor
    assert ["295", "7%", "2.00x", "3.00x"] in [r[-4:] for r in rows_md]


def test_stats_split_decode_sizes_from_the_rest():
    ratios = {1: 1.0, 256: 4.0, 4096: 2.0, 262144: 8.0, 255: 0.5}
    stats = bench_kernel._stats(ratios)
    assert stats["min"] == 0.5 and stats["small_min"] == 0.5
    assert abs(stats["decode"] - 2.0) < 1e-12  # geomean of 1, 4, 2 (powers of two <= 16384)
    assert abs(stats["all"] - (1 * 4 * 2 * 8 * 0.5) ** 0.2) < 1e-12


def test_geomean_leaves_out_what_has_no_logarithm():
    assert geomean([1.0, 4.0, 2.0]) == pytest.approx(2.0)
    assert geomean([2.0, float("nan"), 0.0, -1.0, None, 8.0]) == pytest.approx(4.0)
    assert math.isnan(geomean([])) and math.isnan(geomean([float("nan")]))


def test_markdown_table_keeps_cells_as_written_and_aligns_columns():
    table = markdown_table(["T", "us"], [[16, "3.10"], [4096, "nan"]], ["right", "center"])
    lines = table.splitlines()
    assert [row_cells(line) for line in lines] == [
        ["T", "us"],
        [row_cells(lines[1])[0], row_cells(lines[1])[1]],
        ["16", "3.10"],
        ["4096", "nan"],
    ]
    rule = row_cells(lines[1])
    assert rule[0].endswith(":") and not rule[0].startswith(":")
    assert rule[1].startswith(":") and rule[1].endswith(":")
    assert len({len(line) for line in lines}) == 1  # padded to one width
