"""Shared pieces of the GPU benchmarks: environment stamp, inputs, timing."""

from __future__ import annotations

import datetime
import math
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import torch

TOKEN_COUNTS_POW2 = [2**t for t in range(19)]  # 1 .. 262144
TOKEN_COUNTS_ODD = [2**t - 1 for t in range(2, 19)]  # 3 .. 262143


def environment_stamp() -> dict[str, str]:
    """GPU, driver, versions and date, for every result file."""
    import triton

    stamp = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        stamp["gpu"] = props.name
        stamp["sms"] = str(props.multi_processor_count)
        stamp["cuda"] = str(torch.version.cuda or torch.version.hip)
        try:
            stamp["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            stamp["driver"] = "unknown"
    return stamp


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


def copy_bandwidth_gbs(num_bytes: int = 2**30) -> float:
    """Device-to-device copy bandwidth, bytes read + written, GB/s."""
    src = torch.randn(num_bytes // 4, device="cuda")
    dst = torch.empty_like(src)
    us = bench_graph(lambda: dst.copy_(src), rep_ms=100)
    return 2 * num_bytes / us / 1e3


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
