"""Accuracy A/B: lm-evaluation-harness (``lm_eval``) against in-tree routing, then the plugin.

As in vLLM PR #39083: the OpenAI-compatible server is queried by lm_eval's
``local-completions`` model (``/v1/completions``, prompts sent as text) on the
``gsm8k`` task, and the table compares ``exact_match`` under both of gsm8k's
filters (``flexible-extract``, ``strict-match``)::

    python -m benchmarks.serving.gsm8k_ab                        # gsm8k, full test set, GPU host
    python -m benchmarks.serving.gsm8k_ab --tiny --include-path tests/data/gsm8k_local \\
        --task gsm8k_local --limit 8 --num-fewshot 1 --max-gen-toks 16   # offline, CPU

``--task`` takes any lm_eval task (or group) name; ``--include-path`` adds a
directory of task YAMLs (``tests/data/gsm8k_local`` is a 22-question gsm8k-format
task that runs without network). The table has a row per task, metric and
filter that lm_eval reports.

Output, in ``--result-dir/<UTC timestamp>/``: ``lm_eval_in-tree/`` and
``lm_eval_plugin/`` (lm_eval's own ``--output_path`` trees, with samples),
``lm_eval_*.log``, ``server_*.log``, ``gsm8k_ab.md`` (table, stamp, commands)
and ``gsm8k_ab.json`` (stamp, configuration, exact commands, both raw lm_eval
results, the table).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import stamp
from benchmarks.serving import ab_common
from vllm_gemma4_router.harness.extras import require_extra


def model_args(
    *,
    model_name: str,
    base_url: str,
    tokenizer: str,
    num_concurrent: int,
    max_retries: int = 3,
    max_gen_toks: int | None = None,
    timeout_s: int | None = None,
) -> str:
    """lm_eval's ``--model_args`` for ``local-completions`` against ``base_url``.

    Prompts go as text (``tokenized_requests=False``); lm_eval still loads a
    Hugging Face tokenizer (for context lengths), so ``tokenizer`` names it
    explicitly rather than letting lm_eval probe the server's tokenizer endpoint
    or look ``model_name`` up on the hub.
    """
    if "," in model_name or "," in tokenizer:
        # lm_eval splits --model_args on commas, with no quoting.
        raise ValueError("model and tokenizer names must not contain ','")
    parts = [
        f"model={model_name}",
        f"base_url={base_url.rstrip('/')}/v1/completions",
        f"num_concurrent={num_concurrent}",
        f"max_retries={max_retries}",
        "tokenized_requests=False",
        "tokenizer_backend=huggingface",
        f"tokenizer={tokenizer}",
    ]
    if max_gen_toks is not None:
        parts.append(f"max_gen_toks={max_gen_toks}")
    if timeout_s is not None:
        parts.append(f"timeout={timeout_s}")
    return ",".join(parts)


def lm_eval_command(
    *,
    model_args_text: str,
    task: str,
    output_path: Path,
    include_path: str | None = None,
    limit: float | None = None,
    num_fewshot: int | None = None,
    seed: int = 0,
    extra_args: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """The ``lm_eval run`` command line (``python -m lm_eval``) for one arm."""
    command = [
        python,
        "-m",
        "lm_eval",
        "run",
        "--model",
        "local-completions",
        "--model_args",
        model_args_text,
        "--tasks",
        task,
        "--batch_size",
        "1",
        "--seed",
        str(seed),
        "--output_path",
        str(output_path),
        "--log_samples",
    ]
    if include_path is not None:
        command += ["--include_path", str(include_path)]
    if limit is not None:
        command += ["--limit", f"{limit:g}"]
    if num_fewshot is not None:
        command += ["--num_fewshot", str(num_fewshot)]
    return command + [str(arg) for arg in extra_args]


def find_results_file(output_path: Path) -> Path:
    """lm_eval's newest ``results_*.json`` under ``output_path`` (it adds a model-named folder).

    Raises:
        FileNotFoundError: lm_eval wrote none.
    """
    found = sorted(output_path.rglob("results_*.json"), key=lambda path: path.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no lm_eval results_*.json under {output_path}")
    return found[-1]


def metric_values(
    results: Mapping[str, Any],
) -> dict[tuple[str, str, str], tuple[float, float | None]]:
    """``(task, metric, filter) -> (value, stderr)`` from an lm_eval results JSON.

    lm_eval keys a task's scores ``"metric,filter"`` with the standard error
    under ``"metric_stderr,filter"``; non-numeric entries (``alias``, an
    ``"N/A"`` stderr) are skipped.
    """
    values: dict[tuple[str, str, str], tuple[float, float | None]] = {}
    for task, scores in results.get("results", {}).items():
        for key, value in scores.items():
            if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, filter_name = key.split(",", 1)
            if metric.endswith("_stderr"):
                continue
            stderr = scores.get(f"{metric}_stderr,{filter_name}")
            stderr = float(stderr) if isinstance(stderr, (int, float)) else None
            values[(task, metric, filter_name)] = (float(value), stderr)
    return values


def table_rows(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[ab_common.Row]:
    """One row per (task, metric, filter) present in either result, sorted by name.

    Rows say ``task exact_match (flexible-extract)``; the cells carry the
    standard error; higher is better (lm_eval's ``higher_is_better`` when given).
    """
    values_before = metric_values(before)
    values_after = metric_values(after)
    higher = {**after.get("higher_is_better", {}), **before.get("higher_is_better", {})}
    rows = []
    for key in sorted(set(values_before) | set(values_after)):
        task, metric, filter_name = key
        value_before, err_before = values_before.get(key, (None, None))
        value_after, err_after = values_after.get(key, (None, None))
        label = f"{task} {metric}" + (f" ({filter_name})" if filter_name != "none" else "")
        rows.append(
            ab_common.Row(
                label,
                value_before,
                value_after,
                bool(higher.get(task, {}).get(metric, True)),
                digits=4,
                before_err=err_before,
                after_err=err_after,
            )
        )
    return rows


def load_responses(output_path: Path) -> dict[str, dict[int, str]]:
    """``task -> doc_id -> first generated text`` from lm_eval's ``samples_<task>_*.jsonl``.

    lm_eval writes one line per document and filter; the raw response is the
    same on each, so the first one per document is kept.
    """
    responses: dict[str, dict[int, str]] = {}
    for path in sorted(output_path.rglob("samples_*.jsonl")):
        task = path.name[len("samples_") :].rsplit("_", 1)[0]
        per_doc = responses.setdefault(task, {})
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            sample = json.loads(line)
            resps = sample.get("resps") or [[""]]
            first = resps[0][0] if isinstance(resps[0], list) else resps[0]
            per_doc.setdefault(int(sample["doc_id"]), str(first))
    return responses


def response_agreement(
    before: Mapping[str, Mapping[int, str]], after: Mapping[str, Mapping[int, str]]
) -> dict[str, dict[str, int]]:
    """Per task: documents answered by both arms, and how many got the identical text.

    Both arms decode greedily from the same prompts, so with equivalent
    routing most answers should be identical; a low count points at a
    numerical difference even when the accuracy does not move.
    """
    agreement = {}
    for task in sorted(set(before) & set(after)):
        common = set(before[task]) & set(after[task])
        same = sum(before[task][doc] == after[task][doc] for doc in common)
        agreement[task] = {"documents": len(common), "identical": same}
    return agreement


def sample_counts(results: Mapping[str, Any]) -> dict[str, int]:
    """Documents evaluated per task (``n-samples`` ``effective``)."""
    return {
        task: int(counts.get("effective", counts.get("original", 0)))
        for task, counts in results.get("n-samples", {}).items()
    }


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving.gsm8k_ab",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ab_common.add_common_args(
        parser, default_result_dir=str(ab_common.REPO_ROOT / "benchmarks/results/gsm8k_ab")
    )
    parser.add_argument("--task", default="gsm8k", help="lm_eval task or group name")
    parser.add_argument(
        "--include-path",
        default=None,
        help="directory of extra task YAMLs (lm_eval --include_path)",
    )
    parser.add_argument(
        "--limit", type=float, default=None, help="documents per task (or fraction if < 1)"
    )
    parser.add_argument(
        "--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's)"
    )
    parser.add_argument(
        "--max-gen-toks", type=int, default=None, help="tokens per answer (lm_eval default 256)"
    )
    parser.add_argument("--num-concurrent", type=int, default=64, help="requests in flight")
    parser.add_argument("--seed", type=int, default=0, help="lm_eval --seed (same per arm)")
    parser.add_argument(
        "--lm-eval-args",
        default=None,
        help="more `lm_eval run` flags, one shell-quoted string (e.g. '--apply_chat_template')",
    )
    parser.add_argument(
        "--eval-timeout", type=float, default=14400.0, help="seconds per lm_eval run"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run both arms, write the results and print the table; 0 when both runs finished."""
    args = build_parser().parse_args(argv)
    require_extra("bench", "python -m benchmarks.serving.gsm8k_ab", ["lm_eval"])
    setup = ab_common.AbSetup.from_args(args)
    model, server_args, tokenizer = setup.model, setup.server_args, setup.tokenizer
    out_dir, arms = setup.out_dir, setup.arms
    include_path = str(Path(args.include_path).resolve()) if args.include_path else None
    eval_commands: dict[str, list[str]] = {}

    def workload(info: ab_common.ArmServer) -> dict[str, Any]:
        name = info.arm.name
        output_path = out_dir / f"lm_eval_{name}"
        command = lm_eval_command(
            model_args_text=model_args(
                model_name=info.model_name,
                base_url=info.base_url,
                tokenizer=tokenizer,
                num_concurrent=args.num_concurrent,
                max_gen_toks=args.max_gen_toks,
            ),
            task=args.task,
            output_path=output_path,
            include_path=include_path,
            limit=args.limit,
            num_fewshot=args.num_fewshot,
            seed=args.seed,
            extra_args=ab_common.split_args(args.lm_eval_args),
        )
        eval_commands[name] = command
        print(f"== {name}: {ab_common.shell_join(command)}", flush=True)
        ab_common.run_client(
            command, out_dir / f"lm_eval_{name}.log", args.eval_timeout, f"{name}: lm_eval"
        )
        results = json.loads(find_results_file(output_path).read_text())
        return {"results": results, "responses": load_responses(output_path)}

    outcomes = setup.run_arms(workload)
    before = outcomes["in-tree"][1]["results"]
    after = outcomes["plugin"][1]["results"]
    agreement = response_agreement(
        outcomes["in-tree"][1]["responses"], outcomes["plugin"][1]["responses"]
    )
    rows = table_rows(before, after)
    table = ab_common.markdown_table(rows)
    table += (
        "\nIdentical greedy answers, in-tree vs plugin: "
        + (
            ", ".join(f"{task} {v['identical']}/{v['documents']}" for task, v in agreement.items())
            or "none compared"
        )
        + "\n"
    )
    record = {
        "kind": "gsm8k_ab",
        "environment": stamp.environment_stamp(),
        "config": {
            "model": model,
            "tokenizer": tokenizer,
            "server_args": server_args,
            "order": [arm.name for arm in arms],
            "task": args.task,
            "include_path": include_path,
            "limit": args.limit,
            "num_fewshot": args.num_fewshot,
            "max_gen_toks": args.max_gen_toks,
            "num_concurrent": args.num_concurrent,
            "seed": args.seed,
        },
        "samples": {"in-tree": sample_counts(before), "plugin": sample_counts(after)},
        "identical_answers": agreement,
        "servers": {name: ab_common.server_record(info) for name, (info, _) in outcomes.items()},
        "commands": {
            name: {"server": info.command, "lm_eval": ab_common.shell_join(eval_commands[name])}
            for name, (info, _) in outcomes.items()
        },
        "results": {"in-tree": before, "plugin": after},
        "table": ab_common.rows_as_json(rows),
    }
    counts = ", ".join(f"{task} n={n}" for task, n in record["samples"]["plugin"].items())
    title = (
        f"Accuracy A/B: {Path(model).name if args.tiny else model}, lm_eval "
        f"local-completions, {counts}"
    )
    ab_common.publish(out_dir, "gsm8k_ab", title, table, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
