"""Kernel micro-benchmark: this kernel vs vLLM's and SGLang's in-tree kernels,
the torch reference (eager and torch.compile) and the copy-speed floor.

Run on a GPU. Every method's output is checked against the reference (tie-aware)
before it is timed; inputs are fresh random logits rotated through 3x the L2.
Writes CSV, markdown and PNG plots to benchmarks/results/, stamped with GPU,
driver, versions and date.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    TOKEN_COUNTS_ODD,
    TOKEN_COUNTS_POW2,
    bench_eager,
    bench_graph,
    copy_bandwidth_gbs,
    environment_stamp,
    host_us_per_call,
    rotating,
    routing_bytes,
    write_stamped_csv,
)
from peer_kernels import load_sglang_router, load_vllm_router  # noqa: E402

from vllm_gemma4_router import gemma4_routing_reference, gemma4_routing_triton  # noqa: E402

COMPILE_MODES = {
    "compile_default": dict(mode="default"),
    "compile_reduce_overhead": dict(mode="reduce-overhead"),
    "compile_max_autotune": dict(mode="max-autotune-no-cudagraphs"),
}


def progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = int(width * done / max(1, total))
    print(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:60s}", end="", flush=True
    )


def same_routing(logits, topk, scale, weights, ids) -> bool:
    """Tie-aware: the chosen logits and unscaled weights, each sorted, match the reference's."""
    ref_w, ref_ids = gemma4_routing_reference(logits, topk, scale)
    ids = ids.long()
    x = logits.float()
    got_vals = x.gather(1, ids).sort(dim=1, descending=True).values
    ref_vals = x.gather(1, ref_ids.long()).sort(dim=1, descending=True).values
    got_unscaled = (weights.float() / scale.float()[ids]).sort(dim=1, descending=True).values
    ref_unscaled = (ref_w / scale.float()[ref_ids.long()]).sort(dim=1, descending=True).values
    return bool(torch.equal(got_vals, ref_vals)) and bool(
        torch.allclose(got_unscaled, ref_unscaled, rtol=1e-5, atol=1e-6)
    )


