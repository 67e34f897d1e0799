"""Time two source trees of the package side by side on one GPU (a restructuring's proof).

Each tree's ``vllm_gemma4_router`` is imported in its own worker process (first on
``sys.path``), and the workers alternate, tree after tree, ``--repeats`` times, so drift
on the machine lands on both. Timed: the routing op (``gemma4_routing_triton``, fp32 and
bf16 logits, E=128, K=8, T from 1 to 262144) and the fused router
(``torch.ops.vllm_gemma4_router.fused_router``, gemma-4-26B-A4B's router: H=2816, bf16),
each L2-hot in a CUDA graph of 32 back-to-back calls (``timing.bench_hot``), median of
15 replays. "Within noise" means within the spread of the repeats of one tree.

    python -m benchmarks.kernel.compare_trees --tree before=.cache/before_tree \
        --tree after=. --repeats 3 --out $OUT/compare_trees
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROUTING_TOKENS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144)
FUSED_TOKENS = (1, 4, 16, 64, 256, 1024)
NUM_EXPERTS, TOPK, HIDDEN = 128, 8, 2816
# The fused op's module moved in the restructuring; the op name did not.
FUSED_MODULES = (
    "vllm_gemma4_router.fused_router.torch_library",
    "vllm_gemma4_router.fused_router_op",
)


def _worker(root: str) -> list[dict]:
    # ``python -m`` puts the working directory first; the tree under test goes before it.
    sys.path.insert(0, str(Path(root).resolve()))
    import torch

    from benchmarks.common.timing import bench_hot

    package = importlib.import_module("vllm_gemma4_router")
    if not Path(package.__file__).resolve().is_relative_to(Path(root).resolve()):
        raise SystemExit(f"imported {package.__file__}, not the tree at {root}")
    for name in FUSED_MODULES:
        try:
            importlib.import_module(name)
            break
        except ModuleNotFoundError:
            continue
    route = package.gemma4_routing_triton
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    scale = torch.rand(NUM_EXPERTS, device="cuda", generator=gen) + 0.5
    for dtype in (torch.float32, torch.bfloat16):
        for tokens in ROUTING_TOKENS:
            logits = torch.randn(tokens, NUM_EXPERTS, device="cuda", generator=gen).to(dtype)
            us = bench_hot(lambda logits=logits: route(logits, TOPK, scale))
            rows.append({"op": "routing", "dtype": str(dtype)[6:], "tokens": tokens, "us": us})
    weight = (torch.randn(NUM_EXPERTS, HIDDEN, device="cuda", generator=gen) * 0.02).bfloat16()
    norm_scale = (torch.rand(HIDDEN, device="cuda", generator=gen) + 0.5).bfloat16()
    fused = torch.ops.vllm_gemma4_router.fused_router
    for tokens in FUSED_TOKENS:
        hidden = torch.randn(tokens, HIDDEN, device="cuda", generator=gen).bfloat16()
        us = bench_hot(lambda h=hidden: fused(h, norm_scale, weight, scale, 1e-6, TOPK))
        rows.append({"op": "fused_router", "dtype": "bfloat16", "tokens": tokens, "us": us})
    return rows


def _run_worker(root: str) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(root).resolve()), os.getcwd()]))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.kernel.compare_trees", "--worker", root],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"worker for {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH (repeatable)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compare_trees"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker)))
        return
    trees = dict(t.split("=", 1) for t in args.tree)
    if len(trees) < 2:
        parser.error("give at least two --tree NAME=PATH")
    from tabulate import tabulate

    from benchmarks.common.stamp import environment_stamp, flat_stamp

    samples: dict[tuple, dict[str, list[float]]] = {}
    for _ in range(args.repeats):
        for name, root in trees.items():
            for row in _run_worker(root):
                key = (row["op"], row["dtype"], row["tokens"])
                samples.setdefault(key, {}).setdefault(name, []).append(row["us"])
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = flat_stamp(environment_stamp())
    names = list(trees)
    base = names[0]
    table = []
    for (op, dtype, tokens), by_tree in samples.items():
        row = {"op": op, "dtype": dtype, "tokens": tokens}
        for name in names:
            runs = by_tree[name]
            row[f"{name}_us"] = round(statistics.median(runs), 3)
            row[f"{name}_spread_us"] = round(max(runs) - min(runs), 3)
        for name in names[1:]:
            row[f"{name}_vs_{base}"] = round(row[f"{name}_us"] / row[f"{base}_us"], 3)
        table.append(row)
    with open(args.out / "compare_trees.csv", "w", newline="") as f:
        f.write("# " + ", ".join(f"{k}={v}" for k, v in stamp.items()) + "\n")
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    text = tabulate(table, headers="keys", tablefmt="github")
    (args.out / "compare_trees.md").write_text(
        "# Two trees side by side\n\n"
        + ", ".join(f"{k}={v}" for k, v in stamp.items())
        + f"\n\nTrees: {trees}; {args.repeats} interleaved repeats; medians and spreads"
        " (max - min) in us per call, L2-hot, CUDA graph of 32 calls.\n\n" + text + "\n"
    )
    print(text)


if __name__ == "__main__":
    main()
