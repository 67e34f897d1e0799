"""Time the fused router's split launch stage by stage (``benchmarks.kernel.fused_stages``).

Run on a GPU as ``python -m benchmarks.kernel.bench_fused_stages``. For gemma-4-26B-A4B's
router (H=2816, E=128, K=8, bf16) at each decode T, the launch table's split row
is run up to each stage (``dot``, ``handoff``, ``gather``, ``route``), then the
runtime kernel itself (``kernel``, which ``route`` should match) and an empty
launch, each timed as ``bench_router`` times the fused op: ``common.bench_rotated``
over L layers' weight sets (3x the L2 by default: gate weights from HBM), with
``--producer`` a kernel writing the hidden states ahead of every call, its time
subtracted. The differences between consecutive stages are what each stage adds
to the critical path. Writes benchmarks/results/bench_fused_stages_<device>_<date>
[_<tag>].{csv,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common.gpu import device_name, device_slug
from benchmarks.common.tables import markdown_table
from benchmarks.common.timing import bench_rotated, environment_stamp, l2_bytes, write_stamped_csv
from benchmarks.kernel.bench_router import (
    _empty_launcher,
    add_router_shape_args,
    layer_bytes,
    make_layer_sets,
    resolve_layers,
    weights_location,
    with_producer,
)
from benchmarks.kernel.fused_stages import STAGES, launch_stage

COLUMNS = ("empty", *STAGES, "kernel")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_router_shape_args(parser)
    parser.set_defaults(tokens="1,16,64,256")
    parser.add_argument("--layers", default="auto", help="'auto' (3x the L2) or a number")
    parser.add_argument("--min-layers", type=int, default=30)
    parser.add_argument("--replays", type=int, default=15)
    parser.add_argument("--producer", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    args.tokens = [int(t) for t in args.tokens.split(",") if t]
    if args.layers != "auto" and not (args.layers.isdigit() and int(args.layers) >= 1):
        parser.error(f"--layers takes 'auto' or a positive number, got {args.layers!r}")
    return args


def stage_fns(config, h, weights, scales, expert_scales, eps, topk, out, empty) -> dict:
    """``{column: fn(layer)}``: the empty launch, each stage, the runtime kernel."""
    from vllm_gemma4_router.fused_router.launcher import launch_with_config

    def stage(name):
        return lambda i: launch_stage(
            name, config, h, scales[i], weights[i], expert_scales[i], eps, topk, out
        )

    fns = {"empty": lambda i: empty()}
    fns.update({name: stage(name) for name in STAGES})
    fns["kernel"] = lambda i: launch_with_config(
        config, h, scales[i], weights[i], expert_scales[i], eps, topk, out
    )
    return fns


def row_for(num_tokens: int, config, us: dict, layers: int, where: str, base: float) -> dict:
    """One CSV row: every column's time, the stage differences (``d_<stage>``)."""
    row = dict(T=num_tokens, layers=layers, weights_from=where, config=str(tuple(config)))
    row.update({f"{name}_us": round(us[name], 3) for name in COLUMNS})
    previous = "empty"
    for name in STAGES:
        row[f"d_{name}_us"] = round(us[name] - us[previous], 3)
        previous = name
    row["producer_us"] = round(base, 3)
    return row


def table_lines(rows: list[dict]) -> list[str]:
    """The markdown table's lines: header, rule, one line per row."""
    head = ["T", "config", *COLUMNS, *(f"+{name}" for name in STAGES)]
    cells = [
        [r["T"], r["config"]]
        + [f"{r[f'{name}_us']:.2f}" for name in COLUMNS]
        + [f"{r[f'd_{name}_us']:+.2f}" for name in STAGES]
        for r in rows
    ]
    return markdown_table(head, cells, ["right", "left"] + ["right"] * (len(head) - 2)).splitlines()


def main(argv: list[str] | None = None) -> None:
    from vllm_gemma4_router.fused_router.launch_table import (
        GEMM_PATH_TOKENS,
        fused_launch_config,
        is_split,
    )

    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_fused_stages times CUDA graphs: it needs an NVIDIA GPU")
    device = torch.device("cuda")
    dtype = getattr(torch, args.dtype)
    l2 = l2_bytes()
    bytes_per_layer = layer_bytes(args.hidden, args.experts, dtype.itemsize)
    (layers,) = resolve_layers([args.layers], bytes_per_layer, l2, args.min_layers)
    where = weights_location(layers, bytes_per_layer, l2)
    weights, scales, expert_scales = make_layer_sets(
        layers, args.hidden, args.experts, dtype, device
    )
    stamp = environment_stamp()
    stamp.update(
        shape=f"H={args.hidden} E={args.experts} K={args.topk} {args.dtype} eps={args.eps:g}",
        layers=f"{layers} ({where})",
        producer="hidden-states copy before every call, subtracted" if args.producer else "none",
    )
    print(stamp, flush=True)
    empty = _empty_launcher()
    rows = []
    for num_tokens in args.tokens:
        config = fused_launch_config(num_tokens, args.hidden, args.experts)
        if num_tokens in GEMM_PATH_TOKENS or not is_split(config, args.hidden, args.experts):
            print(f"T={num_tokens}: the op launches no split row there, skipped")
            continue
        h = torch.randn(num_tokens, args.hidden, device=device).to(dtype)
        out = (
            torch.empty(num_tokens, args.experts, device=device),
            torch.empty(num_tokens, args.topk, device=device),
            torch.empty(num_tokens, args.topk, dtype=torch.int32, device=device),
        )
        fns = stage_fns(config, h, weights, scales, expert_scales, args.eps, args.topk, out, empty)
        if args.producer:
            fns = with_producer(fns, h)
        us = {name: bench_rotated(fn, layers, replays=args.replays) for name, fn in fns.items()}
        base = us.pop("producer", 0.0)
        rows.append(row_for(num_tokens, config, {k: v - base for k, v in us.items()}, layers,
                            where, base))  # fmt: skip
        print("\n".join(table_lines(rows[-1:])[2:]), flush=True)
    if not rows:
        return
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"bench_fused_stages_{device_slug(stamp)}_{stamp.get('date', '')[:10]}"
    base_path = out_dir / (name.replace(" ", "_") + (f"_{args.tag}" if args.tag else ""))
    write_stamped_csv(f"{base_path}.csv", stamp, rows)
    text = [
        f"# Fused router split launch, stage by stage ({device_name(stamp)})",
        "",
        ", ".join(f"{k}={v}" for k, v in stamp.items()),
        "",
        "Median us per call (common.bench_rotated); `+stage` = that stage's time minus "
        "the one before it (`+dot` is over the empty launch).",
        "",
        *table_lines(rows),
    ]
    Path(f"{base_path}.md").write_text("\n".join(text) + "\n")
    print(f"wrote {base_path}.csv/.md")
    print("\n".join(table_lines(rows)))


if __name__ == "__main__":
    main()
