"""serve_ab --side-by-side (benchmarks.serving.side_by_side): both servers up at
once, alternating pairs, paired differences, resumable run directories.

The servers are tests/scripts/fake_vllm_server.py started through the harness's
own server code (a wrapper stands in for the interpreter and prints the
plugin's install line where vLLM would load it); the client is a stand-in for
`vllm bench serve` that writes results with known numbers and checks that both
servers answer at the moment of every run.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shlex
import sys
import types
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from benchmarks.common.tables import row_cells
from benchmarks.serving import ab_common, serve_ab, side_by_side
from vllm_gemma4_router.log_contract import install_line

REPO = Path(__file__).resolve().parents[2]
FAKE_SERVER = REPO / "tests" / "scripts" / "fake_vllm_server.py"

# Per pair (1-based), the A (in-tree) and B value of every metric are these
# times the metric's base value below: B - A differs pair to pair.
A_FACTORS = [1.00, 1.02, 0.99, 1.01, 1.00]
B_FACTORS = [0.97, 1.00, 0.95, 0.99, 0.96]
BASE = {key: 10.0 * (index + 1) for index, (_, key, _) in enumerate(serve_ab.TABLE_METRICS)}


# ---------------------------------------------------------------- pure parts


def _arms(order: str) -> list[ab_common.Arm]:
    return ab_common.arms_in_order(order, None, None, required=None)


def test_pairs_alternate_abba():
    arms = _arms("in-tree,plugin")
    runs = side_by_side.pair_schedule(1, 4, arms)
    assert [(pair, arm.name) for pair, arm in runs] == [
        (1, "in-tree"), (1, "plugin"), (2, "plugin"), (2, "in-tree"),
        (3, "in-tree"), (3, "plugin"), (4, "plugin"), (4, "in-tree"),
    ]  # fmt: skip
    # A resumed run continues the alternation where it stopped.
    assert [arm.name for _, arm in side_by_side.pair_schedule(4, 5, arms)] == [
        "plugin", "in-tree", "in-tree", "plugin",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        side_by_side.pair_order(0, arms)
    assert side_by_side.run_name(3, "fused") == "p03_fused"


def test_paired_differences_match_numpy():
    a = [10.0, 12.0, 11.0, 13.0, 9.0]
    b = [9.5, 12.5, 10.0, 12.0, 9.0]
    paired = side_by_side.paired_differences(a, b)
    diffs = np.array(b) - np.array(a)  # -0.5, 0.5, -1, -1, 0
    assert paired.n == 5 and paired.diffs == pytest.approx(diffs.tolist())
    assert paired.diff_mean == pytest.approx(-0.4)
    # Sample std of the differences (ddof 1), times 2.
    assert paired.diff_2sigma == pytest.approx(2 * math.sqrt(0.425))
    assert paired.diff_2sigma == pytest.approx(2 * np.std(diffs, ddof=1))
    pcts = diffs / np.array(a) * 100
    assert paired.pcts == pytest.approx(pcts.tolist())
    assert paired.pct_mean == pytest.approx(pcts.mean())
    assert paired.pct_2sigma == pytest.approx(2 * pcts.std(ddof=1))
    assert (paired.mean_a, paired.mean_b) == (pytest.approx(11.0), pytest.approx(10.6))
    # Lower is better: -0.4 ± 1.30 is no result; a clear one names the arm.
    assert side_by_side.verdict(paired, False, "in-tree", "plugin") == "within 2 sigma"
    clear = side_by_side.paired_differences([10.0, 10.1, 9.9], [9.0, 9.2, 8.9])
    assert side_by_side.verdict(clear, False, "in-tree", "plugin") == "plugin"
    assert side_by_side.verdict(clear, True, "in-tree", "plugin") == "in-tree"


def test_paired_differences_skip_missing_and_need_two_pairs():
    paired = side_by_side.paired_differences([1.0, None, math.nan, 4.0], [2.0, 3.0, 1.0, None])
    assert paired.n == 1 and paired.diffs == [1.0] and paired.diff_mean == 1.0
    assert paired.diff_2sigma is None and paired.pct_mean == pytest.approx(100.0)
    assert side_by_side.verdict(paired, True, "a", "b") == "n/a"
    empty = side_by_side.paired_differences([], [])
    assert (empty.n, empty.diff_mean, empty.mean_a) == (0, None, None)
    with pytest.raises(ValueError, match="equal lengths"):
        side_by_side.paired_differences([1.0], [])


def test_presets_fill_the_workload_and_arms():
    parser = serve_ab.build_parser()
    args = parser.parse_args(["--workload", "c1", "--arms-preset", "in-tree-vs-fused"])
    side_by_side.apply_workload(args, parser)
    assert (args.num_prompts, args.max_concurrency) == (24, 1)
    assert (args.input_len, args.output_len) == (1024, 256)
    assert args.bench_args == "--num-warmups 2"
    arms = side_by_side.side_arms(args)
    assert [(a.name, a.plugin, a.custom_ops) for a in arms] == [
        ("in-tree", False, ()),
        ("fused", True, ("+gemma4_fused_router",)),
    ]
    args = parser.parse_args(["--workload", "c16", "--num-prompts", "32", "--bench-args=-x"])
    side_by_side.apply_workload(args, parser)
    assert (args.num_prompts, args.max_concurrency, args.bench_args) == (32, 16, "-x")
    args = parser.parse_args(["--workload", "pr39083", "--arms-preset", "in-tree-vs-plugin"])
    side_by_side.apply_workload(args, parser)
    assert (args.num_prompts, args.max_concurrency, args.input_len, args.output_len) == (
        160, 16, 2048, 512,
    )  # fmt: skip
    assert [a.name for a in side_by_side.side_arms(args)] == ["in-tree", "plugin"]
    three = parser.parse_args(["--order", "in-tree,plugin,native"])
    with pytest.raises(ValueError, match="two arms"):
        side_by_side.side_arms(three)


def test_memory_utilization_is_capped():
    parser = serve_ab.build_parser()
    default = parser.parse_args([])
    assert side_by_side.memory_utilization(default, []) == 0.47
    fine = parser.parse_args(["--gpu-memory-utilization", "0.4"])
    assert side_by_side.memory_utilization(fine, []) == 0.4
    for value in ("0.48", "0.9", "0"):
        args = parser.parse_args(["--gpu-memory-utilization", value])
        with pytest.raises(ValueError, match="above 0.47"):
            side_by_side.memory_utilization(args, [])
    with pytest.raises(ValueError, match="not in --server-args"):
        side_by_side.memory_utilization(default, ["--gpu-memory-utilization=0.3"])


def test_main_refuses_more_than_047_before_starting_anything(tmp_path, capsys):
    flags = ["--side-by-side", "--model", "ok", "--tokenizer", "t", "--result-dir", str(tmp_path)]
    assert serve_ab.main([*flags, "--gpu-memory-utilization", "0.5", "--tag", "x"]) == 2
    assert "--gpu-memory-utilization 0.5 per server is above 0.47" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert serve_ab.main([*flags, "--server-args", "--gpu-memory-utilization 0.9"]) == 2
    assert "not in --server-args" in capsys.readouterr().err


def test_kv_capacity_from_the_server_log():
    log = (
        "INFO [kv_cache_utils.py:2146] GPU KV cache size: 70,968 tokens\n"
        "INFO [kv_cache_utils.py:2147] Maximum concurrency for 4,096 tokens per request: 17.33x\n"
    )
    capacity = side_by_side.kv_capacity(log)
    assert capacity == {"kv_cache_tokens": 70968, "max_model_len": 4096, "max_concurrency_x": 17.33}
    config = {"max_concurrency": 16, "input_len": 2048, "output_len": 512}
    assert side_by_side.capacity_problem("plugin", capacity, config) is None
    small = dict(capacity, kv_cache_tokens=30000)
    assert "would queue" in side_by_side.capacity_problem("plugin", small, config)
    assert side_by_side.kv_capacity("nothing here") is None


# ------------------------------------------------ both servers, fake client


@pytest.fixture
def fake_python(tmp_path) -> str:
    """An 'interpreter' that runs the fake server; it prints the VLLM_CACHE_ROOT it
    got and, where VLLM_PLUGINS is unset (vLLM would load the plugin), the
    plugin's install line."""
    wrapper = tmp_path / "fake-python"
    line = shlex.quote(install_line("closure"))
    wrapper.write_text(
        "#!/bin/sh\n"
        'echo "CACHE_ROOT=$VLLM_CACHE_ROOT"\n'
        f'[ -z "${{VLLM_PLUGINS+x}}" ] && echo {line}\n'
        f'exec "{sys.executable}" "{FAKE_SERVER}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _log_port(log: Path) -> int:
    argv = re.search(r"^ARGV=(.*)$", log.read_text(), re.M)
    assert argv, log.read_text()
    args = eval(argv.group(1))  # noqa: S307 - the fake server's repr of its argv
    return int(args[args.index("--port") + 1])


class FakeClock:
    """side_by_side's clock: every benchmark run takes 100 s."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def _fake_client(calls: list, clock: FakeClock):
    """A stand-in for `vllm bench serve`: both servers must be up; writes a result
    whose metrics are BASE times the pair's factor of the arm."""

    def run_client(command, log_path, timeout_s, what):
        result_dir = Path(command[command.index("--result-dir") + 1])
        filename = command[command.index("--result-filename") + 1]
        base_url = command[command.index("--base-url") + 1]
        pair, arm = re.fullmatch(r"bench_p(\d+)_(.+)\.json", filename).groups()
        # The servers of this invocation: the logs of the newest part.
        logs = sorted(result_dir.glob("server_*_part*.log"))
        newest = max(int(log.stem.rsplit("part", 1)[1]) for log in logs)
        logs = [log for log in logs if log.stem.endswith(f"_part{newest}")]
        ports = {log.name: _log_port(log) for log in logs}
        calls.append(
            {
                "pair": int(pair),
                "arm": arm,
                "port": int(base_url.rsplit(":", 1)[1]),
                "both_up": len(logs) >= 2 and all(_healthy(p) for p in ports.values()),
                "ports": ports,
                "num_prompts": int(command[command.index("--num-prompts") + 1]),
                "warmups": command[command.index("--num-warmups") + 1],
            }
        )
        factors = A_FACTORS if arm == "in-tree" else B_FACTORS
        result = {key: value * factors[int(pair) - 1] for key, value in BASE.items()}
        result.update(completed=calls[-1]["num_prompts"], failed=0, label=arm)
        (result_dir / filename).write_text(json.dumps(result))
        log_path.write_text("ok\n")
        clock.now += 100.0

    return run_client


def _flags(tmp_path: Path, fake_python: str, *more: str) -> list[str]:
    return [
        "--side-by-side",
        "--arms-preset",
        "in-tree-vs-plugin",
        "--workload",
        "c1",
        "--model",
        "ok",
        "--tokenizer",
        "t",
        "--server-python",
        fake_python,
        "--startup-timeout",
        "60",
        "--cache-root",
        str(tmp_path / "cache"),
        "--result-dir",
        str(tmp_path / "results"),
        "--tag",
        "c1",
        *more,
    ]


def test_side_by_side_end_to_end_with_fake_servers(monkeypatch, tmp_path, fake_python):
    calls: list = []
    clock = FakeClock()
    monkeypatch.setattr(ab_common, "run_client", _fake_client(calls, clock))
    monkeypatch.setattr(side_by_side, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    # Two pairs fit 500 s (200 s each, 45 s to stop); the third is left for later.
    code = serve_ab.main(_flags(tmp_path, fake_python, "--pairs", "5", "--budget-s", "500"))
    assert code == side_by_side.EXIT_MORE_PAIRS
    run = tmp_path / "results" / "c1"

    # Both servers were started (one log each, distinct ports) and both answered
    # during every run; runs alternate A,B / B,A between the two ports.
    assert [(c["pair"], c["arm"]) for c in calls] == [
        (1, "in-tree"), (1, "plugin"), (2, "plugin"), (2, "in-tree"),
    ]  # fmt: skip
    assert all(c["both_up"] for c in calls)
    ports = calls[0]["ports"]
    assert sorted(ports) == ["server_in-tree_part1.log", "server_plugin_part1.log"]
    port_of = {
        "in-tree": ports["server_in-tree_part1.log"],
        "plugin": ports["server_plugin_part1.log"],
    }
    assert port_of["in-tree"] != port_of["plugin"]
    assert [c["port"] for c in calls] == [port_of[c["arm"]] for c in calls]
    assert {c["num_prompts"] for c in calls} == {24} and {c["warmups"] for c in calls} == {"2"}
    assert not any(_healthy(port) for port in port_of.values())  # both stopped

    # Each server: --gpu-memory-utilization 0.47, its own VLLM_CACHE_ROOT, the
    # in-tree one without the plugin (VLLM_PLUGINS=''), the plugin one with it.
    record = json.loads((run / "serve_ab.json").read_text())
    assert record["kind"] == "serve_ab_side_by_side" and record["problems"] == []
    caches = record["config"]["cache_roots"]
    for arm in ("in-tree", "plugin"):
        log = (run / f"server_{arm}_part1.log").read_text()
        assert "'--gpu-memory-utilization', '0.47'" in log
        assert f"CACHE_ROOT={caches[arm]}\n" in log
        assert Path(caches[arm]).parent == (tmp_path / "cache").resolve()
        assert Path(caches[arm]).name.startswith(f"{arm}-") and Path(caches[arm]).is_dir()
        assert ("VLLM_PLUGINS=''" in log) is (arm == "in-tree")
        assert record["servers"][arm]["plugin_active"] is (arm == "plugin")
    assert caches["in-tree"] != caches["plugin"]
    assert record["parts"][0]["pairs"] == [1, 2]
    assert record["environment"]["versions"]["torch"] and record["environment"]["date"]

    # Resume: the same command (no budget) adds pairs 3-5, servers started anew.
    calls.clear()
    assert serve_ab.main(_flags(tmp_path, fake_python, "--pairs", "5", "--resume")) == 0
    assert [(c["pair"], c["arm"]) for c in calls] == [
        (3, "in-tree"), (3, "plugin"), (4, "plugin"), (4, "in-tree"), (5, "in-tree"), (5, "plugin"),
    ]  # fmt: skip
    assert all(c["both_up"] for c in calls)
    assert sorted(calls[0]["ports"]) == ["server_in-tree_part2.log", "server_plugin_part2.log"]
    record = json.loads((run / "serve_ab.json").read_text())
    assert [part["pairs"] for part in record["parts"]] == [[1, 2], [3, 4, 5]]
    assert [r["name"] for r in record["runs"]][:4] == [
        "p01_in-tree", "p01_plugin", "p02_plugin", "p02_in-tree",
    ]  # fmt: skip
    for pair in range(1, 6):
        for arm in ("in-tree", "plugin"):
            assert (run / f"bench_p{pair:02d}_{arm}.json").is_file()

    # The paired differences are numpy's over the five known pairs.
    a, b = np.array(A_FACTORS), np.array(B_FACTORS)
    for row in record["paired"]:
        key = row["key"]
        diffs = (b - a) * BASE[key]
        pcts = (b - a) / a * 100
        assert row["n"] == 5 and row["pairs"] == [1, 2, 3, 4, 5]
        assert row["diffs"] == pytest.approx(diffs.tolist())
        assert row["diff_mean"] == pytest.approx(diffs.mean())
        assert row["diff_2sigma"] == pytest.approx(2 * diffs.std(ddof=1))
        assert row["diff_pct_mean"] == pytest.approx(pcts.mean())
        assert row["diff_pct_2sigma"] == pytest.approx(2 * pcts.std(ddof=1))
        assert row["in-tree"] == pytest.approx(a.mean() * BASE[key])
    tpot = next(r for r in record["paired"] if r["key"] == "mean_tpot_ms")
    # About -3 % ± 2 %: lower TPOT, beyond 2 sigma -> plugin.
    assert tpot["verdict"] == "plugin"
    throughput = next(r for r in record["paired"] if r["key"] == "output_throughput")
    assert throughput["verdict"] == "in-tree"  # the same factors, higher is better

    # The markdown: title, stamp line, the paired table with mean ± 2 sigma.
    text = (run / "serve_ab.md").read_text()
    lines = text.splitlines()
    assert lines[0].startswith("# Serving A/B side by side: ok, in-tree vs plugin, random 1024 in")
    env = record["environment"]
    assert lines[2].startswith(f"{env['date']}, {env['device']}, ")
    assert "2 sigma of the paired differences, 5 pairs" in text
    header = next(row_cells(line) for line in lines if line.startswith("| metric "))
    assert header == [
        "metric", "in-tree", "plugin", "plugin - in-tree", "(plugin - in-tree) / in-tree",
        "n", "verdict",
    ]  # fmt: skip
    tpot_cells = next(row_cells(x) for x in lines if x.startswith("| Mean TPOT (ms) "))
    # (the first such row is the paired table's)
    expected_pct = f"{tpot['diff_pct_mean']:+.2f} ± {tpot['diff_pct_2sigma']:.2f} %"
    assert tpot_cells[4] == expected_pct and tpot_cells[5:] == ["5", "plugin"]
    assert "| metric | p1 (in-tree first) | p2 (plugin first) |" in re.sub(r" +", " ", text)
    assert "# in-tree: server" in text  # the exact server commands

    # The PNG: per-pair values and paired differences.
    png = run / "serve_ab_pairs.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    # The CSVs: stamp line first, then one row per metric / per pair and metric.
    for name, rows in (("serve_ab_paired.csv", 13), ("serve_ab_pairs.csv", 13 * 5)):
        content = (run / name).read_text().splitlines()
        assert content[0].startswith("# date=") and "torch=" in content[0]
        parsed = list(csv.DictReader(content[1:]))
        assert len(parsed) == rows
    paired_csv = list(csv.DictReader((run / "serve_ab_paired.csv").read_text().splitlines()[1:]))
    tpot_csv = next(r for r in paired_csv if r["metric"] == "Mean TPOT (ms)")
    assert float(tpot_csv["diff_2sigma"]) == pytest.approx(tpot["diff_2sigma"])

    # Complete: running again starts nothing; without --resume it is refused.
    calls.clear()
    assert serve_ab.main(_flags(tmp_path, fake_python, "--pairs", "5", "--resume")) == 0
    assert calls == []
    assert serve_ab.main(_flags(tmp_path, fake_python, "--pairs", "6")) == 2
    # Another workload does not append to this directory.
    other = _flags(tmp_path, fake_python, "--pairs", "6", "--resume", "--seed", "1")
    assert serve_ab.main(other) == 2
    assert calls == []


def test_one_server_mode_takes_cache_root_and_memory(monkeypatch, tmp_path):
    """The one-server-at-a-time mode is unchanged by default and passes the new
    server settings through when asked."""
    seen = []

    def fake_run_schedule(self, runs, workload, *, expect_workers=None, server_extras=None):
        seen.extend((arm.name, server_extras(arm, round_)) for round_, arm in runs)
        raise SystemExit(0)

    monkeypatch.setattr(ab_common.AbSetup, "run_schedule", fake_run_schedule)
    base = ["--model", "m", "--result-dir", str(tmp_path), "--tag", "one"]
    with pytest.raises(SystemExit):
        serve_ab.main(base)
    assert seen == [("in-tree", ([], {})), ("plugin", ([], {}))]
    seen.clear()
    more = ["--gpu-memory-utilization", "0.9", "--cache-root", str(tmp_path / "c")]
    with pytest.raises(SystemExit):
        serve_ab.main([*base, *more, "--arms-preset", "in-tree-vs-fused"])
    assert [name for name, _ in seen] == ["in-tree", "fused"]
    args, env = seen[1][1]
    assert args == ["--gpu-memory-utilization", "0.9"]
    assert env["VLLM_CACHE_ROOT"] == str(side_by_side.cache_dir(tmp_path / "c", "fused"))
    with pytest.raises(SystemExit):
        serve_ab.main([*base, "--resume"])


def test_first_pair_estimate_stops_before_a_pair_that_cannot_fit(
    monkeypatch, tmp_path, fake_python
):
    calls: list = []
    clock = FakeClock()
    monkeypatch.setattr(ab_common, "run_client", _fake_client(calls, clock))
    monkeypatch.setattr(side_by_side, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    flags = _flags(tmp_path, fake_python, "--budget-s", "500", "--first-pair-s", "460")
    assert serve_ab.main(flags) == side_by_side.EXIT_MORE_PAIRS
    assert calls == []  # 0 + 460 + 45 > 500: not even the first pair
    record = json.loads((tmp_path / "results" / "c1" / "serve_ab.json").read_text())
    assert record["runs"] == [] and record["parts"][0]["pairs"] == []


DEVICE_SCRIPT = REPO / "benchmarks" / "serving" / "side_by_side_device.sh"


@pytest.mark.parametrize(
    ("workload", "arms", "keep"),
    [
        ("c1", "plugin", ""),
        ("pr39083", "fused", ""),
        ("c16", "gate-tier", "1"),
        ("c64", "gate-tier-vs-fused", "1"),
        ("c1", "fused-vs-gate-tier", "1"),
        ("c16", "gate-tier-vs-gate-tier-twin", "1"),
    ],
)
def test_device_script_passes_flags_serve_ab_accepts(tmp_path, workload, arms, keep):
    """The device line's python3 is replaced by one that parses the flags with
    serve_ab's own parser and exits 3 (more pairs), as a budget-cut run would."""
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "python3"
    shim.write_text(
        "#!/bin/sh\n"
        f'exec "{sys.executable}" -c \'import json, sys; '
        "from benchmarks.serving import serve_ab, side_by_side; "
        "p = serve_ab.build_parser(); a = p.parse_args(sys.argv[3:]); "
        "side_by_side.apply_workload(a, p); "
        'print("ARGS=" + json.dumps(vars(a), default=str)); sys.exit(3)\' "$@"\n'
    )
    shim.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", OUT=str(out))
    env.pop("SBS_KEEP", None)
    env.pop("SBS_PROFILE", None)
    if keep:  # and the 80 GB profile
        env.update(SBS_KEEP=keep, SBS_PROFILE="gemma-4-26b-a4b-12l")
    result = subprocess.run(
        ["bash", str(DEVICE_SCRIPT), workload, arms],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "exit 3 (0: all pairs done, 3: run this again" in result.stdout
    preset_name = arms if "-vs-" in arms else f"in-tree-vs-{arms}"
    tag = f"{workload}_{preset_name}" + ("_gemma-4-26b-a4b-12l" if keep else "")
    log = (out / f"{tag}.txt").read_text()
    args = json.loads(log.split("ARGS=", 1)[1])
    preset = side_by_side.WORKLOADS[workload]
    assert args["side_by_side"] and args["resume"] and args["pairs"] == 5
    assert args["arms_preset"] == preset_name
    assert side_by_side.ARMS_PRESETS[preset_name][1] == arms.rsplit("-vs-", 1)[-1]
    assert (args["num_prompts"], args["max_concurrency"]) == (
        preset.num_prompts,
        preset.max_concurrency,
    )
    assert args["gpu_memory_utilization"] == 0.47 and args["budget_s"] == 510
    profile = "gemma-4-26b-a4b-12l" if keep else "gemma-4-26b-a4b"
    assert args["model_profile"] == profile and args["tag"] == tag
    # c64's 64 sequences at once; 16 caps the others
    assert f"--max-num-seqs {64 if workload == 'c64' else 16}" in args["server_args"]
    assert args["keep_servers"] is bool(keep) and not args["stop_servers"]


# ------------------------------------------- servers kept up between invocations


def _recording_client(calls: list):
    """A stand-in for `vllm bench serve` that records which server each run asked
    and whether it answered, and writes a result with the pair's factors."""

    def run_client(command, log_path, timeout_s, what):
        result_dir = Path(command[command.index("--result-dir") + 1])
        filename = command[command.index("--result-filename") + 1]
        base_url = command[command.index("--base-url") + 1]
        pair, arm = re.fullmatch(r"bench_p(\d+)_(.+)\.json", filename).groups()
        port = int(base_url.rsplit(":", 1)[1])
        calls.append({"pair": int(pair), "arm": arm, "port": port, "up": _healthy(port)})
        factors = A_FACTORS if arm == "in-tree" else B_FACTORS
        result = {key: value * factors[int(pair) - 1] for key, value in BASE.items()}
        result.update(completed=int(command[command.index("--num-prompts") + 1]), failed=0)
        (result_dir / filename).write_text(json.dumps(result))
        log_path.write_text("ok\n")

    return run_client


def _kept(tmp_path: Path) -> dict[str, dict]:
    keep_dir = tmp_path / "cache" / side_by_side.KEEP_SUBDIR
    return {path.stem: json.loads(path.read_text()) for path in keep_dir.glob("*.json")}


def _keep_flags(tmp_path, fake_python, tag, pairs, preset="in-tree-vs-plugin", *more):
    flags = _flags(tmp_path, fake_python, "--pairs", str(pairs), "--keep-servers", "--resume")
    flags[flags.index("in-tree-vs-plugin")] = preset
    flags[flags.index("--tag") + 1] = tag
    return [*flags, *more]


def test_keep_servers_reuses_them_across_invocations_and_stops_them(
    monkeypatch, tmp_path, fake_python
):
    calls: list = []
    monkeypatch.setattr(ab_common, "run_client", _recording_client(calls))
    ports: dict[str, int] = {}
    try:
        # First invocation: both started, one pair, both still up afterwards.
        assert serve_ab.main(_keep_flags(tmp_path, fake_python, "c1", 1)) == 0
        kept = _kept(tmp_path)
        assert sorted(kept) == ["in-tree", "plugin"]
        ports = {arm: int(state["base_url"].rsplit(":", 1)[1]) for arm, state in kept.items()}
        assert all(_healthy(port) for port in ports.values())
        assert kept["in-tree"]["settings"]["env"]["VLLM_PLUGINS"] == ""
        run = tmp_path / "results" / "c1"
        record = json.loads((run / "serve_ab.json").read_text())
        assert record["servers"]["plugin"]["plugin_active"] is True  # from the kept log
        assert record["servers"]["in-tree"]["plugin_active"] is False
        assert (run / "server_plugin_part1.log").is_file()

        # Second: the same servers (same pids and ports) answer the next pairs.
        assert serve_ab.main(_keep_flags(tmp_path, fake_python, "c1", 3)) == 0
        assert _kept(tmp_path) == kept
        assert [(c["pair"], c["arm"]) for c in calls] == [
            (1, "in-tree"), (1, "plugin"),
            (2, "plugin"), (2, "in-tree"), (3, "in-tree"), (3, "plugin"),
        ]  # fmt: skip
        assert all(c["up"] and c["port"] == ports[c["arm"]] for c in calls)
        assert json.loads((run / "serve_ab.json").read_text())["problems"] == []

        # Another arm pair sharing the in-tree arm: the plugin server is stopped
        # (two fill the GPU), the in-tree one reused, the fused one started.
        fused = _keep_flags(tmp_path, fake_python, "c1-fused", 1, "in-tree-vs-fused")
        assert serve_ab.main(fused) == 0
        now = _kept(tmp_path)
        assert sorted(now) == ["fused", "in-tree"] and now["in-tree"] == kept["in-tree"]
        assert not _healthy(ports["plugin"]) and _healthy(ports["in-tree"])
        ports["fused"] = int(now["fused"]["base_url"].rsplit(":", 1)[1])

        # A server whose settings differ is restarted, not reused.
        changed = _keep_flags(
            tmp_path, fake_python, "c1-seqs8", 1, "in-tree-vs-fused",
            "--server-args", "--max-num-seqs 8",
        )  # fmt: skip
        assert serve_ab.main(changed) == 0
        assert _kept(tmp_path)["in-tree"]["pgid"] != kept["in-tree"]["pgid"]
        assert not _healthy(ports["in-tree"])
        ports.update(
            {a: int(st["base_url"].rsplit(":", 1)[1]) for a, st in _kept(tmp_path).items()}
        )
    finally:
        stop = _keep_flags(tmp_path, fake_python, "c1", 1, "in-tree-vs-plugin", "--stop-servers")
        assert serve_ab.main(stop) == 0
    assert _kept(tmp_path) == {}
    assert ports and not any(_healthy(port) for port in ports.values())
