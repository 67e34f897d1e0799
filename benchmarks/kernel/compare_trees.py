"""Time source trees of the package side by side on one GPU (a restructuring's or a
launch table's before/after), with peers' kernels and the copy floor beside them.

Each tree's ``vllm_gemma4_router`` is imported in its own worker process (first on
``sys.path``), and the workers alternate, tree after tree, ``--repeats`` times, so drift
on the machine lands on both. Timed: the routing op (``gemma4_routing_triton``, fp32 and
bf16 logits, E=128, K=8, ``--tokens``) and the fused router
(``torch.ops.vllm_gemma4_router.fused_router``, gemma-4-26B-A4B's router: H=2816, bf16),
each L2-hot in a CUDA graph of 32 back-to-back calls (``timing.bench_hot``), median of
15 replays. ``--masks real`` passes vLLM 0.34's padding mask with every row real (the
kernel reads it; no row skips work). ``--peer NAME=FILE`` times vLLM's kernel, taken out
of that release's ``gemma4.py`` (``peer_kernels.load_vllm_router``), in workers of its
own, with the same masks. Every worker also times the copy floor
(``timing.copy_bandwidth_gbs``); a routing row's floor is its fewest bytes (logits
read, ids and weights written, the mask read) over the median copy bandwidth. "Within
noise" means within the spread of the repeats of one tree.

    python -m benchmarks.kernel.compare_trees --tree before=.cache/before_tree \\
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
MASKS = ("none", "real")
# The fused op's module moved in the restructuring; the op name did not.
FUSED_MODULES = (
    "vllm_gemma4_router.fused_router.torch_library",
    "vllm_gemma4_router.fused_router_op",
)


def _tree_router(root: str):
    """The tree's routing op as ``route(logits, topk, scale, is_padding)``."""
    # ``python -m`` puts the working directory first; the tree under test goes before it.
    sys.path.insert(0, str(Path(root).resolve()))
    package = importlib.import_module("vllm_gemma4_router")
    if not Path(package.__file__).resolve().is_relative_to(Path(root).resolve()):
        raise SystemExit(f"imported {package.__file__}, not the tree at {root}")
    return _with_mask(package.gemma4_routing_triton)


def _peer_router(source: str):
    """vLLM's kernel from ``source`` (a release's gemma4.py) as ``route(..., is_padding)``."""
    from benchmarks.common.peer_kernels import load_vllm_router

    return _with_mask(load_vllm_router(Path(source))[1])


def _with_mask(route):
    """``route(logits, topk, scale, is_padding)``: the keyword only when there is a mask,
    so a release without it is timed as it is called."""

    def call(logits, topk, scale, is_padding):
        if is_padding is None:
            return route(logits, topk, scale)
        return route(logits, topk, scale, is_padding=is_padding)

    return call


def _worker(spec: dict) -> list[dict]:
    import torch

    from benchmarks.common.timing import bench_hot, copy_bandwidth_gbs

    route = (_tree_router if spec["kind"] == "tree" else _peer_router)(spec["path"])
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows: list[dict] = [{"op": "copy", "gbs": copy_bandwidth_gbs()}]
    scale = torch.rand(NUM_EXPERTS, device="cuda", generator=gen) + 0.5
    routing_dtypes = (torch.float32, torch.bfloat16) if "routing" in spec["ops"] else ()
    for dtype in routing_dtypes:
        for tokens in spec["tokens"]:
            logits = torch.randn(tokens, NUM_EXPERTS, device="cuda", generator=gen).to(dtype)
            for mask in spec["masks"]:
                is_padding = (
                    torch.zeros(tokens, dtype=torch.bool, device="cuda") if mask == "real" else None
                )
                us = bench_hot(lambda logits=logits, p=is_padding: route(logits, TOPK, scale, p))
                key = {"dtype": str(dtype)[6:], "mask": mask, "tokens": tokens}
                rows.append({"op": "routing", **key, "us": us})
                rows.append({"op": "sized_copy", **key, "us": _sized_copy_us(**key)})
    if spec["kind"] == "tree" and "fused_router" in spec["ops"]:
        rows += _fused_rows(gen)
    return rows


