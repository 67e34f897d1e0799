"""Kernel micro-benchmark: this kernel vs vLLM's and SGLang's in-tree kernels,
the torch reference (eager and torch.compile) and the copy floor.

Run on a GPU as ``python -m benchmarks.kernel.bench_kernel``. Every method's output is
checked against the reference (tie-aware) before it is timed. Each point is
timed two ways: **hot** (``common.bench_hot``: a CUDA graph of 32 calls on one
input, which sits in L2 as right after the router GEMM: what serving sees) and
**cold** (fresh inputs rotated through 3x the L2, ``common.bench_graph``). fp32
logits come in the families of ``common.make_logits``. The copy floor is one
256 MiB device-to-device copy timed with CUDA events. Writes CSV, markdown and
PNG plots to benchmarks/results/, stamped with GPU, driver, versions and date.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from benchmarks.common.gpu import device_name, device_slug
from benchmarks.common.peer_kernels import load_sglang_router, load_vllm_router
from benchmarks.common.plots import pyplot
from benchmarks.common.tables import markdown_table
from benchmarks.common.timing import (
    FP32_FAMILIES,
    TOKEN_COUNTS_ODD,
    TOKEN_COUNTS_POW2,
    bench_graph,
    bench_hot,
    copy_bandwidth_gbs,
    environment_stamp,
    geomean,
    host_us_per_call,
    make_logits,
    rotating,
    routing_bytes,
    write_stamped_csv,
)
from vllm_gemma4_router import gemma4_routing_reference, gemma4_routing_triton

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
    parser.add_argument(
        "--families",
        default=",".join(FP32_FAMILIES),
        help="fp32 logit families; bf16/fp16 use randn",
    )
    parser.add_argument("--modes", default="hot,cold", help="hot and/or cold (see module doc)")
    parser.add_argument("--shape", default="128x8", help="main E x K, full T sweep")
    parser.add_argument("--variant-shapes", default="64x4,64x6,256x8,128x6,128x4")
    parser.add_argument("--variant-tokens", default="1,16,256,4096,65536,262144")
    parser.add_argument("--max-tokens", type=int, default=262144, help="main shape; 0 skips it")
    parser.add_argument("--no-odd", action="store_true", help="skip the 2^t - 1 points")
    parser.add_argument(
        "--methods",
        default="ours,vllm,sglang,torch_eager,compile_default,copy",
        help="also: compile_reduce_overhead, compile_max_autotune",
    )
    parser.add_argument("--rep-ms", type=int, default=25)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()

    stamp = environment_stamp()
    selected = args.methods.split(",")
    methods = build_methods(selected)
    stamp.update({f"impl_{k}": v[0] for k, v in methods.items()})
    print(stamp, flush=True)
    copy_gbs = copy_bandwidth_gbs()
    stamp["copy_floor_GBps"] = f"{copy_gbs:.0f}"
    print(f"copy floor (256 MiB copy, CUDA events, read+write): {copy_gbs:.0f} GB/s", flush=True)

    main_e, main_k = (int(v) for v in args.shape.split("x"))
    tokens = [t for t in TOKEN_COUNTS_POW2 if t <= args.max_tokens]
    if not args.no_odd:
        tokens = sorted(tokens + [t for t in TOKEN_COUNTS_ODD if t <= args.max_tokens])
    families = args.families.split(",")

    def families_of(dtype_name):
        return families if dtype_name == "float32" else ["randn"]

    points = [
        (d, f, main_e, main_k, t)
        for d in args.dtypes.split(",")
        for f in families_of(d)
        for t in tokens
    ]
    variant_tokens = [int(t) for t in args.variant_tokens.split(",")]
    for shape in filter(None, args.variant_shapes.split(",")):
        e, k = (int(v) for v in shape.split("x"))
        points += [(d, "randn", e, k, t) for d in ("float32", "bfloat16") for t in variant_tokens]
    modes = args.modes.split(",")

    rows = []
    for n, (dtype_name, family, num_experts, topk, num_tokens) in enumerate(points):
        progress(n, len(points), f"{dtype_name} {family} E={num_experts} K={topk} T={num_tokens}")
        rows += bench_point(
            methods,
            selected,
            modes,
            dtype_name,
            family,
            num_experts,
            topk,
            num_tokens,
            args.rep_ms,
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


def bench_point(
    methods, selected, modes, dtype_name, family, num_experts, topk, num_tokens, rep_ms
) -> list[dict]:
    """Every method at one point, in every timing mode."""
    dtype = getattr(torch, dtype_name)
    scale = torch.rand(num_experts, device="cuda") + 0.5

    def make():
        return (make_logits(family, num_tokens, num_experts, dtype),)

    nbytes = routing_bytes(num_tokens, num_experts, topk, dtype.itemsize)
    next_logits = rotating(make, num_tokens * num_experts * dtype.itemsize)
    (hot,) = next_logits()
    base = dict(dtype=dtype_name, family=family, E=num_experts, K=topk, T=num_tokens, bytes=nbytes)
    rows = []
    for name, (_, fn) in methods.items():
        try:
            ok = same_routing(hot, topk, scale, *fn(hot, topk, scale))
        except Exception as exc:  # a peer kernel may not support a shape
            print(f"\n{name} failed at {base}: {exc}")
            continue
        for mode in modes:
            if mode == "hot":
                us = bench_hot(lambda fn=fn: fn(hot, topk, scale))
            elif name == "compile_reduce_overhead":  # has its own CUDA graphs
                us = float("nan")
            else:
                us = bench_graph(lambda fn=fn: fn(next_logits()[0], topk, scale), rep_ms)
            rows.append(dict(method=name, mode=mode, correct=ok, us=round(us, 3), **base))
    if "copy" in selected:  # the same bytes, half read and half written
        src = torch.randn(max(1, nbytes // 2 // 4), device="cuda")
        dst = torch.empty_like(src)
        for mode in modes:
            copy = (lambda: dst.copy_(src)) if mode == "hot" else None
            us = bench_hot(copy) if copy else bench_graph(lambda: dst.copy_(src), rep_ms)
            rows.append(dict(method="copy", mode=mode, correct=True, us=round(us, 3), **base))
    return rows


_ORDER = (
    "ours",
    "vllm",
    "sglang",
    "torch_eager",
    "compile_default",
    "compile_reduce_overhead",
    "compile_max_autotune",
    "copy",
)


def write_results(rows, stamp, copy_gbs, out: Path, tag: str, main_e: int, main_k: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"bench_kernel_{device_slug(stamp)}{('_' + tag) if tag else ''}"
    write_stamped_csv(f"{base}.csv", stamp, rows)

    by = {
        (r["method"], r["dtype"], r["family"], r["E"], r["K"], r["mode"], r["T"]): r for r in rows
    }
    lines = [
        f"# Gemma4 routing kernel benchmark ({device_name(stamp)})",
        "",
        ", ".join(f"{k}={v}" for k, v in stamp.items()),
        "",
        f"Copy floor: {copy_gbs:.0f} GB/s (256 MiB device-to-device copy, CUDA events, read + "
        "write). Times: median us per call; hot = CUDA graph of 32 calls on one L2-resident "
        "input, cold = inputs rotated through 3x the L2. Speed-up = other / ours.",
        "",
    ]
    summary = []
    groups = sorted({(r["dtype"], r["family"], r["E"], r["K"], r["mode"]) for r in rows})
    for dtype, family, e, k, mode in groups:
        key = (dtype, family, e, k, mode)
        ts = sorted(
            {r["T"] for r in rows if (r["dtype"], r["family"], r["E"], r["K"], r["mode"]) == key}
        )
        methods = [m for m in _ORDER if any((m, *key[:4], mode, t) in by for t in ts)]

        def t_of(m, t, key=key):
            r = by.get((m, *key[:4], key[4], t))
            return r["us"] if r is not None and r["correct"] else float("nan")

        ratios = {m: {} for m in methods}
        table = []
        for t in ts:
            ours = t_of("ours", t)
            gbs = by[("ours", *key[:4], mode, t)]["bytes"] / ours / 1e3 if ours == ours else 0
            for m in methods:
                ratios[m][t] = t_of(m, t) / ours
            table.append(
                [t, *(f"{t_of(m, t):.2f}" for m in methods), f"{gbs:.0f}"]
                + [f"{100 * gbs / copy_gbs:.0f}%", f"{t_of('vllm', t) / ours:.2f}x"]
                + [f"{t_of('sglang', t) / ours:.2f}x"]
            )
        head = ["T", *methods, "ours GB/s", "% of copy floor", "vs vLLM", "vs SGLang"]
        lines += [
            f"## {dtype} ({family}), E={e}, K={k}, {mode}",
            "",
            markdown_table(head, table, ["right"] * len(head)),
        ]
        stats = {m: _stats(ratios[m]) for m in methods if m != "ours"}
        lines += [
            "",
            "Speed-up of ours: "
            + "; ".join(
                f"{m}: geomean {v['all']:.2f}x (min {v['min']:.2f}x), "
                f"pow2 T<=16384 {v['decode']:.2f}x, "
                f"min T<=256 {v['small_min']:.2f}x"
                for m, v in stats.items()
            ),
            "",
        ]
        summary.append((key, stats))
    Path(f"{base}.md").write_text("\n".join(lines) + "\n")
    _plot(rows, stamp, base, main_e, main_k)
    print(f"wrote {base}.csv/.md/.png")
    head = ["logits (family)", "E", "K", "timing", "vs vLLM geomean (min)", "pow2 <=16384"]
    head += ["min T<=256", "vs SGLang", "vs eager"]
    table = []
    for (dtype, family, e, k, mode), stats in summary:
        v = stats.get("vllm", {})
        table.append(
            [f"{dtype} ({family})", e, k, mode]
            + [f"{v.get('all', math.nan):.2f}x ({v.get('min', math.nan):.2f}x)"]
            + [f"{v.get('decode', math.nan):.2f}x", f"{v.get('small_min', math.nan):.2f}x"]
            + [f"{stats.get('sglang', {}).get('all', math.nan):.2f}x"]
            + [f"{stats.get('torch_eager', {}).get('all', math.nan):.1f}x"]
        )
    print(markdown_table(head, table))


def _stats(ratio_by_t: dict[int, float]) -> dict[str, float]:
    """Geomean over every T, over the powers of two up to 16384 (what vLLM batches),
    and the minima overall and at decode sizes (T <= 256)."""

    def finite(ts):
        return [ratio_by_t[t] for t in ts if ratio_by_t[t] == ratio_by_t[t]]

    every = finite(ratio_by_t)
    pow2 = finite(t for t in ratio_by_t if t <= 16384 and t & (t - 1) == 0)
    small = finite(t for t in ratio_by_t if t <= 256)
    return dict(
        all=geomean(every),
        min=min(every, default=math.nan),
        decode=geomean(pow2),
        small_min=min(small, default=math.nan),
    )


def _plot(rows, stamp, base, main_e: int, main_k: int) -> None:
    """One panel per (dtype, family) of the main shape, hot timing."""
    plt = pyplot()
    if plt is None:
        return
    panels = sorted(
        {(r["dtype"], r["family"]) for r in rows if (r["E"], r["K"]) == (main_e, main_k)},
        key=lambda p: (p[0] != "float32", p),
    )
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (dtype, family) in zip(axes[0], panels, strict=True):
        for m in _ORDER:
            pts = sorted(
                (r["T"], r["us"])
                for r in rows
                if (r["method"], r["dtype"], r["family"], r["E"], r["K"], r["mode"])
                == (m, dtype, family, main_e, main_k, "hot")
                and r["correct"]
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=".", label=m)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens T")
        ax.set_ylabel("median us (hot)")
        ax.set_title(f"{dtype} ({family}), E={main_e}, K={main_k}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Gemma4 routing on {device_name(stamp)} - torch {stamp['torch']}, "
        f"triton {stamp['triton']}, {stamp['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(f"{base}.png", dpi=110)


if __name__ == "__main__":
    main()
