"""Per-decode-step routing cost from a torch-profiler trace of a vLLM server.

Reads a Chrome-trace JSON (``.json`` or ``.json.gz``, as vLLM's
``--profiler-config '{"profiler": "torch", ...}'`` writes one per worker) and
reports, per decode step, the GPU time of the routing kernel(s), their share of
the step's GPU time, and the shares of the router's other kernels (the norm /
scale before the gate GEMM, and the gate GEMM)::

    python -m benchmarks.serving.trace_summary TRACE.pt.trace.json.gz [--json OUT.json]
    python -m benchmarks.serving.trace_summary TRACE --pattern 'routing: ours=^my_kernel'

How events are attributed:

* A **step** is one worker iteration: vLLM's ``execute_context_<n>(<tokens>)_
  generation_<n>(<tokens>)`` annotation (vLLM 0.24+, whenever its profiler
  runs). A **decode step** has no context (prefill) request. Each GPU kernel
  belongs to the step whose annotation contains the CPU launch that the
  kernel's ``correlation`` id names (a ``cudaGraphLaunch`` for a CUDA-graph
  replay), so kernels that run after the CPU has moved on still count for the
  step that launched them.
* **GPU time** of a step is the sum of its kernel (and memcpy/memset)
  durations.
* **Categories** come from :data:`DEFAULT_PATTERNS`, an ordered table of
  ``(category, regex)`` matched against kernel names with ``re.search``, first
  match wins; ``--pattern CATEGORY=REGEX`` replaces a category's regex or adds
  one (``--pattern CATEGORY=`` drops it). With vLLM's phase annotations
  (``VLLM_CUSTOM_SCOPES_FOR_PROFILING=1``), routing patterns only count kernels
  launched inside ``gpu_model_runner: forward`` (the sampler's softmax/top-k
  run elsewhere) or inside a CUDA-graph launch.
* The router's **gate GEMM** and **norm/scale** kernels have generic names
  (cuBLAS/CUTLASS GEMMs, Inductor-fused norms), so they are found by position:
  for each routing call (a run of routing kernels on one stream), walking back
  on the same stream, the nearest kernel whose name matches the GEMM pattern is
  the gate GEMM and the ``--norm-kernels`` kernels before it (default 1: vLLM
  compiles RMSNorm * root_size * scale into one Inductor kernel) are the
  norm/scale. ``routing_neighbors`` in the output lists what was found there, so
  a reader can check the attribution on a real trace.
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
import re
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import tables

# Ordered: the first matching category names a kernel. The three routing
# categories are the three arms of benchmarks.serving.serve_ab.
DEFAULT_PATTERNS: tuple[tuple[str, str], ...] = (
    # This package's fused router (vllm_gemma4_router/fused_router/kernels/entry.py): the
    # norm, scale, gate GEMM and routing in one kernel (custom_ops +gemma4_fused_router).
    ("routing: fused router", r"^gemma4_fused_router_kernel"),
    # This package's Triton kernel (vllm_gemma4_router/routing/kernels/entry.py).
    ("routing: ours", r"^gemma4_routing_kernel"),
    # vLLM's in-tree Triton kernel (model_executor/models/gemma4.py, 0.24+).
    ("routing: vLLM in-tree", r"^_gemma4_routing_kernel"),
    # The unfused torch reference (custom_ops -gemma4_routing): ATen's top-k /
    # sort kernels and the Inductor kernels of softmax and the renormalisation.
    (
        "routing: torch reference",
        r"[Tt]op[Kk]|bitonicSort|radixSort|radixSelect|segmented_sort|"
        r"triton_\w*fused_\w*(_softmax|topk|div_\w*sum|sum_\w*div)",
    ),
)
ROUTING_PREFIX = "routing"
# The category whose kernel is the whole router: no separate gate GEMM or norm to find.
FUSED_ROUTER = "routing: fused router"
# cuBLAS / cuBLASLt / CUTLASS / nvJet GEMM kernels, and Triton matmuls.
DEFAULT_GEMM_PATTERN = r"gemm|Gemm|GEMM|cutlass|xmma|cublas|nvjet|sm\d+_|matmul|_mm_"
DEFAULT_STEP_PATTERN = r"^execute_context_(\d+)\((\d+)\)_generation_(\d+)\((\d+)\)$"
DEFAULT_FORWARD_PATTERN = r"^gpu_model_runner: forward$"
GATE_GEMM = "router: gate GEMM"
ROUTER_NORM = "router: norm/scale"
_GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
_LAUNCH_CATS = {"cuda_runtime", "cuda_driver"}
# How far back from a routing call the gate GEMM may be (a cast or copy may sit between).
_GATE_SEARCH = 4
_GRAPH_LAUNCH = re.compile(r"^cu(da)?GraphLaunch")


def load_trace(path: str | Path) -> dict[str, Any]:
    """The trace JSON at ``path``; gzip is detected from the content, not the name."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    data = json.loads(raw)
    if isinstance(data, list):  # the bare-array form of the Chrome trace format
        data = {"traceEvents": data}
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise ValueError(f"{path}: not a Chrome trace (no traceEvents list)")
    return data


