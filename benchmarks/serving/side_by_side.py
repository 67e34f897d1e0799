"""Serving A/B with both servers up at once (``serve_ab --side-by-side``).

Two arms, A (the baseline, e.g. ``in-tree``) and B (e.g. ``plugin``), are each
served by their own vLLM server on one GPU: started one after the other (B only
once A is healthy, so vLLM's memory profiling of one never sees the other
allocating), each with ``--gpu-memory-utilization`` at most
:data:`MAX_GPU_MEMORY_UTILIZATION` and its own ``VLLM_CACHE_ROOT`` under
``--cache-root`` (kept between invocations: a second start on a warm machine
reuses its compiled graphs, and two arms never share a compile cache). The
workload then runs against them alternately, pair by pair: pair 1 A then B,
pair 2 B then A, and so on (A,B,B,A,A,B,...), so a drift of the machine
favours neither arm.

Each pair gives, for every metric of :data:`serve_ab.TABLE_METRICS`, the
difference B - A and (B - A) / A in percent; the report gives their mean and
2 sigma (twice the sample standard deviation of the paired differences, n
pairs). A mean difference larger than its 2 sigma is reported as a result,
anything smaller as "within 2 sigma".

A run directory is resumable: with ``--resume`` an invocation adds pairs to the
``serve_ab.json`` already there (same workload and servers required) until
``--pairs`` pairs are complete, so a measurement can be split over several
time-limited calls. ``--budget-s`` makes an invocation stop before a pair that
would not finish in time (estimated from the pairs measured so far); the record
is rewritten after every pair, so a killed run keeps its complete pairs.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import stamp, tables
from benchmarks.common.plots import pyplot
from benchmarks.serving import ab_common, kept_servers

# Two servers of the 26B-A4B profile share one H200: ~48 GiB of (dummy) weights
# each, and 0.47 of the card each leaves both room for their KV caches plus the
# CUDA context of the other. More would let the second server's start fail (or,
# worse, starve the first one's KV cache).
MAX_GPU_MEMORY_UTILIZATION = 0.47
DEFAULT_CACHE_ROOT = ab_common.REPO_ROOT / ".cache" / "serve_ab_side_by_side"
# --keep-servers: the kept servers' state files and logs, under the cache root.
KEEP_SUBDIR = "kept"
# Seconds kept free at the end of --budget-s for stopping both servers and
# writing the results.
STOP_MARGIN_S = 45.0
# Exit status when --budget-s stopped the run before --pairs pairs were complete.
EXIT_MORE_PAIRS = 3
KIND = "serve_ab_side_by_side"


@dataclass(frozen=True)
class Workload:
    """A preset client workload (``--workload``): random dataset, EOS ignored."""

    num_prompts: int
    max_concurrency: int
    input_len: int
    output_len: int
    warmups: int


# Issue #34 item 4's workloads; pr39083 is vLLM PR #39083's end-to-end workload.
WORKLOADS: dict[str, Workload] = {
    "c1": Workload(num_prompts=24, max_concurrency=1, input_len=1024, output_len=256, warmups=2),
    "c16": Workload(num_prompts=64, max_concurrency=16, input_len=1024, output_len=256, warmups=16),
    # issue #36 goal 4: decode batches of up to 64, where the split router runs its own kernels
    "c64": Workload(
        num_prompts=192, max_concurrency=64, input_len=1024, output_len=256, warmups=64
    ),
    "pr39083": Workload(
        num_prompts=160, max_concurrency=16, input_len=2048, output_len=512, warmups=16
    ),
}
# The pairs of arms (``--arms-preset``): A (baseline) first.
ARMS_PRESETS: dict[str, tuple[str, str]] = {
    "in-tree-vs-plugin": ("in-tree", "plugin"),  # VLLM_PLUGINS= vs our routing op
    "in-tree-vs-fused": ("in-tree", "fused"),  # VLLM_PLUGINS= vs +gemma4_fused_router
    "in-tree-vs-gate-tier": ("in-tree", "gate-tier"),  # VLLM_PLUGINS= vs +gemma4_gate_tier
    # the router the fused one replaces on 0.26.0 Hopper vs +gemma4_fused_router (issue #36)
    "gate-tier-vs-fused": ("gate-tier", "fused"),
    # Controls for a served difference no kernel explains (2026-12-07: fused ahead at c1,
    # where both arms run the same gate and routing kernels): the same two arms started
    # the other way round (a set-up bias changes sign, a router's gain does not), and one
    # configuration against itself (what remains is the set-up's bias).
    "fused-vs-gate-tier": ("fused", "gate-tier"),
    "gate-tier-vs-gate-tier-twin": ("gate-tier", "gate-tier-twin"),
}
# serve_ab flag dest -> Workload field.
_WORKLOAD_FLAGS = {
    "num_prompts": "num_prompts",
    "max_concurrency": "max_concurrency",
    "input_len": "input_len",
    "output_len": "output_len",
}
# Settings a resumed directory must share with the invocation that adds pairs.
RESUME_KEYS = (
    "model_profile",
    "server_args",
    "arms",
    "num_prompts",
    "max_concurrency",
    "input_len",
    "output_len",
    "request_rate",
    "seed",
    "backend",
    "endpoint",
    "bench_args",
    "gpu_memory_utilization",
)


def add_args(parser: argparse.ArgumentParser) -> None:
    """The side-by-side flags (and the presets, which the one-server mode also takes)."""
    group = parser.add_argument_group(
        "side by side (both servers up at once, alternating pairs; benchmarks.serving.side_by_side)"
    )
    group.add_argument(
        "--side-by-side",
        action="store_true",
        help="start both arms' servers (two arms: --arms-preset or --order A,B) one after "
        "the other, then run the workload A,B,B,A,... for --pairs pairs; report paired "
        "differences B - A (mean and 2 sigma)",
    )
    group.add_argument(
        "--pairs", type=int, default=5, help="pairs in the run directory (default %(default)s)"
    )
    group.add_argument(
        "--arms-preset",
        choices=sorted(ARMS_PRESETS),
        default=None,
        help="the two arms: " + "; ".join(f"{k}: {a},{b}" for k, (a, b) in ARMS_PRESETS.items()),
    )
    group.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        default=None,
        help="preset workload: "
        + "; ".join(
            f"{name}: {w.num_prompts} prompts, {w.input_len}/{w.output_len}, "
            f"concurrency {w.max_concurrency}, {w.warmups} warm-ups"
            for name, w in WORKLOADS.items()
        )
        + " (workload flags left at their defaults take the preset's values)",
    )
    group.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        help="each started server's --gpu-memory-utilization (side by side: default and "
        f"maximum {MAX_GPU_MEMORY_UTILIZATION}; one server at a time: vLLM's default)",
    )
    group.add_argument(
        "--cache-root",
        default=None,
        help="each started server gets VLLM_CACHE_ROOT=CACHE_ROOT/<arm>-<hash of the "
        "plugin's sources>, kept between invocations (side by side default: "
        f"{DEFAULT_CACHE_ROOT.relative_to(ab_common.REPO_ROOT)}; one server at a time: "
        "vLLM's default)",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="add pairs to the serve_ab.json already in --result-dir/--tag (same workload "
        "and servers) until --pairs are complete; without one, start it",
    )
    group.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall seconds this invocation may take: no pair is started that would not end "
        f"{STOP_MARGIN_S:.0f} s before (exit {EXIT_MORE_PAIRS}: run again with --resume)",
    )
    group.add_argument(
        "--first-pair-s",
        type=float,
        default=0.0,
        help="with --budget-s: the time a pair is assumed to take before one was measured "
        "(default: run the first pair whatever the budget says)",
    )
    group.add_argument(
        "--keep-servers",
        action="store_true",
        help="leave both servers up when this invocation ends, and use the ones a previous "
        "invocation left up where they were started with the same settings (state in "
        "CACHE_ROOT/kept/); kept servers of other arms are stopped first, since two fill "
        "the GPU. For device calls shorter than two server starts plus the pairs",
    )
    group.add_argument(
        "--stop-servers",
        action="store_true",
        help="stop every server --keep-servers left up (under CACHE_ROOT/kept/) and exit",
    )
    group.add_argument(
        "--server-python",
        default=None,
        help="interpreter that runs the servers (default: this one)",
    )


def apply_workload(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fill the workload flags left at their defaults from ``--workload``, and
    ``--bench-args`` (when not given) with the preset's warm-ups."""
    if args.workload is None:
        return
    preset = WORKLOADS[args.workload]
    for dest, name in _WORKLOAD_FLAGS.items():
        if getattr(args, dest) == parser.get_default(dest):
            setattr(args, dest, getattr(preset, name))
    if args.bench_args is None:
        args.bench_args = f"--num-warmups {preset.warmups}"


