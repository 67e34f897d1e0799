"""The fused-router launch sweep's CPU parts: the check, the skip of wrong configs, the best
table and its snippet. Configs and launches are stand-ins with the launcher's interface
(a NamedTuple config, ``launch_with_config(config, ..., out)``); timing is faked."""

import csv
from typing import NamedTuple

import pytest
import torch

from benchmarks.kernel import bench_router
from benchmarks.tuning import sweep_fused_router
from vllm_gemma4_router.fused_router.reference import gemma4_fused_router_reference


class Cfg(NamedTuple):
    block_t: int
    num_warps: int


def _problem(layers=3, hidden=64, experts=16, topk=4):
    gen = torch.Generator().manual_seed(2)
    sets = bench_router.make_layer_sets(layers, hidden, experts, torch.bfloat16, "cpu", gen)
    return sweep_fused_router.Problem(*sets, eps=1e-6, topk=topk)


def _reference_into(out, *args):
    for dst, value in zip(out, gemma4_fused_router_reference(*args), strict=True):
        dst.copy_(value)


def fake_launch(config, h, scale, w, pes, eps, topk, out):
    if config.num_warps == 3:
        raise RuntimeError("out of resources: shared memory\nmore text")
    _reference_into(out, h, scale, w, pes, eps, topk)
    if config.block_t == 99:  # wrong order of the picks
        out[2].copy_(out[2].flip(1))
    if config.block_t == 77:  # right routing of wrong logits
        out[0].mul_(1.5)
        from vllm_gemma4_router import gemma4_routing_reference

        w_, ids = gemma4_routing_reference(out[0], topk, pes)
        out[1].copy_(w_)
        out[2].copy_(ids)


def fake_table(h, scale, w, pes, eps, topk, *, out):
    _reference_into(out, h, scale, w, pes, eps, topk)


def test_arguments():
    args = sweep_fused_router.parse_args([])
    assert args.tokens[0] == 1 and args.tokens[-1] == 16384 and len(args.tokens) == 15
    assert args.layers == "auto" and args.logit_rtol == 1e-3
    assert sweep_fused_router.parse_args(["--layers", "30"]).layers == "30"
    with pytest.raises(SystemExit):
        sweep_fused_router.parse_args(["--layers", "0"])


def test_sweep_point_times_only_configs_that_check():
    candidates = [Cfg(16, 4), Cfg(32, 4), Cfg(99, 4), Cfg(77, 4), Cfg(16, 3), Cfg(64, 8)]
    timed = []

    def timer(fn, layers):  # fn(i) per set; us from the config under test
        for i in range(layers):
            fn(i)
        timed.append(layers)
        return {1: 5.0, 2: 4.0, 3: 4.4, 4: 6.0}[len(timed)]

    rows = sweep_fused_router.sweep_point(
        _problem(), 5, 3, candidates, fake_launch, fake_table, timer, 1e-3, torch.bfloat16, "cpu"
    )
    assert [r["method"] for r in rows] == ["config"] * 6 + ["table"]
    assert timed == [3, 3, 3, 3]  # 16/4, 32/4, 64/8, the table
    by = {r["config"]: r for r in rows}
    assert by["block_t=16, num_warps=4"]["us"] == 5.0 and by["block_t=16, num_warps=4"]["ok"]
    assert by["block_t=99, num_warps=4"]["reason"] == "ids != reference routing of its logits"
    assert by["block_t=77, num_warps=4"]["reason"].startswith("logits 0.5")
    assert by["block_t=16, num_warps=3"]["reason"] == (
        "launch: RuntimeError: out of resources: shared memory"
    )
    assert all(r["us"] != r["us"] for r in rows if not r["ok"])  # failed ones not timed
    assert rows[-1]["ok"] and rows[-1]["us"] == 6.0 and rows[-1]["config"] == ""

    best = sweep_fused_router.best_per_t(rows)
    assert len(best) == 1
    b = best[0]
    assert b["config"] == "block_t=32, num_warps=4" and b["best_us"] == 4.0
    assert b["second_us"] == 4.4 and b["margin_pct"] == 10.0
    assert b["table_us"] == 6.0 and b["table_over_best"] == 1.5
    assert (b["timed"], b["failed"]) == (3, 3)


