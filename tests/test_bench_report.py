"""The kernel benchmark's report writer (runs on CPU with synthetic timings)."""

import csv

from benchmarks import bench_kernel


def test_report_has_stamp_speedups_and_geomeans(tmp_path):
    rows = []
    for method, factor in (("ours", 1.0), ("vllm", 2.0), ("sglang", 3.0), ("copy", 0.5)):
        for num_tokens, base_us in ((1, 2.0), (4096, 8.0)):
            rows.append(
                dict(
                    method=method,
                    dtype="bfloat16",
                    E=128,
                    K=8,
                    T=num_tokens,
                    correct=True,
                    graph_us=base_us * factor,
                    eager_us=base_us * 4,
                    bytes=num_tokens * (128 * 2 + 64),
                )
            )
    stamp = {"gpu": "Test GPU", "torch": "t", "triton": "tr", "date": "2026-11-23"}
    bench_kernel.write_results(rows, stamp, 2000.0, tmp_path, "unit", 128, 8)

    csv_text = (tmp_path / "bench_kernel_Test_GPU_unit.csv").read_text().splitlines()
    assert csv_text[0].startswith("# gpu=Test GPU") and "date=2026-11-23" in csv_text[0]
    parsed = list(csv.DictReader(csv_text[1:]))
    assert len(parsed) == len(rows) and parsed[0]["method"] == "ours"
    report = (tmp_path / "bench_kernel_Test_GPU_unit.md").read_text()
    assert "| 4096 | 8.00 | 16.00 | 24.00 | 4.00 |" in report
    assert "vllm 2.00x (min 2.00x), sglang 3.00x (min 3.00x)" in report
    # bytes / time: 4096 * 320 B in 8 us = 164 GB/s = 8 % of 2000 GB/s
    assert "| 164 | 8% | 2.00x | 3.00x |" in report