def patterns_with(overrides: Sequence[str]) -> list[tuple[str, str]]:
    """:data:`DEFAULT_PATTERNS` with ``CATEGORY=REGEX`` overrides applied (empty REGEX drops)."""
    table = dict(DEFAULT_PATTERNS)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--pattern must be CATEGORY=REGEX, got {item!r}")
        name, regex = item.split("=", 1)
        name = name.strip()
        if not name:
            raise ValueError(f"--pattern needs a category name, got {item!r}")
        if regex:
            re.compile(regex)
            table[name] = regex
        else:
            table.pop(name, None)
    return list(table.items())


@dataclass
class _Interval:
    start: float
    end: float
    name: str
    decode: bool = False


@dataclass
class _Kernel:
    name: str
    ts: float
    dur: float
    stream: tuple[Any, Any]
    category: str | None
    step: int | None
    in_forward: bool


@dataclass
class StepStats:
    """GPU time of one step, in microseconds: total and per category."""

    name: str
    decode: bool
    gpu_us: float = 0.0
    categories: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    launches: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _intervals(events: Iterable[Mapping[str, Any]], pattern: re.Pattern[str]) -> list[_Interval]:
    found = []
    for event in events:
        if event.get("ph") != "X" or event.get("cat") != "user_annotation":
            continue
        match = pattern.search(str(event.get("name", "")))
        if match is None:
            continue
        start = float(event["ts"])
        decode = False
        if match.groups():
            # execute_context_<n>(..)_generation_<m>(..): decode when n == 0 < m.
            decode = int(match.group(1)) == 0 and int(match.group(3)) > 0
        found.append(_Interval(start, start + float(event.get("dur", 0.0)), event["name"], decode))
    return sorted(found, key=lambda interval: interval.start)


def _containing(intervals: Sequence[_Interval], starts: Sequence[float], ts: float) -> int | None:
    # One worker's steps (and its forward phases) follow each other without
    # overlap: the last interval starting at or before ts is the only candidate.
    index = bisect.bisect_right(starts, ts) - 1
    if index >= 0 and intervals[index].start <= ts <= intervals[index].end:
        return index
    return None


