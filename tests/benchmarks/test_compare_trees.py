"""compare_trees' arithmetic (CPU): the floor is the op's bytes over the copy bandwidth,
the summary keeps each source's median, spread and share of the floor, and the plot is
drawn back from the CSV it wrote."""

from __future__ import annotations

import random
import statistics

import pytest

from benchmarks.kernel import compare_trees as ct


def test_floor_counts_logits_outputs_and_the_mask():
    gbs = random.uniform(2000.0, 5000.0)
    tokens = random.choice([1, 777, 262144])
    fp32 = tokens * 128 * 4 + tokens * 8 * (4 + 4)
    assert ct.floor_us(tokens, "float32", "none", gbs) == pytest.approx(fp32 / (gbs * 1e3))
    assert ct.floor_us(tokens, "float32", "real", gbs) == pytest.approx(
        (fp32 + tokens) / (gbs * 1e3)
    )
    bf16 = tokens * 128 * 2 + tokens * 8 * 8
    assert ct.floor_us(tokens, "bfloat16", "none", gbs) == pytest.approx(bf16 / (gbs * 1e3))
    # the H200 figure: 262144 fp32 rows with the mask at 4233 GB/s ~ 35.7 us
    assert ct.floor_us(262144, "float32", "real", 4233.0) == pytest.approx(35.7, abs=0.1)


def test_summary_keeps_medians_spreads_ratios_and_floor_shares():
    before = [random.uniform(50, 70) for _ in range(3)]
    after = [random.uniform(40, 60) for _ in range(3)]
    peer = [random.uniform(300, 350) for _ in range(3)]
    key = ("routing", "float32", "real", 262144)
    fused = ("fused_router", "bfloat16", "none", 16)
    samples = {
        key: {"before": before, "after": after, "peer": peer},
        fused: {"before": [5.0, 5.2, 5.1], "after": [4.0, 4.4, 4.2]},
    }
    gbs = 2979.0
    table = ct.summarise(samples, ["before", "after", "peer"], gbs)
    row = next(r for r in table if (r["op"], r["dtype"], r["mask"], r["tokens"]) == key)
    floor = ct.floor_us(262144, "float32", "real", gbs)
    assert row["floor_us"] == pytest.approx(floor, abs=1e-3)
    assert row["after_us"] == pytest.approx(statistics.median(after), abs=1e-3)
    assert row["after_spread_us"] == pytest.approx(max(after) - min(after), abs=1e-3)
    assert row["after_of_floor"] == pytest.approx(floor / statistics.median(after), abs=1e-3)
    assert row["peer_vs_before"] == pytest.approx(
        statistics.median(peer) / statistics.median(before), abs=2e-3
    )
    fused_row = next(r for r in table if r["op"] == "fused_router")
    assert "floor_us" not in fused_row and "peer_us" not in fused_row
    assert fused_row["after_vs_before"] == pytest.approx(4.2 / 5.1, abs=1e-3)


def test_the_csv_gives_every_row_every_column(tmp_path):
    samples = {
        ("fused_router", "bfloat16", "none", 16): {"a": [5.0], "b": [4.0]},
        ("routing", "float32", "real", 65536): {"a": [20.0], "b": [16.0], "vllm": [88.0]},
    }
    table = ct.summarise(samples, ["a", "b", "vllm"], 2979.0)
    ct.write_table_csv(tmp_path / "t.csv", {"device": "test", "copy_gbs": "2979"}, table)
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0] == "# device=test, copy_gbs=2979"
    import csv

    fused, routing = csv.DictReader(lines[1:])
    assert fused["op"] == "fused_router" and fused["floor_us"] == fused["vllm_us"] == ""
    assert float(routing["vllm_us"]) == 88.0 and float(routing["floor_us"]) > 0