def side_arms(args: argparse.Namespace) -> list[ab_common.Arm]:
    """The two arms, A (baseline) first, from ``--arms-preset`` or ``--order``."""
    order = ",".join(ARMS_PRESETS[args.arms_preset]) if args.arms_preset else args.order
    arms = ab_common.arms_in_order(
        order,
        args.base_url_in_tree,
        args.base_url_plugin,
        getattr(args, "base_url_native", None),
        getattr(args, "base_url_fused", None),
        required=None,
    )
    if len(arms) != 2:
        raise ValueError(f"--side-by-side compares two arms, --order names {len(arms)}: {order!r}")
    return arms


def memory_utilization(args: argparse.Namespace, server_args: Sequence[str]) -> float:
    """The side-by-side servers' ``--gpu-memory-utilization``.

    Raises:
        ValueError: above :data:`MAX_GPU_MEMORY_UTILIZATION` or not positive, or
            set in ``--server-args`` instead of its own flag.
    """
    if any(
        arg == "--gpu-memory-utilization" or arg.startswith("--gpu-memory-utilization=")
        for arg in server_args
    ):
        raise ValueError(
            "--side-by-side: pass --gpu-memory-utilization as the harness flag, not in "
            "--server-args (the harness checks it)"
        )
    value = (
        MAX_GPU_MEMORY_UTILIZATION
        if args.gpu_memory_utilization is None
        else args.gpu_memory_utilization
    )
    if not 0 < value <= MAX_GPU_MEMORY_UTILIZATION:
        raise ValueError(
            f"--side-by-side: --gpu-memory-utilization {value} per server is above "
            f"{MAX_GPU_MEMORY_UTILIZATION} (or not positive): two servers of the "
            "26B-A4B profile (~48 GiB of weights each) would not both fit on one GPU"
        )
    return value