def summarize(
    trace: Mapping[str, Any],
    *,
    patterns: Sequence[tuple[str, str]] = DEFAULT_PATTERNS,
    gemm_pattern: str = DEFAULT_GEMM_PATTERN,
    step_pattern: str = DEFAULT_STEP_PATTERN,
    forward_pattern: str = DEFAULT_FORWARD_PATTERN,
    norm_kernels: int = 1,
    decode_only: bool = True,
    top: int = 15,
) -> dict[str, Any]:
    """The routing summary of one trace (see the module docstring); a JSON-able dict.

    Keys: ``steps`` (all annotated steps), ``decode_steps``, ``steps_used``
    (what the statistics cover: the decode steps, or every step if
    ``decode_only`` is false or no step is annotated, then the whole trace is one
    window), ``gpu_us_per_step`` (median, mean), ``categories`` (per category:
    ``us_per_step`` median and mean, ``share_pct`` of the covered GPU time,
    ``launches_per_step``), ``top_kernels``, ``routing_neighbors``,
    ``unattributed_kernels`` and the patterns used.
    """
    if norm_kernels < 0:
        raise ValueError(f"norm_kernels must be >= 0, got {norm_kernels}")
    events = [e for e in trace.get("traceEvents", []) if isinstance(e, dict)]
    compiled = [(name, re.compile(regex)) for name, regex in patterns]
    gemm = re.compile(gemm_pattern)
    steps = _intervals(events, re.compile(step_pattern))
    step_starts = [s.start for s in steps]
    forwards = _intervals(events, re.compile(forward_pattern))
    forward_starts = [f.start for f in forwards]

    launch_of: dict[Any, tuple[int | None, bool]] = {}
    graph_launches = False
    for event in events:
        if event.get("ph") != "X" or event.get("cat") not in _LAUNCH_CATS:
            continue
        correlation = (event.get("args") or {}).get("correlation")
        if correlation is None:
            continue
        ts = float(event["ts"])
        step = _containing(steps, step_starts, ts) if steps else None
        graph = bool(_GRAPH_LAUNCH.search(str(event.get("name", ""))))
        graph_launches |= graph
        in_forward = graph or (
            bool(forwards) and _containing(forwards, forward_starts, ts) is not None
        )
        launch_of[correlation] = (step, in_forward)

    kernels: list[_Kernel] = []
    unattributed = 0
    for event in events:
        if event.get("ph") != "X" or event.get("cat") not in _GPU_CATS:
            continue
        args = event.get("args") or {}
        step, in_forward = launch_of.get(args.get("correlation"), (None, False))
        if steps and step is None:
            unattributed += 1
            continue
        name = str(event.get("name", ""))
        category = None
        if event.get("cat") == "kernel":
            for category_name, regex in compiled:
                if regex.search(name):
                    category = category_name
                    break
        # Where the trace tells the model's forward apart (phase annotations,
        # or CUDA-graph launches), routing is only counted inside it.
        if (
            category is not None
            and category.startswith(ROUTING_PREFIX)
            and (forwards or graph_launches)
            and not in_forward
        ):
            category = None  # e.g. the sampler's top-k, outside the model's forward
        stream = (event.get("pid"), args.get("stream", event.get("tid")))
        kernels.append(
            _Kernel(
                name,
                float(event["ts"]),
                float(event.get("dur", 0.0)),
                stream,
                category,
                step,
                in_forward,
            )
        )

    stats = [StepStats(s.name, s.decode) for s in steps] or [StepStats("whole trace", True)]

    def stat_of(kernel: _Kernel) -> StepStats:
        return stats[kernel.step] if steps else stats[0]

    for kernel in kernels:
        stat = stat_of(kernel)
        stat.gpu_us += kernel.dur
        if kernel.category is not None:
            stat.categories[kernel.category] += kernel.dur
            stat.launches[kernel.category] += 1

    used = [s for s in stats if s.decode] if decode_only and steps else stats
    used_ids = {id(s) for s in used}
    neighbors_before: Counter[str] = Counter()
    neighbors_after: Counter[str] = Counter()
    by_stream: dict[tuple[Any, Any], list[_Kernel]] = defaultdict(list)
    for kernel in kernels:
        by_stream[kernel.stream].append(kernel)
    for stream_kernels in by_stream.values():
        stream_kernels.sort(key=lambda k: k.ts)
        index = 0
        while index < len(stream_kernels):
            kernel = stream_kernels[index]
            if not (kernel.category or "").startswith(ROUTING_PREFIX):
                index += 1
                continue
            first = index
            while index < len(stream_kernels) and (stream_kernels[index].category or "").startswith(
                ROUTING_PREFIX
            ):
                index += 1
            if all(k.category != FUSED_ROUTER for k in stream_kernels[first:index]):
                _attribute_router(stream_kernels, first, gemm, norm_kernels, stat_of)
            if id(stat_of(kernel)) not in used_ids:
                continue
            for near in stream_kernels[max(0, first - 3) : first]:
                neighbors_before[near.name] += 1
            for near in stream_kernels[index : index + 2]:
                neighbors_after[near.name] += 1

    total_us = sum(s.gpu_us for s in used)
    names = sorted({name for s in used for name in s.categories}, key=_category_order(patterns))
    categories = {}
    for name in names:
        per_step = [s.categories.get(name, 0.0) for s in used]
        categories[name] = {
            "us_per_step_median": statistics.median(per_step),
            "us_per_step_mean": statistics.fmean(per_step),
            "share_pct": 100.0 * sum(per_step) / total_us if total_us else None,
            "launches_per_step": statistics.fmean(s.launches.get(name, 0) for s in used),
        }
    routing = [name for name in names if name.startswith(ROUTING_PREFIX)]
    routing_per_step = [sum(s.categories.get(n, 0.0) for n in routing) for s in used]

    per_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for kernel in kernels:
        if id(stat_of(kernel)) in used_ids:
            per_name[kernel.name][0] += kernel.dur
            per_name[kernel.name][1] += 1
    ranked = sorted(per_name.items(), key=lambda item: -item[1][0])[:top]
    return {
        "steps": len(steps),
        "decode_steps": sum(s.decode for s in steps),
        "steps_used": len(used) if steps else 0,
        "window": "decode steps"
        if decode_only and steps
        else ("all steps" if steps else "whole trace"),
        "gpu_us_per_step_median": statistics.median(s.gpu_us for s in used) if used else None,
        "gpu_us_per_step_mean": statistics.fmean(s.gpu_us for s in used) if used else None,
        "routing_us_per_step_median": statistics.median(routing_per_step) if used else None,
        "routing_share_pct": 100.0 * sum(routing_per_step) / total_us if total_us else None,
        "categories": categories,
        "top_kernels": [
            {
                "name": name,
                "us_per_step": value[0] / max(len(used), 1),
                "share_pct": 100.0 * value[0] / total_us if total_us else None,
                "launches_per_step": value[1] / max(len(used), 1),
            }
            for name, value in ranked
        ],
        "routing_neighbors": {
            "before": dict(neighbors_before.most_common(8)),
            "after": dict(neighbors_after.most_common(8)),
        },
        "gpu_events": len(kernels),
        "unattributed_kernels": unattributed,
        "patterns": dict(patterns),
        "gemm_pattern": gemm_pattern,
        "norm_kernels": norm_kernels,
    }