def build_methods(selected: list[str]):
    methods = {}
    if "ours" in selected:
        methods["ours"] = ("vllm-gemma4-router", gemma4_routing_triton)
    if "vllm" in selected:
        methods["vllm"] = load_vllm_router()
    if "sglang" in selected:
        methods["sglang"] = load_sglang_router()
    if "torch_eager" in selected:
        methods["torch_eager"] = ("torch reference, eager", gemma4_routing_reference)
    for name, options in COMPILE_MODES.items():
        if name in selected:
            compiled = torch.compile(gemma4_routing_reference, dynamic=True, **options)
            methods[name] = (f"torch.compile {options['mode']}", compiled)
    return methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--shape", default="128x8", help="main E x K, full T sweep")
    parser.add_argument("--variant-shapes", default="64x4,64x6,256x8,128x6,128x4")
    parser.add_argument("--variant-tokens", default="1,16,256,4096,65536,262144")
    parser.add_argument("--max-tokens", type=int, default=262144, help="main shape; 0 skips it")
    parser.add_argument("--no-odd", action="store_true", help="skip the 2^t - 1 points")
    parser.add_argument(
        "--methods",
        default="ours,vllm,sglang,torch_eager,compile_default,compile_reduce_overhead,"
        "compile_max_autotune,copy",
    )
    parser.add_argument("--rep-ms", type=int, default=40)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()

    stamp = environment_stamp()
    selected = args.methods.split(",")
    methods = build_methods(selected)
    stamp.update({f"impl_{k}": v[0] for k, v in methods.items()})
    print(stamp, flush=True)
    copy_gbs = copy_bandwidth_gbs()
    stamp["copy_GBps"] = f"{copy_gbs:.0f}"
    print(f"copy bandwidth (read+write): {copy_gbs:.0f} GB/s", flush=True)

    main_e, main_k = (int(v) for v in args.shape.split("x"))
    tokens = [t for t in TOKEN_COUNTS_POW2 if t <= args.max_tokens]
    if not args.no_odd:
        tokens = sorted(tokens + [t for t in TOKEN_COUNTS_ODD if t <= args.max_tokens])
    points = [(d, main_e, main_k, t) for d in args.dtypes.split(",") for t in tokens]
    variant_tokens = [int(t) for t in args.variant_tokens.split(",")]
    for shape in filter(None, args.variant_shapes.split(",")):
        e, k = (int(v) for v in shape.split("x"))
        points += [(d, e, k, t) for d in ("float32", "bfloat16") for t in variant_tokens]

    rows = []
    for n, (dtype_name, num_experts, topk, num_tokens) in enumerate(points):
        progress(n, len(points), f"{dtype_name} E={num_experts} K={topk} T={num_tokens}")
        dtype = getattr(torch, dtype_name)
        elt = torch.finfo(dtype).bits // 8
        scale = torch.rand(num_experts, device="cuda") + 0.5

        def make(num_tokens=num_tokens, num_experts=num_experts, dtype=dtype):
            return (torch.randn(num_tokens, num_experts, device="cuda").to(dtype),)

        next_logits = rotating(make, num_tokens * num_experts * elt)
        nbytes = routing_bytes(num_tokens, num_experts, topk, elt)
        for name, (_, fn) in methods.items():
            (check,) = next_logits()
            try:
                ok = same_routing(check, topk, scale, *fn(check, topk, scale))
            except Exception as exc:  # a peer kernel may not support a shape
                print(f"\n{name} failed at {dtype_name} E={num_experts} T={num_tokens}: {exc}")
                continue

            def run(fn=fn, topk=topk, scale=scale, next_logits=next_logits):
                return fn(next_logits()[0], topk, scale)

            graph_us = (
                float("nan")
                if name == "compile_reduce_overhead"  # has its own CUDA graphs
                else bench_graph(run, args.rep_ms)
            )
            eager_us = bench_eager(run, args.rep_ms)
            rows.append(
                dict(
                    method=name,
                    dtype=dtype_name,
                    E=num_experts,
                    K=topk,
                    T=num_tokens,
                    correct=ok,
                    graph_us=round(graph_us, 3),
                    eager_us=round(eager_us, 3),
                    bytes=nbytes,
                )
            )
        if "copy" in selected:
            half = max(1, nbytes // 2 // 4)
            src = torch.randn(half, device="cuda")
            dst = torch.empty_like(src)
            copy_us = bench_graph(lambda dst=dst, src=src: dst.copy_(src), args.rep_ms)
            rows.append(
                dict(
                    method="copy",
                    dtype=dtype_name,
                    E=num_experts,
                    K=topk,
                    T=num_tokens,
                    correct=True,
                    graph_us=round(copy_us, 3),
                    eager_us=float("nan"),
                    bytes=nbytes,
                )
            )
    progress(len(points), len(points), "done")
    print()

    host = {}
    for name in ("ours", "vllm", "sglang"):
        if name in methods:
            fn = methods[name][1]
            x = torch.randn(1, main_e, device="cuda")
            s = torch.rand(main_e, device="cuda") + 0.5
            host[name] = host_us_per_call(lambda fn=fn, x=x, s=s: fn(x, main_k, s))
    stamp.update({f"host_us_T1_{k}": f"{v:.1f}" for k, v in host.items()})

    write_results(rows, stamp, copy_gbs, Path(args.out), args.tag, main_e, main_k)


def geomean(values):
    values = [v for v in values if v and not math.isnan(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def write_results(rows, stamp, copy_gbs, out: Path, tag: str, main_e: int, main_k: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    gpu = stamp.get("gpu", "gpu").replace(" ", "_")
    base = out / f"bench_kernel_{gpu}{('_' + tag) if tag else ''}"
    header = "# " + ", ".join(f"{k}={v}" for k, v in stamp.items())
    write_stamped_csv(f"{base}.csv", stamp, rows)

    by = {(r["method"], r["dtype"], r["E"], r["K"], r["T"]): r for r in rows}
    lines = [
        f"# Gemma4 routing kernel benchmark ({stamp.get('gpu')})",
        "",
        header[2:],
        "",
        f"Copy bandwidth (read + write): {copy_gbs:.0f} GB/s. Times: median us, CUDA-graph "
        "replay (eager for compile_reduce_overhead). Speed-up = other / ours.",
        "",
    ]
    summary = []
    for dtype in sorted({r["dtype"] for r in rows}):
        shapes = sorted({(r["E"], r["K"]) for r in rows if r["dtype"] == dtype})
        for e, k in shapes:
            ts = sorted(
                {r["T"] for r in rows if r["dtype"] == dtype and (r["E"], r["K"]) == (e, k)}
            )
            methods = [
                m
                for m in (
                    "ours",
                    "vllm",
                    "sglang",
                    "torch_eager",
                    "compile_default",
                    "compile_reduce_overhead",
                    "compile_max_autotune",
                    "copy",
                )
                if (m, dtype, e, k, ts[0]) in by
            ]
            lines += [
                f"## {dtype}, E={e}, K={k}",
                "",
                "| T | " + " | ".join(methods) + " | ours GB/s | % copy BW | vs vLLM | vs SGLang |",
                "|---" * (len(methods) + 5) + "|",
            ]

            def t_of(m, t, dtype=dtype, e=e, k=k):
                r = by.get((m, dtype, e, k, t))
                if r is None or not r["correct"]:
                    return float("nan")
                return r["eager_us"] if m == "compile_reduce_overhead" else r["graph_us"]

            ratios = {m: [] for m in methods}
            for t in ts:
                ours = t_of("ours", t)
                gbs = by[("ours", dtype, e, k, t)]["bytes"] / ours / 1e3 if ours == ours else 0
                for m in methods:
                    ratios[m].append(t_of(m, t) / ours)
                cells = [f"{t_of(m, t):.2f}" for m in methods]
                lines.append(
                    f"| {t} | " + " | ".join(cells) + f" | {gbs:.0f} | "
                    f"{100 * gbs / copy_gbs:.0f}% | {t_of('vllm', t) / ours:.2f}x | "
                    f"{t_of('sglang', t) / ours:.2f}x |"
                )
            gm = {m: geomean(ratios[m]) for m in methods}
            mins = {m: min((v for v in ratios[m] if v == v), default=float("nan")) for m in methods}
            lines += [
                "",
                "Geomean speed-up of ours over: "
                + ", ".join(
                    f"{m} {gm[m]:.2f}x (min {mins[m]:.2f}x)" for m in methods if m != "ours"
                ),
                "",
            ]
            summary.append((dtype, e, k, gm, mins))
    Path(f"{base}.md").write_text("\n".join(lines) + "\n")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        main = [(d, main_e, main_k) for d in sorted({r["dtype"] for r in rows})]
        fig, axes = plt.subplots(1, len(main), figsize=(6 * len(main), 5), squeeze=False)
        for ax, (dtype, e, k) in zip(axes[0], main, strict=True):
            for m in sorted({r["method"] for r in rows}):
                pts = sorted(
                    (r["T"], r["eager_us"] if m == "compile_reduce_overhead" else r["graph_us"])
                    for r in rows
                    if (r["method"], r["dtype"], r["E"], r["K"]) == (m, dtype, e, k)
                    and r["correct"]
                )
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker=".", label=m)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("tokens T")
            ax.set_ylabel("median us")
            ax.set_title(f"{dtype} logits, E={e}, K={k}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(
            f"Gemma4 routing on {stamp.get('gpu')} - torch {stamp['torch']}, "
            f"triton {stamp['triton']}, {stamp['date']}",
            fontsize=9,
        )
        fig.tight_layout()
        fig.savefig(f"{base}.png", dpi=110)
    except ImportError:
        print("matplotlib missing: no PNG")

    print(f"wrote {base}.csv/.md/.png")
    print("| dtype | E | K | vs vLLM geomean (min) | vs SGLang | vs eager | vs compile default |")
    for dtype, e, k, gm, mins in summary:
        print(
            f"| {dtype} | {e} | {k} | {gm.get('vllm', float('nan')):.2f}x "
            f"({mins.get('vllm', float('nan')):.2f}x) | {gm.get('sglang', float('nan')):.2f}x | "
            f"{gm.get('torch_eager', float('nan')):.1f}x | "
            f"{gm.get('compile_default', float('nan')):.1f}x |"
        )


if __name__ == "__main__":
    main()
