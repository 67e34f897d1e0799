"""The routing launch sweep's ``--write-table``: the rows it chooses from (faked) timings,
written in the packaged tables' schema with the run's provenance, read back by the
runtime's loader."""

import dataclasses
import json

from benchmarks.tuning import sweep_launch_table, table_writer
from vllm_gemma4_router.routing.launch_table import LaunchConfig, load_launch_table, table_file

STAMP = {
    "date": "2026-12-05 12:00:00 UTC",
    "device": "Test GPU",
    "gpu": "Test GPU",
    "driver": "999.1",
    "torch": "2.13.0",
    "triton": "3.9.0",
    "argv": "python -m benchmarks.tuning.sweep_launch_table --shapes 128x8 --write-table t.json",
}
FAST = LaunchConfig(4, 1, register_picks=False)
STEADY = LaunchConfig(2, 2)


def _row(config, num_tokens, us, ok=True, dtype="float32", family="randn", experts=128):
    base = dict(dtype=dtype, family=family, E=experts, K=8, T=num_tokens, mode="hot")
    return {**base, "method": "ours", **dataclasses.asdict(config), "us": us, "ok": ok}


def _rows():
    return [
        # bucket 0 (T <= 4): FAST is best at T=1 by far, a little slower at T=4
        _row(FAST, 1, 1.0),
        _row(STEADY, 1, 2.0),
        _row(FAST, 4, 1.1),
        _row(STEADY, 4, 1.0),
        # bucket 1: STEADY at both points; a wrong result is never chosen
        _row(STEADY, 16, 1.5),
        _row(FAST, 16, 1.0, ok=False),
        _row(STEADY, 1024, 2.0, family="gemm_fp32"),
        # bf16, E=96 (BLOCK_E 128), bucket 5
        _row(FAST, 262144, 40.0, dtype="bfloat16", experts=96),
        _row(STEADY, 262144, 41.0, dtype="bfloat16", experts=96),
        {**_row(STEADY, 1, 9.0), "method": "vllm"},  # a peer: not a candidate
        _row(STEADY, 1, 1.0, experts=1024),  # a width the table has no rows for
    ]


def test_choose_rows_takes_the_smallest_geometric_mean_per_bucket():
    chosen = sweep_launch_table.choose_rows(_rows())
    assert chosen == {
        (True, 128, 0): FAST,  # 1.0 / 1.1 over best beats 2.0 / 1.0
        (True, 128, 1): STEADY,
        (False, 128, 5): FAST,
        (True, 1024, 0): STEADY,
    }


def test_write_table_updates_the_covered_rows_with_this_runs_provenance(tmp_path):
    path = tmp_path / "cuda.json"
    skipped = sweep_launch_table.write_table(
        path, _rows(), STAMP, ["benchmarks/results/x.csv"], "cuda", "tag"
    )
    assert skipped == [(True, 1024, 0)]
    bounds, table = load_launch_table(path)
    _, packaged = load_launch_table(table_file("cuda"))
    assert table[True, 128][:2] == (FAST, STEADY) and table[False, 128][5] == FAST
    changed = {(True, 128, 0), (True, 128, 1), (False, 128, 5)}
    for key, configs in packaged.items():
        for bucket, config in enumerate(configs):
            if (*key, bucket) not in changed:
                assert table[key][bucket] == config
    data = json.loads(path.read_text())
    entry = data["provenance"]["sweeps"][-1]
    assert entry == {
        "id": "Test_GPU_2026-12-05_tag",
        "sweep": [STAMP["argv"]],
        "device": "Test GPU",
        "versions": {"driver": "999.1", "torch": "2.13.0", "triton": "3.9.0"},
        "date": "2026-12-05 12:00:00 UTC",
        "results": ["benchmarks/results/x.csv"],
        "notes": entry["notes"],
    }
    assert "geometric mean" in entry["notes"]
    mine = [(r["fp32_logits"], r["block_e"], r["bucket"]) for r in data["rows"]]
    mine = {k for k, r in zip(mine, data["rows"], strict=True) if r["provenance"] == entry["id"]}
    assert mine == changed
    assert path.read_text() == table_writer.dump_table(data)  # one row per line

    # A second run starts from the file it wrote: both entries kept, ids distinct.
    sweep_launch_table.write_table(path, _rows()[:2], STAMP, ["b.csv"], "cuda", "tag")
    ids = [s["id"] for s in json.loads(path.read_text())["provenance"]["sweeps"]]
    assert ids[-2:] == ["Test_GPU_2026-12-05_tag", "Test_GPU_2026-12-05_tag_2"]


def test_the_packaged_tables_are_written_as_the_writer_writes():
    for platform in ("cuda", "hip"):
        text = table_file(platform).read_text()
        assert table_writer.dump_table(json.loads(text)) == text