def _attribute_router(
    stream_kernels: Sequence[_Kernel],
    first: int,
    gemm: re.Pattern[str],
    norm_kernels: int,
    stat_of,
) -> None:
    """Walk back from a routing call: the nearest run of GEMM kernels = the gate (a
    split-K GEMM is two: cuBLAS's partial GEMM, then its ``splitKreduce``), the
    kernels before that run = norm."""
    index = first - 1
    while index >= 0 and index >= first - _GATE_SEARCH:
        candidate = stream_kernels[index]
        if candidate.category is None and gemm.search(candidate.name):
            start = index
            while (
                start > 0
                and stream_kernels[start - 1].category is None
                and gemm.search(stream_kernels[start - 1].name)
            ):
                start -= 1
            for part in stream_kernels[start : index + 1]:
                _count(part, GATE_GEMM, stat_of)
            for norm in stream_kernels[max(0, start - norm_kernels) : start]:
                if norm.category is None:
                    _count(norm, ROUTER_NORM, stat_of)
            return
        index -= 1


def _count(kernel: _Kernel, category: str, stat_of) -> None:
    kernel.category = category
    stat = stat_of(kernel)
    stat.categories[category] += kernel.dur
    stat.launches[category] += 1


def _category_order(patterns: Sequence[tuple[str, str]]):
    order = {name: i for i, (name, _) in enumerate(patterns)}
    order.update({ROUTER_NORM: len(order), GATE_GEMM: len(order) + 1})
    return lambda name: (order.get(name, len(order) + 2), name)