def source_hash(root: Path = ab_common.REPO_ROOT / "vllm_gemma4_router") -> str:
    """12 hex digits over the plugin's sources (paths and bytes of its .py and .json
    files): a per-arm cache made by other plugin code is not reused."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".json") and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def cache_dir(cache_root: str | Path, arm: str) -> Path:
    """The ``VLLM_CACHE_ROOT`` of ``arm``'s server: ``cache_root/<arm>-<source hash>``."""
    return Path(cache_root).resolve() / f"{arm}-{source_hash()}"


def pair_order(pair: int, arms: Sequence[ab_common.Arm]) -> list[ab_common.Arm]:
    """The run order of pair ``pair`` (from 1): A,B for odd pairs, B,A for even ones."""
    if pair < 1:
        raise ValueError(f"pairs are numbered from 1, got {pair}")
    return list(arms) if pair % 2 else list(reversed(arms))


def pair_schedule(
    first: int, last: int, arms: Sequence[ab_common.Arm]
) -> list[tuple[int, ab_common.Arm]]:
    """``(pair, arm)`` of pairs ``first`` to ``last`` in run order: A,B,B,A,A,B,..."""
    return [(pair, arm) for pair in range(first, last + 1) for arm in pair_order(pair, arms)]


def run_name(pair: int, arm: str) -> str:
    """The file-name stem of one run of a pair: ``p01_in-tree``."""
    return f"p{pair:02d}_{arm}"


@dataclass(frozen=True)
class Paired:
    """Paired differences B - A of one metric over n pairs.

    ``diffs`` and ``pcts`` hold one value per pair where both arms have a finite
    value (``pcts``: where (B - A) / |A| is defined too); the means and 2 sigma
    are over those. 2 sigma is twice the sample standard deviation (ddof 1),
    ``None`` below two pairs.
    """

    n: int
    mean_a: float | None
    mean_b: float | None
    diffs: list[float]
    pcts: list[float]
    diff_mean: float | None
    diff_2sigma: float | None
    pct_mean: float | None
    pct_2sigma: float | None


def _mean_2sigma(values: Sequence[float]) -> tuple[float | None, float | None]:
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return None, None
    mean = float(np.mean(array))
    return mean, (float(2 * np.std(array, ddof=1)) if array.size > 1 else None)


