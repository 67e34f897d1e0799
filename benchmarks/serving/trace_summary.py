"""Per-decode-step routing cost from a torch-profiler trace of a vLLM server.

Reads a Chrome-trace JSON (``.json`` or ``.json.gz``, as vLLM's
``--profiler-config '{"profiler": "torch", ...}'`` writes one per worker) and
reports, per decode step, the GPU time of the routing kernel(s), their share of
the step's GPU time, and the shares of the router's other kernels (the norm /
scale before the gate GEMM, and the gate GEMM)::

    python -m benchmarks.serving.trace_summary TRACE.pt.trace.json.gz [--json OUT.json]
    python -m benchmarks.serving.trace_summary TRACE --pattern 'routing: ours=^my_kernel'
    python -m benchmarks.serving.trace_summary TRACE --gate   # gate GEMM kernels per batch
    python -m benchmarks.serving.trace_summary BEFORE AFTER --compare-kernels 1  # what moved

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
* ``--gate`` (:func:`gate_report`, issue #34 "confirm the gate") names the gate
  GEMM kernel(s) per decode batch size instead, each kernel classed by name
  (:data:`GATE_CLASSES`: vLLM 0.26's CuTe-DSL ``ll_bf16_gemm`` kernels, cuBLAS /
  CUTLASS GEMMs and split-K reduces, Inductor GEMM templates, fused norms, the
  routing kernels), and says which GateLinear tier that is; the kernels around
  the first routing call are listed with their class (or UNMATCHED), so a name
  the patterns miss shows up there.
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
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
# cuBLAS / cuBLASLt / CUTLASS / nvJet GEMM and GEMV kernels, Triton matmuls and
# Inductor's GEMM templates, and CuTe-DSL kernels (``kernel_cutlass_...``: vLLM
# 0.26's ll_bf16_gemm gate GEMM is one).
DEFAULT_GEMM_PATTERN = (
    r"gemm|Gemm|GEMM|gemv|Gemv|cutlass|xmma|cublas|nvjet|sm\d+_|matmul|_mm_|^triton_tem_"
)
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


def _collect_kernels(
    trace: Mapping[str, Any],
    *,
    patterns: Sequence[tuple[str, str]],
    step_pattern: str,
    forward_pattern: str,
) -> tuple[list[_Interval], list[_Kernel], int]:
    """The annotated steps, the GPU events (each with its step, category and
    whether its launch was inside the model's forward) and how many GPU events
    no step could claim."""
    events = [e for e in trace.get("traceEvents", []) if isinstance(e, dict)]
    compiled = [(name, re.compile(regex)) for name, regex in patterns]
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

    return steps, kernels, unattributed


def _routing_runs(stream_kernels: list[_Kernel]) -> Iterator[tuple[int, int]]:
    """``(first, end)`` of each run of consecutive routing kernels in one stream, in order."""
    index = 0
    while index < len(stream_kernels):
        if not (stream_kernels[index].category or "").startswith(ROUTING_PREFIX):
            index += 1
            continue
        first = index
        while index < len(stream_kernels) and (stream_kernels[index].category or "").startswith(
            ROUTING_PREFIX
        ):
            index += 1
        yield first, index


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
    gemm = re.compile(gemm_pattern)
    steps, kernels, unattributed = _collect_kernels(
        trace, patterns=patterns, step_pattern=step_pattern, forward_pattern=forward_pattern
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
        for first, index in _routing_runs(stream_kernels):
            kernel = stream_kernels[first]
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


# -- The gate GEMM's kernels (issue #34, "confirm the gate") ---------------------
#
# vLLM 0.26's GateLinear picks its tier with a Python ``if`` on the token count:
# tier 1 is ``ll_bf16_gemm`` (CuTe DSL: a dot-product kernel, class
# ``LLBf16Dotprod`` in ``_ll_bf16_dotprod.py``, at M <= 4 for Gemma 4's K = 2816,
# a clustered split-K kernel, ``LLBf16SplitK`` in ``_ll_bf16_splitk.py``, at
# 5 <= M <= 16), tier 5 is ``torch.mm(..., out_dtype=float32)``, i.e. cuBLAS. The
# CuTe DSL names a kernel ``kernel_cutlass_<function>_<mangled arguments>_<n>``,
# where the arguments include ``str(self)`` stripped of punctuation and of its
# address (``..._ll_bf16_dotprodLLBf16Dotprod_object_at_...``): the class and
# module names are matched, case-insensitive, with or without underscores, and a
# CuTe-DSL kernel matching neither is "CuTe DSL, other".
LL_DOTPROD = "ll_bf16 dot-product (CuTe DSL)"
LL_SPLITK = "ll_bf16 split-K (CuTe DSL)"
CUTE_OTHER = "CuTe DSL, other"
CUBLAS_REDUCE = "cuBLAS split-K reduce"
CUBLAS_GEMM = "cuBLAS/CUTLASS GEMM"
TRITON_GEMM = "Inductor/Triton GEMM"
FUSED_NORM = "norm (Inductor-fused or vLLM)"
# Ordered, first match wins, case-insensitive ("gemm" not followed by "a": Gemma).
# The routing categories (DEFAULT_PATTERNS, case-sensitive) are matched first.
GATE_CLASSES: tuple[tuple[str, str], ...] = (
    (LL_DOTPROD, r"ll_?bf16_?dot_?prod"),
    (LL_SPLITK, r"ll_?bf16_?split_?k"),
    (CUTE_OTHER, r"^kernel_cutlass_|cute_?dsl"),
    (CUBLAS_REDUCE, r"split_?k_?reduce|reduce_?split_?k"),
    (CUBLAS_GEMM, r"nvjet|xmma|gemm(?!a)|gemv|cutlass|cublas"),
    (TRITON_GEMM, r"^triton_tem_|matmul"),
    (FUSED_NORM, r"rms_?norm|^triton_\w*fused\w*rsqrt"),
)
GEMM_CLASSES = frozenset(
    {LL_DOTPROD, LL_SPLITK, CUTE_OTHER, CUBLAS_REDUCE, CUBLAS_GEMM, TRITON_GEMM}
)
TIER_LL_BF16 = "tier 1: ll_bf16_gemm (CuTe DSL)"
TIER_CUBLAS = "tier 5: cuBLAS (torch.mm out_dtype=fp32)"
# How many kernels before (and after) a routing call are listed as its neighbourhood.
_NEAR_BEFORE = 6
_NEAR_AFTER = 2
_BATCH = re.compile(r"generation_(\d+)\((\d+)")


def gate_class(name: str, patterns: Sequence[tuple[str, str]] = DEFAULT_PATTERNS) -> str | None:
    """The class of a kernel name: a :data:`GATE_CLASSES` entry or a routing category."""
    for label, regex in patterns:
        if re.search(regex, name):
            return label
    for label, regex in GATE_CLASSES:
        if re.search(regex, name, re.IGNORECASE):
            return label
    return None


def tier_of(classes: Iterable[str]) -> str:
    """What the gate's kernel classes say about GateLinear's tier."""
    found = set(classes)
    if not found:
        return "no gate GEMM found before the routing calls"
    if found <= {LL_DOTPROD, LL_SPLITK}:
        return TIER_LL_BF16
    if found <= {CUBLAS_GEMM, CUBLAS_REDUCE}:
        return TIER_CUBLAS
    if found == {TRITON_GEMM}:
        return "Inductor/Triton GEMM (not a GateLinear tier: check the trace)"
    if CUTE_OTHER in found:
        return "a CuTe-DSL kernel not named like ll_bf16 (check the names)"
    return "mixed: " + ", ".join(sorted(found))


def gate_report(
    trace: Mapping[str, Any],
    *,
    patterns: Sequence[tuple[str, str]] = DEFAULT_PATTERNS,
    step_pattern: str = DEFAULT_STEP_PATTERN,
    forward_pattern: str = DEFAULT_FORWARD_PATTERN,
) -> dict[str, Any]:
    """The gate GEMM kernel(s) per decode batch size of one trace; a JSON-able dict.

    Decode steps are grouped by their batch (the ``generation_<n>`` of vLLM's step
    annotation). For each routing call (a run of routing kernels on one stream,
    launched in the model's forward), the gate is the nearest run of GEMM-class
    kernels at most 4 kernels back on the same stream (as :func:`summarize` finds
    it). Per batch: ``gate_kernels`` (name, class, launches and us per step),
    ``tier`` (:func:`tier_of`), the per-step launches and time of every class,
    ``near_gate`` (the kernels around the first routing call of the first step, in
    stream order, each with its class or ``None``) and ``unmatched_near_gate``
    (unclassified kernel names among the 6 before every routing call, with counts).
    """
    steps, kernels, unattributed = _collect_kernels(
        trace, patterns=patterns, step_pattern=step_pattern, forward_pattern=forward_pattern
    )
    batch_of: dict[int, int] = {}
    for index, step in enumerate(steps):
        match = _BATCH.search(step.name)
        if step.decode and match:
            batch_of[index] = int(match.group(1))
    classes: dict[int, str | None] = {}
    for kernel in kernels:
        label = gate_class(kernel.name, patterns)
        if label is not None and label.startswith(ROUTING_PREFIX) and kernel.category != label:
            label = None  # e.g. the sampler's top-k, outside the model's forward
        classes[id(kernel)] = label
    by_stream: dict[tuple[Any, Any], list[_Kernel]] = defaultdict(list)
    for kernel in kernels:
        if kernel.step in batch_of:
            by_stream[kernel.stream].append(kernel)

    # Per batch, per step index: class -> [launches, us]; gate kernel name -> [launches, us].
    per_step: dict[int, dict[int, dict[str, list[float]]]] = defaultdict(dict)
    gate_per_step: dict[int, dict[int, dict[str, list[float]]]] = defaultdict(dict)
    gpu_per_step: dict[int, dict[int, float]] = defaultdict(dict)
    routing_calls: dict[int, dict[int, int]] = defaultdict(dict)
    for index, batch in batch_of.items():
        per_step[batch][index] = defaultdict(lambda: [0, 0.0])
        gate_per_step[batch][index] = defaultdict(lambda: [0, 0.0])
        gpu_per_step[batch][index] = 0.0
        routing_calls[batch][index] = 0
    class_names: dict[int, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    near_gate: dict[int, list[dict[str, Any]]] = {}
    unmatched: dict[int, Counter[str]] = defaultdict(Counter)
    for kernel in kernels:
        batch = batch_of.get(kernel.step)  # type: ignore[arg-type]
        if batch is None:
            continue
        gpu_per_step[batch][kernel.step] += kernel.dur
        label = classes[id(kernel)]
        if label is not None:
            cell = per_step[batch][kernel.step][label]
            cell[0] += 1
            cell[1] += kernel.dur
            class_names[batch][label][kernel.name] += 1

    for stream_kernels in by_stream.values():
        stream_kernels.sort(key=lambda k: k.ts)
        for first, index in _routing_runs(stream_kernels):
            head = stream_kernels[first]
            batch = batch_of[head.step]  # type: ignore[index]
            routing_calls[batch][head.step] += 1  # type: ignore[index]
            before = stream_kernels[max(0, first - _NEAR_BEFORE) : first]
            for near in before:
                if classes[id(near)] is None:
                    unmatched[batch][near.name] += 1
            if batch not in near_gate:
                near_gate[batch] = [
                    {"offset": position - first, "name": near.name, "class": classes[id(near)]}
                    for position, near in enumerate(
                        stream_kernels[max(0, first - _NEAR_BEFORE) : index + _NEAR_AFTER],
                        start=max(0, first - _NEAR_BEFORE),
                    )
                ]
            if head.category == FUSED_ROUTER:
                continue
            for part in _gate_run(stream_kernels, first, classes):
                cell = gate_per_step[batch][part.step][part.name]  # type: ignore[index]
                cell[0] += 1
                cell[1] += part.dur

    batches: dict[str, Any] = {}
    for batch in sorted(per_step):
        step_ids = sorted(per_step[batch])
        count = len(step_ids)
        gate_names = sorted(
            {name for i in step_ids for name in gate_per_step[batch][i]},
            key=lambda name: -sum(gate_per_step[batch][i][name][1] for i in step_ids),
        )
        gate_kernels = []
        for name in gate_names:
            launches = [gate_per_step[batch][i].get(name, [0, 0.0])[0] for i in step_ids]
            times = [gate_per_step[batch][i].get(name, [0, 0.0])[1] for i in step_ids]
            gate_kernels.append(
                {
                    "name": name,
                    "class": gate_class(name, patterns),
                    "launches_per_step": statistics.fmean(launches),
                    "us_per_step_median": statistics.median(times),
                    "us_per_launch": sum(times) / max(sum(launches), 1),
                }
            )
        gate_us = [sum(c[1] for c in gate_per_step[batch][i].values()) for i in step_ids]
        labels = sorted(
            {label for i in step_ids for label in per_step[batch][i]}, key=_gate_class_order
        )
        batches[str(batch)] = {
            "decode_steps": count,
            "gpu_us_per_step_median": statistics.median(gpu_per_step[batch][i] for i in step_ids),
            "routing_calls_per_step": statistics.fmean(routing_calls[batch][i] for i in step_ids),
            "tier": tier_of(k["class"] for k in gate_kernels if k["class"]),
            "gate_kernels": gate_kernels,
            "gate_us_per_step_median": statistics.median(gate_us),
            "gate_launches_per_step": statistics.fmean(
                sum(c[0] for c in gate_per_step[batch][i].values()) for i in step_ids
            ),
            "classes": {
                label: {
                    "launches_per_step": statistics.fmean(
                        per_step[batch][i].get(label, [0, 0.0])[0] for i in step_ids
                    ),
                    "us_per_step_median": statistics.median(
                        per_step[batch][i].get(label, [0, 0.0])[1] for i in step_ids
                    ),
                    "kernels": dict(class_names[batch][label].most_common(4)),
                }
                for label in labels
            },
            "near_gate": near_gate.get(batch, []),
            "unmatched_near_gate": dict(unmatched[batch].most_common(8)),
        }
    return {
        "steps": len(steps),
        "decode_steps": len(batch_of),
        "gpu_events": len(kernels),
        "unattributed_kernels": unattributed,
        "batches": batches,
        "gate_classes": dict(GATE_CLASSES),
    }


def _gate_run(
    stream_kernels: Sequence[_Kernel], first: int, classes: Mapping[int, str | None]
) -> list[_Kernel]:
    """The gate before the routing call at ``first``: the nearest run of GEMM-class
    kernels at most :data:`_GATE_SEARCH` back (a split-K GEMM and its reduce are one run)."""
    index = first - 1
    while index >= 0 and index >= first - _GATE_SEARCH:
        if classes[id(stream_kernels[index])] in GEMM_CLASSES:
            start = index
            while start > 0 and classes[id(stream_kernels[start - 1])] in GEMM_CLASSES:
                start -= 1
            return list(stream_kernels[start : index + 1])
        index -= 1
    return []


def _gate_class_order(label: str) -> tuple[int, str]:
    order = [name for name, _ in GATE_CLASSES] + [name for name, _ in DEFAULT_PATTERNS]
    return (order.index(label) if label in order else len(order), label)


def gate_batches(report: Mapping[str, Any], batches: Iterable[int] | None = None) -> list[int]:
    """The batch sizes of a :func:`gate_report`, sorted (only ``batches`` if given)."""
    found = sorted(int(b) for b in report["batches"])
    return [b for b in found if batches is None or b in set(batches)]


def format_gate_report(report: Mapping[str, Any], title: str = "", name_width: int = 100) -> str:
    """Markdown of :func:`gate_report`: one row per batch size, then per batch the classes
    and the kernels around the first routing call."""

    def short(name: str) -> str:
        return name if len(name) <= name_width else name[: name_width - 3] + "..."

    lines = [f"### {title}", ""] if title else []
    lines.append(
        f"{report['decode_steps']} decode steps of {report['steps']} annotated steps, "
        f"{report['gpu_events']} GPU events ({report['unattributed_kernels']} outside any step)"
    )
    head = ["batch", "steps", "tier", "gate kernel(s)", "gate us / step", "launches / step"]
    head += ["routing calls / step", "GPU us / step"]
    rows = []
    for batch in gate_batches(report):
        row = report["batches"][str(batch)]
        names = "; ".join(short(k["name"]) for k in row["gate_kernels"]) or "-"
        rows.append(
            [
                str(batch),
                str(row["decode_steps"]),
                row["tier"],
                names,
                f"{row['gate_us_per_step_median']:.2f}",
                f"{row['gate_launches_per_step']:.1f}",
                f"{row['routing_calls_per_step']:.1f}",
                f"{row['gpu_us_per_step_median']:.1f}",
            ]
        )
    align = ["right", "right", "left", "left", "right", "right", "right", "right"]
    lines += ["", tables.markdown_table(head, rows, align)]
    for batch in gate_batches(report):
        row = report["batches"][str(batch)]
        lines += ["", f"Batch {batch}: kernel classes per decode step", ""]
        cells = [
            [
                label,
                f"{cell['launches_per_step']:.1f}",
                f"{cell['us_per_step_median']:.2f}",
                "; ".join(f"{short(n)} x{c}" for n, c in list(cell["kernels"].items())[:2]),
            ]
            for label, cell in row["classes"].items()
        ]
        lines.append(
            tables.markdown_table(
                ["class", "launches / step", "us / step (median)", "kernels (count in window)"],
                cells,
                ["left", "right", "right", "left"],
            )
        )
        if row["near_gate"]:
            lines += ["", f"Batch {batch}: kernels around the first routing call (stream order):"]
            for near in row["near_gate"]:
                label = near["class"] or "UNMATCHED"
                lines.append(f"- {near['offset']:+d} [{label}] {short(near['name'])}")
        if row["unmatched_near_gate"]:
            unmatched = ", ".join(f"{short(n)} x{c}" for n, c in row["unmatched_near_gate"].items())
            lines += ["", f"Batch {batch}: unmatched kernels before routing calls: {unmatched}"]
    return "\n".join(lines) + "\n"


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


def kernel_times(
    trace: Mapping[str, Any],
    batch: int,
    *,
    step_pattern: str = DEFAULT_STEP_PATTERN,
    forward_pattern: str = DEFAULT_FORWARD_PATTERN,
) -> dict[str, dict[str, float]]:
    """Every kernel name of the decode steps at ``batch`` (vLLM's ``generation_<batch>``):
    ``launches_per_step`` (mean), ``us_per_launch`` (median over all launches) and
    ``us_per_step`` (median over the steps). Empty when no such step is in the trace."""
    steps, kernels, _ = _collect_kernels(
        trace, patterns=(), step_pattern=step_pattern, forward_pattern=forward_pattern
    )
    chosen = set()
    for index, step in enumerate(steps):
        match = _BATCH.search(step.name)
        if step.decode and match and int(match.group(1)) == batch:
            chosen.add(index)
    per_step: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for kernel in kernels:
        if kernel.step in chosen:
            per_step[kernel.name][kernel.step].append(kernel.dur)
    return {
        name: {
            "launches_per_step": sum(len(v) for v in by_step.values()) / len(chosen),
            "us_per_launch": statistics.median(d for v in by_step.values() for d in v),
            "us_per_step": statistics.median(sum(by_step.get(i, [])) for i in chosen),
        }
        for name, by_step in per_step.items()
    }


def host_step_times(
    trace: Mapping[str, Any],
    batch: int,
    *,
    step_pattern: str = DEFAULT_STEP_PATTERN,
    forward_pattern: str = DEFAULT_FORWARD_PATTERN,
) -> dict[str, float] | None:
    """Where the decode steps at ``batch`` spend host time: medians over those steps of
    ``period_us`` (from this step's start to the next step's), ``forward_cpu_us`` (the
    host's ``gpu_model_runner: forward`` phase), ``graph_launch_us`` (``cudaGraphLaunch``
    calls inside it), ``forward_gpu_us`` (the same phase on the GPU timeline, where the
    profiler annotates it) and ``steps``; ``None`` without such a step. A step whose
    period exceeds its GPU forward time waits on the host."""
    events = [e for e in trace.get("traceEvents", []) if isinstance(e, dict)]
    steps = _intervals(events, re.compile(step_pattern))
    forward_re = re.compile(forward_pattern)
    forwards = _intervals(events, forward_re)
    gpu_forwards = sorted(
        (float(e["ts"]), float(e.get("dur", 0.0)))
        for e in events
        if e.get("ph") == "X"
        and e.get("cat") == "gpu_user_annotation"
        and forward_re.search(str(e.get("name", "")))
    )
    launches = sorted(
        (float(e["ts"]), float(e.get("dur", 0.0)))
        for e in events
        if e.get("ph") == "X"
        and e.get("cat") in _LAUNCH_CATS
        and _GRAPH_LAUNCH.search(str(e.get("name", "")))
    )
    # Sorted by start, searched by bisection: a long trace has thousands of steps.
    forwards = sorted(forwards, key=lambda f: f.start)
    forward_starts = [f.start for f in forwards]
    launch_ts = [ts for ts, _ in launches]
    gpu_ts = [ts for ts, _ in gpu_forwards]
    rows: dict[str, list[float]] = defaultdict(list)
    for index, step in enumerate(steps[:-1]):
        match = _BATCH.search(step.name)
        if not (step.decode and match and int(match.group(1)) == batch):
            continue
        rows["period_us"].append(steps[index + 1].start - step.start)
        first = bisect.bisect_left(forward_starts, step.start)
        if first == len(forwards) or forwards[first].start > step.end:
            continue
        forward = forwards[first]
        rows["forward_cpu_us"].append(forward.end - forward.start)
        lo = bisect.bisect_left(launch_ts, forward.start)
        hi = bisect.bisect_right(launch_ts, forward.end)
        rows["graph_launch_us"].append(sum(d for _, d in launches[lo:hi]))
        # The GPU side of a forward starts after its host side does, before the next one.
        later = bisect.bisect_left(gpu_ts, forward.start)
        if later < len(gpu_forwards):
            rows["forward_gpu_us"].append(gpu_forwards[later][1])
    if not rows:
        return None
    result = {key: statistics.median(values) for key, values in rows.items()}
    result["steps"] = float(len(rows["period_us"]))
    return result


def format_host_steps(rows: Mapping[str, Mapping[str, float] | None], batch: int) -> str:
    """:func:`host_step_times` of several traces (name -> times) as a markdown table."""
    keys = ("steps", "period_us", "forward_gpu_us", "forward_cpu_us", "graph_launch_us")
    body = [
        [name, *("-" if t is None or key not in t else f"{t[key]:.0f}" for key in keys)]
        for name, t in rows.items()
    ]
    headers = [
        "trace",
        f"decode steps at batch {batch}",
        "step period (us, median)",
        "forward on the GPU (us)",
        "forward on the host (us)",
        "cudaGraphLaunch (us)",
    ]
    return tables.markdown_table(headers, body)


def compare_kernels(
    before: Mapping[str, Mapping[str, float]],
    after: Mapping[str, Mapping[str, float]],
    *,
    min_delta_us: float = 5.0,
) -> list[tuple[str, Mapping[str, float] | None, Mapping[str, float] | None, float]]:
    """Kernels whose time per step moved by at least ``min_delta_us`` between two
    :func:`kernel_times` of the same batch: ``(name, before or None, after or None,
    after - before us per step)``, largest move first."""
    rows = []
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name), after.get(name)
        delta = (b["us_per_step"] if b else 0.0) - (a["us_per_step"] if a else 0.0)
        if abs(delta) >= min_delta_us:
            rows.append((name, a, b, delta))
    return sorted(rows, key=lambda row: -abs(row[3]))


def format_kernel_comparison(rows, name_width: int = 90) -> str:
    """:func:`compare_kernels`'s rows as a markdown table."""

    def cell(stats, key, digits):
        return "-" if stats is None else f"{stats[key]:.{digits}f}"

    return tables.markdown_table(
        [
            "kernel",
            "launches / step",
            "us / launch, before",
            "us / launch, after",
            "us / step, before",
            "us / step, after",
            "change, us / step",
        ],
        [
            (
                name[:name_width],
                cell(b if b is not None else a, "launches_per_step", 1),
                cell(a, "us_per_launch", 2),
                cell(b, "us_per_launch", 2),
                cell(a, "us_per_step", 1),
                cell(b, "us_per_step", 1),
                f"{delta:+.1f}",
            )
            for name, a, b, delta in rows
        ],
        ["left"] + ["right"] * 6,
    )


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
    parser.add_argument(
        "--gate",
        action="store_true",
        help="instead: the gate GEMM kernel(s) per decode batch size and GateLinear's tier "
        "(issue #34); exit 1 if no batch shows a gate GEMM",
    )
    parser.add_argument(
        "--compare-kernels",
        type=int,
        default=None,
        metavar="BATCH",
        help="instead: with two traces (before, after), the kernels whose time per decode "
        "step at BATCH moved by at least --min-delta-us",
    )
    parser.add_argument("--min-delta-us", type=float, default=5.0)
    parser.add_argument(
        "--host-steps",
        type=int,
        default=None,
        metavar="BATCH",
        help="instead: per trace, the decode steps at BATCH on the host side: step "
        "period, forward on GPU and host, cudaGraphLaunch time (medians)",
    )
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
    if args.host_steps is not None:
        times = {
            path.name: host_step_times(
                load_trace(path),
                args.host_steps,
                step_pattern=args.step_pattern,
                forward_pattern=args.forward_pattern,
            )
            for path in paths
        }
        print(format_host_steps(times, args.host_steps))
        if args.json:
            Path(args.json).write_text(json.dumps(times, indent=2) + "\n")
        return 0 if any(times.values()) else 1
    if args.compare_kernels is not None:
        if len(paths) != 2:
            print("--compare-kernels takes two traces: before, after", file=sys.stderr)
            return 2
        before, after = (
            kernel_times(
                load_trace(path),
                args.compare_kernels,
                step_pattern=args.step_pattern,
                forward_pattern=args.forward_pattern,
            )
            for path in paths
        )
        if not before or not after:
            print(f"no decode step at batch {args.compare_kernels} in both", file=sys.stderr)
            return 1
        rows = compare_kernels(before, after, min_delta_us=args.min_delta_us)
        print(f"before: {paths[0].name}\nafter: {paths[1].name}\n")
        print(format_kernel_comparison(rows))
        if args.json:
            Path(args.json).write_text(
                json.dumps({"before": before, "after": after}, indent=2) + "\n"
            )
        return 0
    results = {}
    status = 0
    for path in paths:
        if args.gate:
            report = gate_report(
                load_trace(path),
                patterns=patterns,
                step_pattern=args.step_pattern,
                forward_pattern=args.forward_pattern,
            )
            results[str(path)] = report
            print(format_gate_report(report, title=path.name))
            if not any(row["gate_kernels"] for row in report["batches"].values()):
                status = 1
            continue
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