def format_summary(summary: Mapping[str, Any], title: str = "") -> str:
    """A short markdown report of :func:`summarize`'s result."""

    def num(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines.append(
        f"{summary['steps_used']} {summary['window']} of {summary['steps']} annotated steps; "
        f"GPU time per step: median {num(summary['gpu_us_per_step_median'])} us; "
        f"routing: median {num(summary['routing_us_per_step_median'], 2)} us per step, "
        f"{num(summary['routing_share_pct'], 2)} % of GPU time"
    )
    if not summary.get("gpu_events", 1):
        lines += ["", "(no GPU kernels in this trace: a CPU-only server, or CUPTI saw none)"]
    head = ["kernels", "us / step (median)", "share of GPU time", "launches / step"]
    cells = [
        [name, num(row["us_per_step_median"], 2), f"{num(row['share_pct'], 2)} %"]
        + [num(row["launches_per_step"])]
        for name, row in summary["categories"].items()
    ]
    lines += ["", tables.markdown_table(head, cells, ["left", "right", "right", "right"])]
    if summary["routing_neighbors"]["before"]:
        before = ", ".join(f"{k} x{v}" for k, v in summary["routing_neighbors"]["before"].items())
        lines += ["", f"Kernels just before each routing call (same stream): {before}"]
    lines += ["", "Top kernels: "]
    for row in summary["top_kernels"][:8]:
        lines.append(f"- {num(row['share_pct'], 2)} % {row['name'][:120]}")
    return "\n".join(lines) + "\n"


def find_traces(directory: str | Path) -> list[Path]:
    """The torch-profiler traces under ``directory`` (``*.pt.trace.json[.gz]``), sorted."""
    root = Path(directory)
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and re.search(r"\.pt\.trace\.json(\.gz)?$", path.name)
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving.trace_summary",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("traces", nargs="+", help="trace files, or directories to search")
    parser.add_argument(
        "--pattern",
        action="append",
        default=[],
        metavar="CATEGORY=REGEX",
        help="replace/add a kernel category (empty REGEX drops it); repeatable",
    )
    parser.add_argument("--gemm-pattern", default=DEFAULT_GEMM_PATTERN)
    parser.add_argument("--step-pattern", default=DEFAULT_STEP_PATTERN)
    parser.add_argument("--forward-pattern", default=DEFAULT_FORWARD_PATTERN)
    parser.add_argument("--norm-kernels", type=int, default=1)
    parser.add_argument("--all-steps", action="store_true", help="not only decode steps")
    parser.add_argument("--json", default=None, help="also write the summaries here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Summarize each trace; 1 if a trace has no routing kernel at all."""
    args = build_parser().parse_args(argv)
    patterns = patterns_with(args.pattern)
    paths: list[Path] = []
    for item in args.traces:
        path = Path(item)
        paths += find_traces(path) if path.is_dir() else [path]
    if not paths:
        print("no traces found", file=sys.stderr)
        return 1
    results = {}
    status = 0
    for path in paths:
        summary = summarize(
            load_trace(path),
            patterns=patterns,
            gemm_pattern=args.gemm_pattern,
            step_pattern=args.step_pattern,
            forward_pattern=args.forward_pattern,
            norm_kernels=args.norm_kernels,
            decode_only=not args.all_steps,
        )
        results[str(path)] = summary
        print(format_summary(summary, title=path.name))
        if not summary["routing_us_per_step_median"]:
            status = 1
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