def paired_differences(a: Sequence[float | None], b: Sequence[float | None]) -> Paired:
    """:class:`Paired` of per-pair values ``a[i]`` (arm A) and ``b[i]`` (arm B)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    both = np.array(
        [
            (x, y)
            for x, y in zip(a, b, strict=True)
            if isinstance(x, (int, float)) and isinstance(y, (int, float))
        ],
        dtype=float,
    ).reshape(-1, 2)
    both = both[np.isfinite(both).all(axis=1)]
    diffs = both[:, 1] - both[:, 0]
    pcts = [
        change
        for x, y in both
        if (change := ab_common.percent_change(float(x), float(y))) is not None
    ]
    diff_mean, diff_2sigma = _mean_2sigma(diffs)
    pct_mean, pct_2sigma = _mean_2sigma(pcts)
    return Paired(
        n=len(diffs),
        mean_a=float(np.mean(both[:, 0])) if len(both) else None,
        mean_b=float(np.mean(both[:, 1])) if len(both) else None,
        diffs=[float(d) for d in diffs],
        pcts=[float(p) for p in pcts],
        diff_mean=diff_mean,
        diff_2sigma=diff_2sigma,
        pct_mean=pct_mean,
        pct_2sigma=pct_2sigma,
    )


def verdict(paired: Paired, higher_is_better: bool, a: str, b: str) -> str:
    """``b``/``a`` (the better arm) when the mean difference is larger than its
    2 sigma, ``within 2 sigma`` otherwise, ``n/a`` below two pairs."""
    if paired.diff_mean is None or paired.diff_2sigma is None:
        return "n/a"
    if abs(paired.diff_mean) <= paired.diff_2sigma:
        return "within 2 sigma"
    return b if (paired.diff_mean > 0) == higher_is_better else a


def _number(result: Mapping[str, Any], key: str) -> float | None:
    value = result.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def complete_pairs(runs: Sequence[Mapping[str, Any]], arms: Sequence[str]) -> dict[int, dict]:
    """``{pair: {arm: run}}`` of the pairs in ``runs`` that have a run of both arms."""
    pairs: dict[int, dict[str, Mapping[str, Any]]] = {}
    for run in runs:
        pairs.setdefault(run["pair"], {})[run["arm"]] = run
    return {pair: by_arm for pair, by_arm in sorted(pairs.items()) if set(arms) <= set(by_arm)}


def paired_records(
    runs: Sequence[Mapping[str, Any]], arms: Sequence[str], metrics: Sequence[tuple]
) -> list[dict[str, Any]]:
    """Per metric ``(label, key, higher_is_better)``: the paired differences of the
    complete pairs in ``runs`` as a JSON record."""
    a, b = arms
    pairs = complete_pairs(runs, arms)
    records = []
    for label, key, higher in metrics:
        values_a = [_number(pairs[p][a]["result"], key) for p in pairs]
        values_b = [_number(pairs[p][b]["result"], key) for p in pairs]
        paired = paired_differences(values_a, values_b)
        records.append(
            {
                "metric": label,
                "key": key,
                "higher_is_better": higher,
                "n": paired.n,
                a: paired.mean_a,
                b: paired.mean_b,
                "diff_mean": paired.diff_mean,
                "diff_2sigma": paired.diff_2sigma,
                "diff_pct_mean": paired.pct_mean,
                "diff_pct_2sigma": paired.pct_2sigma,
                "verdict": verdict(paired, higher, a, b),
                "pairs": list(pairs),
                f"{a} runs": values_a,
                f"{b} runs": values_b,
                "diffs": paired.diffs,
                "diffs_pct": paired.pcts,
            }
        )
    return records


def _signed(value: float | None, err: float | None, digits: int, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:+.{digits}f}"
    if err is not None:
        text += f" ± {err:.{digits}f}"
    return text + unit


def paired_table(records: Sequence[Mapping[str, Any]], arms: Sequence[str]) -> str:
    """The paired-difference markdown table: each arm's mean, B - A and (B - A)/A
    as mean ± 2 sigma, n, and the verdict."""
    a, b = arms
    header = ["metric", a, b, f"{b} - {a}", f"({b} - {a}) / {a}", "n", "verdict"]
    cells = [
        [
            record["metric"],
            ab_common.format_value(record[a], 2),
            ab_common.format_value(record[b], 2),
            _signed(record["diff_mean"], record["diff_2sigma"], 2),
            _signed(record["diff_pct_mean"], record["diff_pct_2sigma"], 2, " %"),
            str(record["n"]),
            record["verdict"],
        ]
        for record in records
    ]
    align = ["left", *["right"] * 5, "center"]
    return tables.markdown_table(header, cells, align) + "\n"


def per_pair_table(
    records: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]], arms: Sequence[str]
) -> str:
    """(B - A)/A in % per pair and metric; each column names the pair's run order."""
    a, b = arms
    pairs = complete_pairs(runs, arms)
    header = ["metric"]
    for pair in pairs:
        first = a if pair_order(pair, [a, b])[0] == a else b
        header.append(f"p{pair} ({first} first)")
    cells = []
    for record in records:
        row = [record["metric"]]
        for x, y in zip(record[f"{a} runs"], record[f"{b} runs"], strict=True):
            row.append(ab_common.format_percent(ab_common.percent_change(x, y)))
        cells.append(row)
    return tables.markdown_table(header, cells, ["left", *["right"] * (len(header) - 1)]) + "\n"