def _sized_copy_us(dtype: str, mask: str, tokens: int) -> float:
    """A device-to-device copy moving the op's bytes, in the routing rows' harness: at
    small and middle T a launch and its ramp, not the bandwidth, bound any kernel, and
    a copy of the same bytes shows how much of the floor a kernel can reach there."""
    import torch

    from benchmarks.common.timing import bench_hot

    half = max(1, op_bytes(tokens, dtype, mask) // 2)
    src = torch.randint(0, 255, (half,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return bench_hot(lambda: dst.copy_(src))


def _fused_rows(gen) -> list[dict]:
    import torch

    from benchmarks.common.timing import bench_hot

    for name in FUSED_MODULES:
        try:
            importlib.import_module(name)
            break
        except ModuleNotFoundError:
            continue
    scale = torch.rand(NUM_EXPERTS, device="cuda", generator=gen) + 0.5
    weight = (torch.randn(NUM_EXPERTS, HIDDEN, device="cuda", generator=gen) * 0.02).bfloat16()
    norm_scale = (torch.rand(HIDDEN, device="cuda", generator=gen) + 0.5).bfloat16()
    fused = torch.ops.vllm_gemma4_router.fused_router
    rows = []
    for tokens in FUSED_TOKENS:
        hidden = torch.randn(tokens, HIDDEN, device="cuda", generator=gen).bfloat16()
        us = bench_hot(lambda h=hidden: fused(h, norm_scale, weight, scale, 1e-6, TOPK))
        rows.append(
            {"op": "fused_router", "dtype": "bfloat16", "mask": "none", "tokens": tokens, "us": us}
        )
    return rows


def _run_worker(spec: dict) -> list[dict]:
    path_entries = [os.getcwd()]
    if spec["kind"] == "tree":
        path_entries.insert(0, str(Path(spec["path"]).resolve()))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path_entries))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.kernel.compare_trees", "--worker", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"worker for {spec['path']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def op_bytes(tokens: int, dtype: str, mask: str) -> int:
    """The routing op's fewest bytes (``timing.routing_bytes``) and the one-byte mask
    read when there is one."""
    from benchmarks.common.timing import routing_bytes

    elt = 4 if dtype == "float32" else 2
    return routing_bytes(tokens, NUM_EXPERTS, TOPK, elt) + (tokens if mask == "real" else 0)


def floor_us(tokens: int, dtype: str, mask: str, copy_gbs: float) -> float:
    """The op's fewest bytes (``op_bytes``) over the copy bandwidth, in us."""
    return op_bytes(tokens, dtype, mask) / (copy_gbs * 1e3)


def summarise(
    samples: dict[tuple, dict[str, list[float]]], names: list[str], copy_gbs: float
) -> list[dict]:
    """One row per (op, dtype, mask, tokens): each source's median and spread (max - min)
    over the repeats, each later source's ratio to the first, and for routing rows the
    floor, each source's share of it and, when the workers timed them, the median of
    every source's ``sized_copy`` samples (a copy moving the op's bytes)."""
    base = names[0]
    table = []
    for (op, dtype, mask, tokens), by_source in samples.items():
        if op == "sized_copy":
            continue
        row: dict = {"op": op, "dtype": dtype, "mask": mask, "tokens": tokens}
        floor = floor_us(tokens, dtype, mask, copy_gbs) if op == "routing" else None
        if floor is not None:
            row["floor_us"] = round(floor, 3)
        sized = samples.get(("sized_copy", dtype, mask, tokens), {}).values()
        if copies := [us for runs in sized for us in runs]:
            row["sized_copy_us"] = round(statistics.median(copies), 3)
        for name in names:
            runs = by_source.get(name)
            if not runs:
                continue
            row[f"{name}_us"] = round(statistics.median(runs), 3)
            row[f"{name}_spread_us"] = round(max(runs) - min(runs), 3)
            if floor is not None:
                row[f"{name}_of_floor"] = round(floor / statistics.median(runs), 3)
        for name in names[1:]:
            if f"{name}_us" in row and f"{base}_us" in row:
                row[f"{name}_vs_{base}"] = round(row[f"{name}_us"] / row[f"{base}_us"], 3)
        table.append(row)
    return table


def plot(table: list[dict], names: list[str], path: Path, title: str) -> None:
    """One panel per (dtype, mask) of the routing rows: each source's time and the floor
    against T, log-log."""
    from benchmarks.common.plots import pyplot

    plt = pyplot()
    rows = [r for r in table if r["op"] == "routing"]
    panels = sorted({(r["dtype"], r["mask"]) for r in rows})
    if plt is None or not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (dtype, mask) in zip(axes[0], panels, strict=True):
        panel = sorted(
            (r for r in rows if (r["dtype"], r["mask"]) == (dtype, mask)),
            key=lambda r: int(r["tokens"]),
        )
        tokens = [int(r["tokens"]) for r in panel]
        for name in names:
            if f"{name}_us" in panel[0]:
                ax.plot(tokens, [float(r[f"{name}_us"]) for r in panel], marker="o", label=name)
        # The CSV keeps 3 decimals: a floor it rounds to 0 has no place on a log axis.
        floor = [(t, float(r["floor_us"])) for t, r in zip(tokens, panel, strict=True)]
        floor = [(t, us) for t, us in floor if us > 0]
        ax.plot(*zip(*floor, strict=True), "k--", label="floor")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="tokens",
            ylabel="us per call",
            title=f"{dtype}, mask {mask}",
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_table_csv(path: Path, stamp: dict[str, str], table: list[dict]) -> None:
    """The summary as a stamped CSV (``timing.write_stamped_csv``); routing and fused-router
    rows carry different columns, so every row gets every column."""
    from benchmarks.common.timing import write_stamped_csv

    columns = dict.fromkeys((k for row in table for k in row), "")
    write_stamped_csv(path, stamp, [{**columns, **row} for row in table])


def replot(directory: Path) -> None:
    """Draw ``compare_trees.png`` from the ``compare_trees.csv`` of ``directory``."""
    lines = (directory / "compare_trees.csv").read_text().splitlines()
    table = list(csv.DictReader(lines[1:]))
    names = [k.removesuffix("_spread_us") for k in table[0] if k.endswith("_spread_us")]
    plot(table, names, directory / "compare_trees.png", lines[0].lstrip("# ")[:160])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH (repeatable)")
    parser.add_argument(
        "--peer", action="append", default=[], help="NAME=FILE: vLLM's kernel from a gemma4.py"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--tokens", default=",".join(map(str, ROUTING_TOKENS)), help="routing token counts"
    )
    parser.add_argument("--masks", default="none", help=f"routing masks, of {MASKS}")
    parser.add_argument("--ops", default="routing,fused_router", help="routing, fused_router")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compare_trees"))
    parser.add_argument("--replot", type=Path, help="redraw DIR/compare_trees.png from its CSV")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    if args.replot:
        replot(args.replot)
        return
    trees = dict(t.split("=", 1) for t in args.tree)
    peers = dict(p.split("=", 1) for p in args.peer)
    if len(trees) < 2:
        parser.error("give at least two --tree NAME=PATH")
    masks = args.masks.split(",")
    if not set(masks) <= set(MASKS):
        parser.error(f"--masks takes {MASKS}, got {args.masks!r}")
    common = {
        "tokens": [int(t) for t in args.tokens.split(",")],
        "masks": masks,
        "ops": args.ops.split(","),
    }
    sources = {name: {"kind": "tree", "path": path, **common} for name, path in trees.items()}
    sources |= {name: {"kind": "peer", "path": path, **common} for name, path in peers.items()}
    if set(trees) & set(peers):
        parser.error("tree and peer names must differ")
    from tabulate import tabulate

    from benchmarks.common.stamp import environment_stamp, flat_stamp

    samples: dict[tuple, dict[str, list[float]]] = {}
    copies: list[float] = []
    for _ in range(args.repeats):
        for name, spec in sources.items():
            for row in _run_worker(spec):
                if row["op"] == "copy":
                    copies.append(row["gbs"])
                    continue
                key = (row["op"], row["dtype"], row["mask"], row["tokens"])
                samples.setdefault(key, {}).setdefault(name, []).append(row["us"])
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = flat_stamp(environment_stamp())
    copy_gbs = statistics.median(copies)
    table = summarise(samples, list(sources), copy_gbs)
    write_table_csv(args.out / "compare_trees.csv", {**stamp, "copy_gbs": f"{copy_gbs:.0f}"}, table)
    text = tabulate(table, headers="keys", tablefmt="github")
    (args.out / "compare_trees.md").write_text(
        "# Trees side by side\n\n"
        + ", ".join(f"{k}={v}" for k, v in stamp.items())
        + f"\n\nTrees: {trees}; peers: {peers}; {args.repeats} interleaved repeats; medians"
        " and spreads (max - min) in us per call, L2-hot, CUDA graph of 32 calls. Floor:"
        " the op's bytes (logits read, ids and weights written, the mask read) over the"
        f" median copy bandwidth of the workers' 256 MiB device-to-device copies"
        f" ({copy_gbs:.0f} GB/s); `_of_floor` = floor / time. `sized_copy_us`: a"
        " device-to-device copy moving the same bytes in the same harness.\n\n" + text + "\n"
    )
    replot(args.out)
    print(f"copy bandwidth {copy_gbs:.0f} GB/s")
    print(text)


if __name__ == "__main__":
    main()
