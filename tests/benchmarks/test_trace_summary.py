"""benchmarks.serving.trace_summary on synthetic torch-profiler traces (tests/trace_fixtures.py).

Each trace mimics what vLLM's worker profiler writes: step annotations
(``execute_context_..._generation_...``), the ``gpu_model_runner: forward`` /
``sample`` phases, CPU launch events (a ``cudaGraphLaunch`` for the forward, a
``cudaLaunchKernel`` for the sampler) and GPU kernels tied to them by
``correlation``, with fresh random durations. The expected numbers are computed
from the generated kernels directly, not by the code under test.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import statistics

import pytest
from trace_fixtures import CATEGORY, GEMM, ROUTING
from trace_fixtures import build_trace as _build

from benchmarks.common.tables import row_cells
from benchmarks.serving import trace_summary


@pytest.fixture
def rng() -> random.Random:
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed {seed}")
    return random.Random(seed)


@pytest.mark.parametrize("arm", ["plugin", "in-tree", "native"])
def test_decode_steps_routing_time_and_shares(arm, rng):
    trace, expected = _build(arm, rng)
    summary = trace_summary.summarize(trace)
    assert (summary["steps"], summary["decode_steps"], summary["steps_used"]) == (7, 6, 6)
    assert summary["unattributed_kernels"] == 1
    kernels = sum(1 for e in trace["traceEvents"] if e["cat"] == "kernel")
    assert summary["gpu_events"] == kernels - 1  # all but the stray one, prefill included
    total = sum(step["gpu"] for step in expected)
    routing = [step["routing"] for step in expected]
    assert summary["gpu_us_per_step_median"] == pytest.approx(
        statistics.median(step["gpu"] for step in expected)
    )
    assert summary["routing_us_per_step_median"] == pytest.approx(statistics.median(routing))
    assert summary["routing_share_pct"] == pytest.approx(100 * sum(routing) / total)
    categories = summary["categories"]
    assert set(categories) == {CATEGORY[arm], "router: gate GEMM", "router: norm/scale"}
    assert categories[CATEGORY[arm]]["launches_per_step"] == 3 * len(ROUTING[arm])
    gemm = categories["router: gate GEMM"]
    assert gemm["share_pct"] == pytest.approx(100 * sum(s["gemm"] for s in expected) / total)
    assert gemm["launches_per_step"] == 3
    norm = categories["router: norm/scale"]
    assert norm["us_per_step_mean"] == pytest.approx(statistics.fmean(s["norm"] for s in expected))
    assert summary["routing_neighbors"]["before"][GEMM] == 6 * 3
    assert summary["routing_neighbors"]["after"]["fused_moe_kernel"] == 6 * 3
    assert summary["top_kernels"][0]["share_pct"] > 0
    text = trace_summary.format_summary(summary, title=arm)
    assert [CATEGORY[arm]] in [row_cells(line)[:1] for line in text.splitlines()]
    assert "router: gate GEMM" in text


def test_fused_router_is_the_whole_router(rng):
    trace, expected = _build("fused", rng)
    summary = trace_summary.summarize(trace)
    total = sum(step["gpu"] for step in expected)
    routing = [step["routing"] for step in expected]
    assert summary["routing_us_per_step_median"] == pytest.approx(statistics.median(routing))
    assert summary["routing_share_pct"] == pytest.approx(100 * sum(routing) / total)
    # The GEMM just before it is the attention's, not a gate: nothing else is the router.
    assert set(summary["categories"]) == {CATEGORY["fused"]}
    assert summary["categories"][CATEGORY["fused"]]["launches_per_step"] == 3


def test_all_steps_and_a_trace_without_annotations(rng):
    trace, _ = _build("plugin", rng, decode_steps=3)
    every = trace_summary.summarize(trace, decode_only=False)
    assert every["steps_used"] == 4 and every["window"] == "all steps"
    bare = {
        "traceEvents": [e for e in trace["traceEvents"] if e["cat"] not in ("user_annotation",)]
    }
    whole = trace_summary.summarize(bare)
    assert whole["window"] == "whole trace" and whole["steps"] == 0
    kernels = [e for e in bare["traceEvents"] if e["cat"] == "kernel"]
    routing = sum(e["dur"] for e in kernels if e["name"] == "gemma4_routing_kernel")
    assert whole["routing_share_pct"] == pytest.approx(
        100 * routing / sum(e["dur"] for e in kernels)
    )


def test_pattern_overrides(rng):
    trace, expected = _build("plugin", rng)
    patterns = trace_summary.patterns_with(
        ["routing: ours=", "routing: renamed=^gemma4_routing", "attention=unified_attention"]
    )
    assert "routing: ours" not in dict(patterns)
    summary = trace_summary.summarize(trace, patterns=patterns)
    assert "routing: renamed" in summary["categories"] and "attention" in summary["categories"]
    assert summary["routing_us_per_step_median"] == pytest.approx(
        statistics.median(s["routing"] for s in expected)
    )
    with pytest.raises(ValueError, match="CATEGORY=REGEX"):
        trace_summary.patterns_with(["no-equals"])
    with pytest.raises(ValueError, match="norm_kernels"):
        trace_summary.summarize(trace, norm_kernels=-1)


def test_cli_reads_gzip_and_plain_and_writes_json(rng, tmp_path, capsys):
    trace, expected = _build("in-tree", rng)
    traces = tmp_path / "traces"
    traces.mkdir()
    gz = traces / "rank0.1.pt.trace.json.gz"
    gz.write_bytes(gzip.compress(json.dumps(trace).encode()))
    (traces / "rank1.2.pt.trace.json").write_text(json.dumps(trace["traceEvents"]))
    (traces / "notes.txt").write_text("not a trace")
    assert trace_summary.find_traces(traces) == sorted([gz, traces / "rank1.2.pt.trace.json"])
    out = tmp_path / "summary.json"
    assert trace_summary.main([str(traces), "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert len(results) == 2
    for summary in results.values():
        assert summary["routing_us_per_step_median"] == pytest.approx(
            statistics.median(s["routing"] for s in expected)
        )
    assert "routing: vLLM in-tree" in capsys.readouterr().out
    # A trace with no routing kernel at all is a failure (wrong patterns or arm).
    assert trace_summary.main([str(gz), "--pattern", "routing: vLLM in-tree="]) == 1
    with pytest.raises(ValueError, match="not a Chrome trace"):
        (tmp_path / "bad.json").write_text("{}")
        trace_summary.load_trace(tmp_path / "bad.json")


def test_split_k_gate_gemm_counts_both_kernels(rng):
    trace, expected = _build("plugin", rng, split_k=True)
    summary = trace_summary.summarize(trace)
    total = sum(step["gpu"] for step in expected)
    gemm = summary["categories"]["router: gate GEMM"]
    assert gemm["share_pct"] == pytest.approx(100 * sum(s["gemm"] for s in expected) / total)
    assert gemm["launches_per_step"] == 2 * 3
    norm = summary["categories"]["router: norm/scale"]
    assert norm["us_per_step_mean"] == pytest.approx(statistics.fmean(s["norm"] for s in expected))


def _expected_kernel_times(trace, batch):
    """Per kernel name over the decode steps at ``batch``, from the events themselves."""
    events = trace["traceEvents"]
    steps = [
        e
        for e in events
        if e["cat"] == "user_annotation"
        and e["name"].startswith("execute_context_0(0)")
        and f"generation_{batch}(" in e["name"]
    ]
    step_of = {}
    for e in events:
        if e["cat"] == "cuda_runtime":
            for i, s in enumerate(steps):
                if s["ts"] <= e["ts"] <= s["ts"] + s["dur"]:
                    step_of[e["args"]["correlation"]] = i
    per = {}
    for e in events:
        if e["cat"] == "kernel" and e["args"]["correlation"] in step_of:
            step = step_of[e["args"]["correlation"]]
            per.setdefault(e["name"], {}).setdefault(step, []).append(e["dur"])
    return {
        name: (
            sum(len(v) for v in by.values()) / len(steps),
            statistics.median(d for v in by.values() for d in v),
            statistics.median(sum(by.get(i, [])) for i in range(len(steps))),
        )
        for name, by in per.items()
    }


def test_kernel_times_and_comparison_name_what_moved(rng, tmp_path, capsys):
    before, _ = _build("in-tree", rng, split_k=True)
    after, _ = _build("plugin", rng)
    times = {}
    for label, trace in (("before", before), ("after", after)):
        got = trace_summary.kernel_times(trace, 16)
        want = _expected_kernel_times(trace, 16)
        assert set(got) == set(want)
        for name, (launches, per_launch, per_step) in want.items():
            assert got[name]["launches_per_step"] == pytest.approx(launches)
            assert got[name]["us_per_launch"] == pytest.approx(per_launch)
            assert got[name]["us_per_step"] == pytest.approx(per_step)
        times[label] = got
    assert trace_summary.kernel_times(before, 3) == {}

    rows = trace_summary.compare_kernels(times["before"], times["after"], min_delta_us=0.0)
    by_name = {name: (a, b, delta) for name, a, b, delta in rows}
    # The split-K gate and vLLM's routing are gone, ours and the plain GEMM came.
    for gone in ("nvjet_sm90_tss_64x16_64x16_2x1_v_bz_splitK_TNT", ROUTING["in-tree"][0]):
        a, b, delta = by_name[gone]
        assert b is None and delta == pytest.approx(-a["us_per_step"])
    a, b, delta = by_name[ROUTING["plugin"][0]]
    assert a is None and delta == pytest.approx(b["us_per_step"])
    assert [abs(r[3]) for r in rows] == sorted((abs(r[3]) for r in rows), reverse=True)
    cut = 10.0
    assert all(
        abs(r[3]) >= cut
        for r in trace_summary.compare_kernels(times["before"], times["after"], min_delta_us=cut)
    )

    paths = []
    for label, trace in (("before", before), ("after", after)):
        path = tmp_path / f"{label}.pt.trace.json.gz"
        with gzip.open(path, "wt") as handle:
            json.dump(trace, handle)
        paths.append(str(path))
    out = tmp_path / "k.json"
    code = trace_summary.main(
        [*paths, "--compare-kernels", "16", "--min-delta-us", "0", "--json", str(out)]
    )
    assert code == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)
    assert row_cells(table[1])[0] == rows[0][0][:90]
    assert json.loads(out.read_text())["before"].keys() == times["before"].keys()
    assert trace_summary.main([paths[0], "--compare-kernels", "16"]) == 2
    assert trace_summary.main([*paths, "--compare-kernels", "3"]) == 1


def _host_trace(rng):
    """Steps of known host and GPU times: (batch, period, host forward, graph launch,
    GPU forward) per step, a prefill step among them, and the trace."""
    plan = [(1, 5000.0, 1100.0, 1000.0, 4100.0), (1, 4800.0, 1150.0, 1060.0, 4110.0)]
    plan += [(16, 7000.0, 1300.0, 1250.0, 4700.0), (1, 4900.0, 1120.0, 1040.0, 4090.0)]
    events, clock = [], 0.0

    def event(cat, name, ts, dur):
        events.append(
            {"ph": "X", "cat": cat, "name": name, "pid": 7, "tid": 7, "ts": ts, "dur": dur}
        )

    event("user_annotation", "execute_context_1(1024)_generation_0(0)", clock, 9000.0)
    clock += 9000.0
    for batch, period, host, launch, gpu in plan:
        event(
            "user_annotation",
            f"execute_context_0(0)_generation_{batch}({batch})",
            clock,
            period - 50,
        )
        start = clock + rng.uniform(10, 40)
        event("user_annotation", "gpu_model_runner: forward", start, host)
        event("cuda_runtime", "cudaGraphLaunch", start + 20, launch * 0.75)
        event("cuda_runtime", "cudaGraphLaunch", start + 20 + launch * 0.75, launch * 0.25)
        event("cuda_runtime", "cudaLaunchKernel", start + host - 5, 3.0)  # not a graph launch
        event("gpu_user_annotation", "gpu_model_runner: forward", start + host, gpu)
        clock += period
    event("user_annotation", "execute_context_0(0)_generation_1(1)", clock, 100.0)  # no next step
    return plan, {"traceEvents": events}


def test_host_step_times_are_the_medians_of_each_batch(rng, tmp_path, capsys):
    plan, trace = _host_trace(rng)
    got = trace_summary.host_step_times(trace, 1)
    ones = [p for p in plan if p[0] == 1]
    assert got["steps"] == 3
    for key, column in (("period_us", 1), ("forward_cpu_us", 2), ("forward_gpu_us", 4)):
        assert got[key] == pytest.approx(statistics.median(p[column] for p in ones))
    assert got["graph_launch_us"] == pytest.approx(statistics.median(p[3] for p in ones))
    sixteen = trace_summary.host_step_times(trace, 16)
    assert sixteen["steps"] == 1 and sixteen["graph_launch_us"] == pytest.approx(1250.0)
    assert trace_summary.host_step_times(trace, 8) is None

    path = tmp_path / "t.pt.trace.json.gz"
    with gzip.open(path, "wt") as handle:
        json.dump(trace, handle)
    out = tmp_path / "h.json"
    assert trace_summary.main([str(path), "--host-steps", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| cudaGraphLaunch (us)" in table and "| 3 " in table
    assert json.loads(out.read_text())[path.name]["steps"] == 3
    assert trace_summary.main([str(path), "--host-steps", "8"]) == 1