def write_csvs(
    out_dir: Path, records: Sequence[Mapping[str, Any]], arms: Sequence[str], env: Mapping
) -> tuple[Path, Path]:
    """``serve_ab_paired.csv`` (one row per metric) and ``serve_ab_pairs.csv`` (one
    row per pair and metric), each headed by the ``# k=v, ...`` stamp line."""
    a, b = arms
    summary = out_dir / "serve_ab_paired.csv"
    with open(summary, "w", newline="") as handle:
        handle.write(f"# {stamp.stamp_line(env)}\n")
        writer = csv.writer(handle)
        writer.writerow(
            ["metric", "n", f"{a}_mean", f"{b}_mean", "diff_mean", "diff_2sigma"]
            + ["diff_pct_mean", "diff_pct_2sigma", "verdict"]
        )
        for r in records:
            writer.writerow(
                [r["metric"], r["n"], r[a], r[b], r["diff_mean"], r["diff_2sigma"]]
                + [r["diff_pct_mean"], r["diff_pct_2sigma"], r["verdict"]]
            )
    per_pair = out_dir / "serve_ab_pairs.csv"
    with open(per_pair, "w", newline="") as handle:
        handle.write(f"# {stamp.stamp_line(env)}\n")
        writer = csv.writer(handle)
        writer.writerow(["pair", "first", "metric", a, b, "diff", "diff_pct"])
        for r in records:
            for pair, x, y in zip(r["pairs"], r[f"{a} runs"], r[f"{b} runs"], strict=True):
                both = x is not None and y is not None
                writer.writerow(
                    [pair, pair_order(pair, [a, b])[0], r["metric"], x, y]
                    + [y - x if both else None, ab_common.percent_change(x, y)]
                )
    return summary, per_pair


def title(config: Mapping[str, Any]) -> str:
    """The report's title: model, arms, workload."""
    model = config.get("model_profile") or config["model"]
    if config.get("model_profile") == "tiny":
        model = Path(config["model"]).name
    a, b = config["arms"]
    return (
        f"Serving A/B side by side: {model}, {a} vs {b}, random {config['input_len']} in / "
        f"{config['output_len']} out, {config['num_prompts']} prompts, max concurrency "
        f"{config['max_concurrency'] or 'unlimited'}"
    )


