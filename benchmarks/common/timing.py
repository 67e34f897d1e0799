"""Shared pieces of the GPU benchmarks: environment stamp, inputs, timing, geomean."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable

import torch

from benchmarks.common import stamp

TOKEN_COUNTS_POW2 = [2**t for t in range(19)]  # 1 .. 262144
TOKEN_COUNTS_ODD = [2**t - 1 for t in range(2, 19)]  # 3 .. 262143


def environment_stamp() -> dict[str, str]:
    """GPU, driver, versions and date, for every result file (``benchmarks.common.stamp``)."""
    return stamp.flat_stamp(stamp.environment_stamp())


def l2_bytes() -> int:
    props = torch.cuda.get_device_properties(0)
    return int(getattr(props, "L2_cache_size", 50 * 2**20))


def rotating(
    make: Callable[[], tuple], bytes_per_set: int, max_sets: int = 64
) -> Callable[[], tuple]:
    """Return a getter cycling through enough fresh input sets that together
    they are 3x the L2, so no timed call finds its input in the cache."""
    count = max(1, min(max_sets, math.ceil(3 * l2_bytes() / max(1, bytes_per_set))))
    sets = [make() for _ in range(count)]
    state = {"i": 0}

    def next_set() -> tuple:
        state["i"] = (state["i"] + 1) % count
        return sets[state["i"]]

    return next_set


def bench_graph(fn: Callable[[], object], rep_ms: int = 40) -> float:
    """Median microseconds per call, CUDA-graph replay (launch gaps removed)."""
    import triton.testing

    return 1000.0 * triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")


def bench_eager(fn: Callable[[], object], rep_ms: int = 40) -> float:
    """Median microseconds per call, plain launches (host cost included for tiny T)."""
    import triton.testing

    return 1000.0 * triton.testing.do_bench(fn, warmup=10, rep=rep_ms, return_mode="median")


def host_us_per_call(fn: Callable[[], object], calls: int = 1000, batches: int = 7) -> float:
    """Eager host time per call: wall time of back-to-back calls once the GPU
    queue is warm, the median over ``batches`` runs of ``calls`` (the H100
    machine's CPU is noisy). The same procedure for every method."""
    for _ in range(100):
        fn()
    torch.cuda.synchronize()
    per_batch = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        per_batch.append((time.perf_counter() - start) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(per_batch)


def geomean(values: Iterable[float | None]) -> float:
    """Geometric mean of the positive values (``statistics.geometric_mean``); NaN, zero,
    negative and missing values are left out; ``nan`` when none is left."""
    kept = [v for v in values if v is not None and v > 0]
    return statistics.geometric_mean(kept) if kept else math.nan


def copy_bandwidth_gbs(num_bytes: int = 2**28, repeats: int = 20) -> float:
    """The copy floor: one large device-to-device copy timed with CUDA events,
    bytes read + written per second in GB/s (the best of ``repeats`` copies)."""
    src = torch.randn(num_bytes // 4, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3)
    return 2 * num_bytes / best / 1e3


def bench_hot(fn: Callable[[], object], calls: int = 32, replays: int = 15) -> float:
    """Median microseconds per call with the input L2-hot, as in serving right after
    the router GEMM: one CUDA graph of ``calls`` back-to-back calls on the same
    input, timed with CUDA events over ``replays`` replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return _median_replay_us(graph, calls, replays)


def _median_replay_us(graph, calls: int, replays: int) -> float:
    """One untimed replay, then the median over ``replays`` replays of each one's
    CUDA-event time divided by the ``calls`` it holds."""
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def rotation_sets(bytes_per_set: int, l2: int, minimum: int = 30, factor: int = 3) -> int:
    """Input sets to rotate so that together they are ``factor`` x the L2 (``l2`` bytes),
    at least ``minimum`` (for ``bench_rotated``)."""
    if bytes_per_set < 1:
        raise ValueError(f"bytes_per_set must be >= 1, got {bytes_per_set}")
    return max(minimum, math.ceil(factor * l2 / bytes_per_set))


def rotation_calls(num_sets: int, min_calls: int = 32) -> int:
    """Calls in one ``bench_rotated`` graph: whole passes over the sets, at least ``min_calls``."""
    if num_sets < 1:
        raise ValueError(f"num_sets must be >= 1, got {num_sets}")
    return num_sets * max(1, math.ceil(min_calls / num_sets))


def bench_rotated(
    fn: Callable[[int], object], num_sets: int, replays: int = 15, min_calls: int = 32
) -> float:
    """Median microseconds per call when call ``c`` reads input set ``c % num_sets``:
    one CUDA graph of ``fn(0), fn(1), ..., fn(num_sets - 1)`` (whole passes, at least
    ``min_calls`` calls, ``rotation_calls``), timed with CUDA events over ``replays``
    replays, as ``bench_hot``. Sets that together are 3x the L2 come from HBM at
    every call (each was last read a whole pass ago); what ``fn`` reads besides the
    set (the same tensor at every call) stays L2-hot as in ``bench_hot``."""
    calls = rotation_calls(num_sets, min_calls)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(num_sets):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for c in range(calls):
            fn(c % num_sets)
    return _median_replay_us(graph, calls, replays)


def producer_of(hidden_states: torch.Tensor) -> tuple[Callable[[], object], Callable]:
    """``(produce, preceded)``: ``produce()`` launches a kernel writing ``hidden_states``
    (a copy of an L2-hot twin holding its current values), standing in for the
    residual add and norm ahead of vLLM's router; ``preceded(fn)`` is ``fn(layer)``
    with that kernel ahead of every call (``--producer`` of the fused-router benchmarks)."""
    source = hidden_states.clone()

    def produce():
        return hidden_states.copy_(source)

    def preceded(fn):
        return lambda i: (produce(), fn(i))

    return produce, preceded


#: fp32 logit families (``make_logits``): what vLLM's router hands the op.
FP32_FAMILIES = ("randn", "gemm_fp32", "gemm_bf16")
ROUTER_HIDDEN = 2816  # gemma-4-26B-A4B hidden size


def make_logits(
    family: str, num_tokens: int, num_experts: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Fresh random logits ``[T, E]`` on the GPU.

    ``randn``: standard normal; ``gemm_fp32``: RMS-normed bf16 hidden states
    [T, 2816] times bf16 router weights [E, 2816] * 0.02 with fp32 output (vLLM's
    GateLinear on Hopper/Blackwell); ``gemm_bf16``: the same GEMM in bf16 cast to
    fp32 (GateLinear's F.linear fallback: many exact ties). Cast to ``dtype``."""
    if family == "randn":
        return torch.randn(num_tokens, num_experts, device="cuda").to(dtype)
    hidden = torch.randn(num_tokens, ROUTER_HIDDEN, device="cuda")
    hidden = (hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
    weight = (torch.randn(num_experts, ROUTER_HIDDEN, device="cuda") * 0.02).bfloat16()
    if family == "gemm_fp32":
        logits = torch.mm(hidden, weight.t(), out_dtype=torch.float32)  # torch >= 2.9
    elif family == "gemm_bf16":
        logits = torch.nn.functional.linear(hidden, weight).float()
    else:
        raise ValueError(f"family must be one of {('randn',) + FP32_FAMILIES[1:]}, got {family!r}")
    return logits.to(dtype)


def routing_bytes(num_tokens: int, num_experts: int, topk: int, elt: int) -> int:
    """Fewest bytes routing must move: logits in, weights + ids out."""
    return num_tokens * num_experts * elt + num_tokens * topk * 8


def write_stamped_csv(path, stamp: dict[str, str], rows: list[dict]) -> None:
    """CSV whose first line is a '#' comment with the environment stamp."""
    import csv

    with open(path, "w", newline="") as f:
        f.write("# " + ", ".join(f"{k}={v}" for k, v in stamp.items()) + "\n")
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
