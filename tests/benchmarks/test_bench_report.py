"""The kernel benchmark's report writer (runs on CPU with synthetic timings)."""

import csv

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
    assert "| 4096 | 8.00 | 16.00 | 24.00 | 4.00 |" in report  # hot
    assert "| 4096 | 12.00 | 24.00 | 36.00 | 6.00 |" in report  # cold
    assert "vllm: geomean 2.00x (min 2.00x)" in report
    assert "sglang: geomean 3.00x (min 3.00x)" in report
    # bytes / time: 4096 * 576 B in 8 us = 295 GB/s = 7 % of the 4000 GB/s floor
    assert "| 295 | 7% | 2.00x | 3.00x |" in report


def test_stats_split_decode_sizes_from_the_rest():
    ratios = {1: 1.0, 256: 4.0, 4096: 2.0, 262144: 8.0, 255: 0.5}
    stats = bench_kernel._stats(ratios)
    assert stats["min"] == 0.5 and stats["small_min"] == 0.5
    assert abs(stats["decode"] - 2.0) < 1e-12  # geomean of 1, 4, 2 (powers of two <= 16384)
    assert abs(stats["all"] - (1 * 4 * 2 * 8 * 0.5) ** 0.2) < 1e-12