def kv_capacity(log_text: str) -> dict[str, float] | None:
    """vLLM's KV cache size (tokens) and maximum concurrency (at max-model-len) from
    a server log, ``None`` if the log has neither line."""
    size = re.search(r"KV cache size: ([\d,]+) tokens", log_text)
    conc = re.search(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x", log_text)
    if not size and not conc:
        return None
    found: dict[str, float] = {}
    if size:
        found["kv_cache_tokens"] = float(size.group(1).replace(",", ""))
    if conc:
        found["max_model_len"] = float(conc.group(1).replace(",", ""))
        found["max_concurrency_x"] = float(conc.group(2))
    return found


def capacity_problem(arm: str, capacity: Mapping[str, float] | None, config: Mapping) -> str | None:
    """A server whose KV cache cannot hold the workload's concurrent requests (they
    would queue, and the arm measure another concurrency), or ``None``."""
    if not capacity or "kv_cache_tokens" not in capacity or not config["max_concurrency"]:
        return None
    needed = config["max_concurrency"] * (config["input_len"] + config["output_len"])
    if capacity["kv_cache_tokens"] < needed:
        return (
            f"{arm}: KV cache of {capacity['kv_cache_tokens']:,.0f} tokens < {needed:,} "
            f"({config['max_concurrency']} requests of {config['input_len']}+"
            f"{config['output_len']}): requests would queue"
        )
    return None


def render_report(record: Mapping[str, Any]) -> str:
    """The markdown body: how it ran, the paired table, per pair, per-arm means."""
    from benchmarks.serving import serve_ab

    config = record["config"]
    a, b = config["arms"]
    runs = record["runs"]
    records = record["paired"]
    n = len(complete_pairs(runs, [a, b]))
    lines = [
        f"Both servers up side by side on one GPU (`--gpu-memory-utilization "
        f"{config['gpu_memory_utilization']}` each, started one after the other, each its "
        f"own `VLLM_CACHE_ROOT`), {n} of {config['pairs']} pairs run alternately "
        f"({a},{b} / {b},{a} / ...), {len(record['parts'])} invocation(s). Differences are "
        f"{b} - {a} per pair; ± is 2 sigma of the paired differences, {n} pairs (twice the "
        "sample standard deviation, ddof 1). The verdict names an arm only where the mean "
        "difference exceeds its 2 sigma.",
        "",
        paired_table(records, [a, b]),
        f"## Per pair: ({b} - {a}) / {a}",
        "",
        per_pair_table(records, runs, [a, b]),
    ]
    if runs:
        paired_runs = complete_pairs(runs, [a, b])
        table, _, _ = serve_ab.render([r for r in runs if r["pair"] in paired_runs])
        lines += ["## Per-arm means (± half the range over the runs)", "", table]
    if record["problems"]:
        lines += ["## Problems", "", *[f"- {p}" for p in record["problems"]], ""]
    return "\n".join(lines)


def write_report(out_dir: Path, record: dict[str, Any]) -> None:
    """Write ``serve_ab.{md,json}`` and the two CSVs of ``record`` (tables recomputed)."""
    from benchmarks.serving import serve_ab

    arms = record["config"]["arms"]
    record["paired"] = paired_records(record["runs"], arms, serve_ab.TABLE_METRICS)
    body = render_report(record)
    ab_common.write_outputs(out_dir, "serve_ab", title(record["config"]), body, record)
    write_csvs(out_dir, record["paired"], arms, record["environment"])
    plot_pairs(out_dir / "serve_ab_pairs.png", record)


#: The metrics :func:`plot_pairs` draws: (key, label).
PLOTTED = (("mean_tpot_ms", "mean TPOT (ms)"), ("mean_itl_ms", "mean ITL (ms)"))


def plot_pairs(path: Path, record: Mapping[str, Any]) -> bool:
    """Per pair, each arm's value of :data:`PLOTTED` (top) and the paired difference
    in % with its mean and 2 sigma band (bottom); whether a PNG was written (not
    without matplotlib or a complete pair)."""
    rows = {row["key"]: row for row in record.get("paired", ())}
    if not any(rows.get(key, {}).get("pairs") for key, _ in PLOTTED):
        return False
    plt = pyplot()
    if plt is None:
        return False
    a, b = record["config"]["arms"]
    fig, axes = plt.subplots(2, len(PLOTTED), figsize=(5.5 * len(PLOTTED), 6.5), squeeze=False)
    for column, (key, label) in enumerate(PLOTTED):
        row = rows.get(key)
        top, bottom = axes[0][column], axes[1][column]
        if not row or not row["pairs"]:
            top.set_visible(False)
            bottom.set_visible(False)
            continue
        pairs = row["pairs"]
        for arm, marker in ((a, "o"), (b, "s")):
            top.plot(pairs, row[f"{arm} runs"], marker=marker, label=arm)
        top.set_ylabel(label)
        top.legend(fontsize=8)
        pcts = row["diffs_pct"]
        bottom.bar(pairs[: len(pcts)], pcts, color="tab:gray")
        if row["diff_pct_mean"] is not None:
            mean, band = row["diff_pct_mean"], row["diff_pct_2sigma"] or 0.0
            bottom.axhline(mean, color="tab:blue", label=f"mean {mean:+.2f} %")
            bottom.axhspan(mean - band, mean + band, color="tab:blue", alpha=0.15,
                           label=f"± 2 sigma ({band:.2f} %)")  # fmt: skip
            bottom.legend(fontsize=8)
        bottom.axhline(0.0, color="black", linewidth=0.8)
        bottom.set_ylabel(f"({b} - {a}) / {a}, %")
        for ax in (top, bottom):
            ax.set_xlabel("pair")
            ax.set_xticks(pairs)
            ax.grid(True, alpha=0.3)
    env = record["environment"]
    versions = env.get("versions", {})
    fig.suptitle(
        f"{title(record['config'])}\n{env.get('device', '?')}, vllm {versions.get('vllm', '?')}, "
        f"torch {versions.get('torch', '?')}, {env.get('date', '')}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _load_previous(out_dir: Path, resume: bool, config: Mapping[str, Any]) -> dict | None:
    path = out_dir / "serve_ab.json"
    if not path.is_file():
        return None
    if not resume:
        raise ValueError(
            f"{path} exists: pass --resume to add pairs to it, or another --tag/--result-dir"
        )
    previous = json.loads(path.read_text())
    if previous.get("kind") != KIND:
        raise ValueError(f"--resume: {path} is a {previous.get('kind')!r} record, not {KIND!r}")
    differ = [
        f"{key} {previous['config'].get(key)!r} (there) != {config.get(key)!r} (now)"
        for key in RESUME_KEYS
        if previous["config"].get(key) != config.get(key)
    ]
    if differ:
        raise ValueError(f"--resume: {path} was made with other settings: " + "; ".join(differ))
    return previous


def main(args: argparse.Namespace) -> int:
    """Run (or continue) a side-by-side A/B; 0 when all ``--pairs`` pairs are complete
    without problems, :data:`EXIT_MORE_PAIRS` when ``--budget-s`` left pairs to do,
    1 on problems, 2 on a usage error."""
    from benchmarks.serving import serve_ab

    started = time.monotonic()
    cache_root = Path(args.cache_root) if args.cache_root else DEFAULT_CACHE_ROOT
    keep_dir = cache_root / KEEP_SUBDIR
    if args.stop_servers:
        stopped = kept_servers.stop_others(keep_dir, ())
        print(f"== stopped the kept servers: {', '.join(stopped) or 'none were up'}")
        return 0
    try:
        arms = side_arms(args)
        model, server_args = ab_common.resolve_model(args)
        gpu_memory = memory_utilization(args, server_args)
        if args.pairs < 1:
            raise ValueError(f"--pairs must be at least 1, got {args.pairs}")
        if args.profile:
            raise ValueError("--side-by-side does not profile (use the one-server mode)")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    names = [arm.name for arm in arms]
    tokenizer = args.tokenizer or model
    max_concurrency = args.max_concurrency or None
    caches = {arm.name: str(cache_dir(cache_root, arm.name)) for arm in arms}
    config = {
        "model": model,
        "model_profile": args.model_profile or ("tiny" if args.tiny else None),
        "tokenizer": tokenizer,
        "server_args": server_args,
        "arms": names,
        "pairs": args.pairs,
        "workload": args.workload,
        "num_prompts": args.num_prompts,
        "max_concurrency": max_concurrency,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "request_rate": "inf" if math.isinf(args.request_rate) else args.request_rate,
        "seed": args.seed,
        "backend": args.backend,
        "endpoint": args.endpoint,
        "bench_args": args.bench_args,
        "gpu_memory_utilization": gpu_memory,
        "cache_roots": caches,
        "env": ab_common.recorded_env(),
    }
    name = args.tag or datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(args.result_dir) / name
    try:
        previous = _load_previous(out_dir, args.resume, config)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    environment = stamp.environment_stamp()
    record: dict[str, Any] = previous or {
        "kind": KIND,
        "environment": environment,
        "config": config,
        "parts": [],
        "servers": {},
        "commands": {},
        "runs": [],
        "problems": [],
    }
    record["config"]["pairs"] = args.pairs
    # A pair cut short by a killed invocation is run again from its start.
    done = complete_pairs(record["runs"], names)
    record["runs"] = [run for run in record["runs"] if run["pair"] in done]
    first = max(done, default=0) + 1
    if record["parts"] and record["environment"].get("device") != environment.get("device"):
        record["problems"].append(
            f"part {len(record['parts']) + 1} ran on {environment.get('device')}, the first "
            f"on {record['environment'].get('device')}: pairs on different devices"
        )
    if first > args.pairs:
        print(f"== {out_dir}: {len(done)} of {args.pairs} pairs already complete")
        write_report(out_dir, record)
        return 1 if record["problems"] else 0
    part: dict[str, Any] = {"environment": environment, "pairs": [], "servers": {}}
    record["parts"].append(part)
    durations = [run["pair_s"] for run in record["runs"] if run.get("pair_s") is not None]
    stopped_early = False
    infos: dict[str, ab_common.ArmServer] = {}
    extra = ab_common.split_args(args.bench_args)

    def bench(info: ab_common.ArmServer, pair: int) -> dict[str, Any]:
        stem = f"bench_{run_name(pair, info.arm.name)}"
        command = serve_ab.bench_command(
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
            result_filename=f"{stem}.json",
            label=info.arm.name,
            backend=args.backend,
            endpoint=args.endpoint,
            metric_percentiles=args.metric_percentiles,
            extra_args=extra,
        )
        print(f"== pair {pair}, {info.arm.name}: {serve_ab.as_vllm_cli(command)}", flush=True)
        log_path = out_dir / f"{stem}.log"
        begun = time.monotonic()
        ab_common.run_client(command, log_path, args.bench_timeout, f"{stem}: vllm bench serve")
        result_path = out_dir / f"{stem}.json"
        if not result_path.exists():
            raise RuntimeError(f"{stem}: vllm bench serve wrote no {result_path} (log: {log_path})")
        return {
            "pair": pair,
            "arm": info.arm.name,
            "name": run_name(pair, info.arm.name),
            "part": len(record["parts"]),
            "num_prompts": args.num_prompts,
            "started_utc": stamp.utc_now(),
            "run_s": time.monotonic() - begun,
            "command": ab_common.shell_join(command),
            "result": json.loads(result_path.read_text()),
        }

    def save() -> None:
        part["servers"] = {arm: ab_common.server_record(info) for arm, info in infos.items()}
        record["servers"] = part["servers"]
        record["commands"] = {
            arm: {"server": info.command} for arm, info in infos.items() if info.command
        }
        for run in record["runs"][-2:]:
            record["commands"].setdefault(f"{run['arm']} (last pair)", {})["benchmark"] = run[
                "command"
            ]
        write_report(out_dir, record)

    for arm in arms:
        if arm.base_url is None:
            Path(caches[arm.name]).mkdir(parents=True, exist_ok=True)
    if args.keep_servers:
        for other in kept_servers.stop_others(keep_dir, names):
            print(f"== stopped the kept server of {other} (two servers fill the GPU)", flush=True)
    with ExitStack() as stack:
        for arm in arms:  # one after the other: arm_server returns once healthy
            infos[arm.name] = stack.enter_context(
                ab_common.arm_server(
                    arm,
                    model,
                    served_model_name=args.served_model_name,
                    server_args=server_args,
                    out_dir=out_dir,
                    startup_timeout_s=args.startup_timeout,
                    log_name=f"{arm.name}_part{len(record['parts'])}",
                    extra_args=["--gpu-memory-utilization", str(gpu_memory)],
                    extra_env={"VLLM_CACHE_ROOT": caches[arm.name]},
                    python=args.server_python,
                    keep_dir=keep_dir if args.keep_servers else None,
                )
            )
        print(f"== both servers healthy after {time.monotonic() - started:.0f} s", flush=True)
        for pair in range(first, args.pairs + 1):
            elapsed = time.monotonic() - started
            estimate = max(durations, default=args.first_pair_s)
            if args.budget_s is not None and elapsed + estimate + STOP_MARGIN_S > args.budget_s:
                print(
                    f"== budget: {elapsed:.0f} s used, a pair takes ~{estimate:.0f} s, "
                    f"{args.budget_s:.0f} s allowed: stopping before pair {pair}",
                    flush=True,
                )
                stopped_early = True
                break
            begun = time.monotonic()
            pair_runs = [bench(infos[arm.name], pair) for arm in pair_order(pair, arms)]
            pair_s = time.monotonic() - begun
            durations.append(pair_s)
            for run in pair_runs:
                run["pair_s"] = pair_s
            record["runs"] += pair_runs
            part["pairs"].append(pair)
            save()
    # The servers stopped: their logs say whether each arm ran as intended.
    for arm_name, info in infos.items():
        problem = ab_common.check_plugin_state(info, args.expect_workers)
        if problem is not None:
            record["problems"].append(problem)
        if info.log_path is not None and info.log_path.is_file():
            capacity = kv_capacity(info.log_path.read_text(errors="replace"))
            part.setdefault("kv_capacity", {})[arm_name] = capacity
            problem = capacity_problem(arm_name, capacity, record["config"])
            if problem is not None:
                record["problems"].append(problem)
    for run in record["runs"]:
        if run["part"] == len(record["parts"]):
            record["problems"] += serve_ab.completeness_problems(
                run["name"], run["result"], run["num_prompts"]
            )
    save()
    complete = len(complete_pairs(record["runs"], names))
    print()
    print((out_dir / "serve_ab.md").read_text())
    print(f"== {complete} of {args.pairs} pairs complete in {out_dir}", flush=True)
    for problem in record["problems"]:
        print(f"WARNING: {problem}", file=sys.stderr)
    if record["problems"]:
        return 1
    if stopped_early or complete < args.pairs:
        print("== run the same command again (with --resume) for the other pairs", flush=True)
        return EXIT_MORE_PAIRS
    return 0