def test_replot_draws_the_png_from_the_csv(tmp_path):
    samples = {
        ("routing", dtype, mask, tokens): {
            "before": [random.uniform(1, 9) for _ in range(3)],
            "after": [random.uniform(1, 9) for _ in range(3)],
        }
        for dtype in ("float32", "bfloat16")
        for mask in ("none", "real")
        for tokens in (1, 64, 4096)
    }
    table = ct.summarise(samples, ["before", "after"], 3000.0)
    ct.write_table_csv(tmp_path / "compare_trees.csv", {"device": "test"}, table)
    ct.replot(tmp_path)
    png = (tmp_path / "compare_trees.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_main_interleaves_sources_and_writes_the_tables(tmp_path, monkeypatch):
    # The workers need a GPU: stand-ins return rows in their format, so the driver's
    # interleaving, the copy floor and the written files are what is under test.
    calls = []
    times = {"before": 60.0, "after": 50.0, "vllm": 340.0}

    def fake_worker(spec):
        name = next(n for n, t in times.items() if spec["path"].endswith(n))
        calls.append(name)
        jitter = random.uniform(-0.5, 0.5)
        rows = [{"op": "copy", "gbs": 3000.0 + 10 * len(calls)}]
        for tokens in spec["tokens"]:
            for mask in spec["masks"]:
                rows.append(
                    {
                        "op": "routing",
                        "dtype": "float32",
                        "mask": mask,
                        "tokens": tokens,
                        "us": times[name] + jitter,
                    }
                )
        return rows

    monkeypatch.setattr(ct, "_run_worker", fake_worker)
    monkeypatch.setattr(
        "sys.argv",
        [
            "compare_trees",
            "--tree",
            "before=/t/before",
            "--tree",
            "after=/t/after",
            "--peer",
            "vllm=/p/vllm",
            "--repeats",
            "2",
            "--tokens",
            "4096,262144",
            "--masks",
            "none,real",
            "--ops",
            "routing",
            "--out",
            str(tmp_path),
        ],
    )
    ct.main()
    assert calls == ["before", "after", "vllm"] * 2
    lines = (tmp_path / "compare_trees.csv").read_text().splitlines()
    assert lines[0].startswith("# ") and "copy_gbs=3035" in lines[0]  # median of 6 copies
    import csv

    rows = list(csv.DictReader(lines[1:]))
    assert len(rows) == 4
    big = next(r for r in rows if r["tokens"] == "262144" and r["mask"] == "real")
    floor = ct.floor_us(262144, "float32", "real", 3035.0)
    assert float(big["floor_us"]) == pytest.approx(floor, abs=1e-3)
    assert float(big["after_vs_before"]) == pytest.approx(50 / 60, abs=0.03)
    assert float(big["vllm_of_floor"]) == pytest.approx(floor / 340, abs=1e-3)
    assert "peers: {'vllm': '/p/vllm'}" in (tmp_path / "compare_trees.md").read_text()
    assert (tmp_path / "compare_trees.png").read_bytes().startswith(b"\x89PNG")


def test_main_refuses_an_unknown_mask(monkeypatch):
    monkeypatch.setattr(
        "sys.argv",
        ["compare_trees", "--tree", "a=/a", "--tree", "b=/b", "--masks", "none,half"],
    )
    with pytest.raises(SystemExit):
        ct.main()


def test_sized_copies_pool_into_their_routing_row_and_make_no_row_of_their_own():
    copies = {name: [random.uniform(5, 8) for _ in range(3)] for name in ("a", "b")}
    routing = ("routing", "bfloat16", "none", 65536)
    samples = {
        routing: {"a": [11.0, 11.2, 10.9], "b": [10.8, 11.0, 11.1]},
        ("sized_copy", "bfloat16", "none", 65536): copies,
    }
    table = ct.summarise(samples, ["a", "b"], 2979.0)
    assert [r["op"] for r in table] == ["routing"]
    pooled = copies["a"] + copies["b"]
    assert table[0]["sized_copy_us"] == pytest.approx(statistics.median(pooled), abs=1e-3)
    assert ct.op_bytes(65536, "bfloat16", "none") == 65536 * (128 * 2 + 8 * 8)