def test_sweep_point_producer_precedes_every_timed_call_and_is_subtracted():
    """``--producer``: the producer alone is timed first, then each checked config with
    a copy into the hidden states ahead of every call; the rows hold the difference."""
    seen = []

    def launch(config, h, *args):
        seen.append(h.clone())
        fake_launch(config, h, *args)

    def timer(fn, layers):
        for i in range(layers):
            fn(i)
        timer.calls += 1
        return 2.0 if timer.calls == 1 else 7.5  # the producer, then producer + call

    timer.calls = 0
    rows = sweep_fused_router.sweep_point(
        _problem(), 5, 3, [Cfg(16, 4)], launch, fake_table, timer, 1e-3, torch.bfloat16, "cpu",
        producer=True,
    )  # fmt: skip
    assert timer.calls == 3  # producer, the config, the table
    assert rows[0]["ok"] and rows[0]["us"] == 5.5 and rows[0]["producer_us"] == 2.0
    assert rows[-1]["us"] == 5.5
    assert len(seen) == 4 and all(torch.equal(x, seen[0]) for x in seen)  # check + 3 timed


def _rows():
    rows = []
    for num_tokens, times in ((1, (3.0, 3.3)), (4096, (9.0, 9.9)), (16384, (20.0,))):
        for n, us in enumerate(times):
            rows.append(
                dict(
                    T=num_tokens,
                    layers=217,
                    method="config",
                    config_type="Cfg",
                    config=f"block_t={16 << n}, num_warps=4",
                    us=us,
                    ok=True,
                    reason="",
                    logit_err=1e-6,
                )
            )
        rows.append(
            dict(
                T=num_tokens,
                layers=217,
                method="config",
                config_type="Cfg",
                config="block_t=99, num_warps=4",
                us=float("nan"),
                ok=False,
                reason="ids != reference routing of its logits",
                logit_err=1e-6,
            )
        )
        rows.append({**rows[-2], "method": "table", "config": "", "config_type": "", "us": 10.0})
    return rows


def test_report_and_snippet(tmp_path):
    stamp = {
        "date": "2026-12-01 11:00:00 UTC",
        "gpu": "Test GPU",
        "layers_note": "L=217 weight sets (HBM, 158 MB)",
        "logit_rtol": "0.001",
    }
    base = sweep_fused_router.write_results(_rows(), stamp, tmp_path, "")
    assert base.name == "sweep_fused_router_Test_GPU_2026-12-01"
    lines = (tmp_path / f"{base.name}.csv").read_text().splitlines()
    assert lines[0].startswith("# date=2026-12-01") and "gpu=Test GPU" in lines[0]
    assert len(list(csv.DictReader(lines[1:]))) == len(_rows())
    report = (tmp_path / f"{base.name}.md").read_text()
    assert "| 1 | 3.000 | block_t=16, num_warps=4 | 3.300 | +10.0 % | 10.000 | 3.33x | 2 | 1 |" in (
        report
    )
    assert "| 16384 | 20.000 | block_t=16, num_warps=4 | - | - | 10.000 | 0.50x | 1 | 1 |" in report
    assert "| 4096 | config | block_t=99, num_warps=4 | ids != reference routing" in report

    text = sweep_fused_router.snippet(sweep_fused_router.best_per_t(_rows()), stamp)
    assert text.splitlines()[0] == (
        "# benchmarks/tuning/sweep_fused_router.py on Test GPU, 2026-12-01 11:00:00 UTC, "
        "L=217 weight sets (HBM, 158 MB)"
    )
    namespace = {"Cfg": Cfg}
    exec(text, namespace)  # the snippet is Python that rebuilds the configs
    assert namespace["BEST_FUSED_CONFIGS"] == {
        1: Cfg(16, 4),
        4096: Cfg(16, 4),
        16384: Cfg(16, 4),
    }
    assert "# 3.000 us, 2nd +10.0 %" in text and "# 20.000 us\n" in text + "\n"
    assert "```python\n" + text + "\n```" in report


def _table_rows():
    """Sweep rows of the real config types (their ``config_text``), faked times."""
    from vllm_gemma4_router.fused_router.launch_table import FusedLaunchConfig, GemmPathConfig

    split = FusedLaunchConfig(16, 64, 256, 256, 4, 2)
    other = FusedLaunchConfig(16, 32, 256, 512, 8, 2)
    whole = FusedLaunchConfig(32, 128, 64, 2**31, 4, 3, 8)
    gemm = GemmPathConfig(1, 4096, 4, 2, 1, "exact", "in_row")
    times = [
        (1, split, 8.0),
        (1, other, 8.5),
        (16, split, 9.0),
        (16, other, 8.9),  # bucket 0: split (8.0/8.0, 9.0/8.9) beats other
        (1024, whole, 50.0),
        (1024, gemm, 14.0),
        (2048, gemm, 18.0),
    ]
    rows = [
        dict(
            T=t,
            layers=260,
            method="config",
            config_type=type(c).__name__,
            config=sweep_fused_router.config_text(c),
            us=us,
            ok=True,
            reason="",
            logit_err=1e-6,
        )
        for t, c, us in times
    ]
    rows.append({**rows[0], "config": sweep_fused_router.config_text(other), "ok": False, "us": 1})
    rows.append({**rows[0], "method": "table", "config": "", "config_type": "", "us": 7.0})
    return rows, split, whole, gemm


def _base_table(path, bounds):
    """A valid fused table file at ``path`` with token ``bounds``: the packaged file's
    provenance, GEMM path and last row, its first row repeated below that."""
    import json

    from vllm_gemma4_router.fused_router import launch_table

    data = json.loads(launch_table.fused_table_file().read_text())
    first, last = data["rows"][0], data["rows"][-1]
    data["token_bucket_bounds"] = list(bounds)
    data["rows"] = [dict(first, bucket=b) for b in range(len(bounds))]
    data["rows"].append(dict(last, bucket=len(bounds)))
    path.write_text(json.dumps(data))
    return launch_table.load_fused_table(path)


def test_write_table_writes_the_fused_schema_with_the_runs_provenance(tmp_path):
    import json

    rows, split, whole, gemm = _table_rows()
    bounds = (16, 64, 256, 1024, 4096)
    kernel, gemm_fields = sweep_fused_router.choose_rows(rows, bounds)
    assert kernel == {0: split._asdict(), 3: whole._asdict()} and gemm_fields == gemm._asdict()

    stamp = {
        "date": "2026-12-05 12:00:00 UTC",
        "gpu": "Test GPU",
        "driver": "999.1",
        "torch": "2.13.0",
        "triton": "3.9.0",
        "argv": "python -m benchmarks.tuning.sweep_fused_router --write-table f.json",
        "shape": "H=2816 E=128 K=8 bfloat16 eps=1e-06",
        "layers_note": "L=260 weight sets (HBM, 189 MB)",
    }
    path = tmp_path / "fused.json"
    packaged = _base_table(path, bounds)  # the base the sweep's rows replace
    results = ["benchmarks/results/s.csv", "benchmarks/results/s.md"]
    table = sweep_fused_router.write_table(path, rows, stamp, results, "")
    assert table.rows[0] == split and table.rows[3] == whole
    assert table.rows[1:3] == packaged.rows[1:3] and table.rows[4:] == packaged.rows[4:]
    assert table.gemm_path_config == gemm and table.gemm_path_tokens == packaged.gemm_path_tokens
    data = json.loads(path.read_text())
    entry = data["provenance"]["sweeps"][-1]
    assert entry["id"] == "Test_GPU_2026-12-05" and entry["sweep"] == [stamp["argv"]]
    assert entry["device"] == "Test GPU" and entry["date"] == stamp["date"]
    assert entry["versions"] == {"driver": "999.1", "torch": "2.13.0", "triton": "3.9.0"}
    assert entry["results"] == results and "L=260" in entry["notes"]
    assert [r["provenance"] == entry["id"] for r in data["rows"]] == [1, 0, 0, 1, 0, 0]
    assert data["gemm_path"]["provenance"] == entry["id"]
    assert data["gemm_path"]["tokens_provenance"] != entry["id"]


def test_write_table_option():
    args = sweep_fused_router.parse_args(["--write-table", "out/fused.json"])
    assert str(args.write_table) == "out/fused.json"
    assert sweep_fused_router.parse_args([]).write_table is None


def test_write_table_buckets_by_the_base_files_bounds(tmp_path):
    """A base table with other bucket bounds than the packaged one gets each T's best
    config in its own bucket, not in the packaged table's bucket of that T."""
    from vllm_gemma4_router.fused_router import launch_table

    rows, split, _, _ = _table_rows()
    register = launch_table.FusedLaunchConfig(1, 4, 256, 512, 2, 2)
    rows.insert(0, {**rows[0], "config": sweep_fused_router.config_text(register), "us": 6.0})
    path = tmp_path / "fused.json"
    _base_table(path, (1, 32, 64, 256, 1024, 4096))
    stamp = {
        "date": "2026-12-06 14:00:00 UTC",
        "gpu": "Test GPU",
        "argv": "sweep",
        "torch": "2.11.0",
    }
    table = sweep_fused_router.write_table(path, rows, stamp, ["r.csv"], "split")
    assert table.bucket_bounds == (1, 32, 64, 256, 1024, 4096)
    assert table.rows[0] == register  # T = 1: bucket 0 of the base file
    # T = 16 alone in bucket 1: the config fastest there, not the best over T = 1 and 16
    assert table.rows[1] == launch_table.FusedLaunchConfig(16, 32, 256, 512, 8, 2) != split
