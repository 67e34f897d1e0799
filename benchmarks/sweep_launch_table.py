"""Offline sweep that chooses the launch table (tokens per program, warps, fp32 keys).

Run on the GPU; writes benchmarks/results/launch_sweep_<gpu>.csv and prints the
best configuration per (dtype, E, K, T bucket). The chosen values go into
vllm_gemma4_router/launch_table.py by hand, with this script, device and date
noted there. Inputs are rotated so they come from HBM, as in
benchmarks/bench_kernel.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_graph, environment_stamp, rotating, write_stamped_csv  # noqa: E402

from vllm_gemma4_router import gemma4_routing_reference, kernel  # noqa: E402
from vllm_gemma4_router.launch_table import LaunchConfig  # noqa: E402
from vllm_gemma4_router.triton_routing import _row_groups, launch  # noqa: E402

KEY_MODES = {
    "narrow": int(kernel.NARROW),
    "wide": int(kernel.WIDE),
    "checked": int(kernel.NARROW_CHECKED),
}


def _effective_groups(tpp: int, groups: int, block_e: int, mode: str) -> int:
    return _row_groups(LaunchConfig(tpp, 1, row_groups=groups), block_e, KEY_MODES[mode])


def sweep_point(dtype, num_experts, topk, num_tokens, candidates, rep_ms):
    """Time every candidate (tokens_per_program, warps, keys) at one shape; checked first."""
    elt = torch.finfo(dtype).bits // 8
    scale = torch.rand(num_experts, device="cuda") + 0.5

    def make():
        return (torch.randn(num_tokens, num_experts, device="cuda").to(dtype),)

    next_logits = rotating(make, num_tokens * num_experts * elt)
    (check_logits,) = next_logits()
    ref_w, ref_ids = gemma4_routing_reference(check_logits, topk, scale)
    out_w = torch.empty(num_tokens, topk, device="cuda")
    out_ids = torch.empty(num_tokens, topk, device="cuda", dtype=torch.int32)
    rows = []
    for tpp, warps, mode, sort_select, register_picks, groups in candidates:
        config = LaunchConfig(tpp, warps, sort_select, register_picks, groups)

        def run(config=config, mode=mode):
            (logits,) = next_logits()
            launch(logits, topk, scale, out_w, out_ids, config, KEY_MODES[mode])

        out_w.fill_(float("nan"))
        launch(check_logits, topk, scale, out_w, out_ids, config, KEY_MODES[mode])
        ok = bool(torch.equal(out_ids, ref_ids)) and bool(
            torch.allclose(out_w, ref_w, rtol=2e-6, atol=1e-7)
        )
        us = bench_graph(run, rep_ms=rep_ms) if ok else float("nan")
        rows.append(
            dict(
                dtype=str(dtype).removeprefix("torch."),
                E=num_experts,
                K=topk,
                T=num_tokens,
                tokens_per_program=tpp,
                num_warps=warps,
                keys=mode,
                select="topk" if sort_select else "rounds",
                picks="registers" if register_picks else "memory",
                row_groups=groups,
                correct=ok,
                us=round(us, 3),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shapes", default="128x8,64x4,256x8,128x6")
    parser.add_argument("--tokens", default="1,4,16,64,256,1024,4096,16384,65536,262144")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--tokens-per-program", default="1,2,4,8,16,32,64")
    parser.add_argument("--warps", default="1,2,4,8")
    parser.add_argument("--max-tile", type=int, default=8192, help="max logits per program")
    parser.add_argument("--rep-ms", type=int, default=25)
    parser.add_argument("--selects", default="rounds,topk", help="K max rounds and/or one tl.topk")
    parser.add_argument("--picks", default="memory", help="memory and/or registers")
    parser.add_argument("--fp32-keys", default="checked,wide", help="key modes for fp32 logits")
    parser.add_argument("--row-groups", default="1", help="pieces per row, e.g. 1,2,4,8")
    parser.add_argument("--tag", default="", help="suffix of the CSV name")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    stamp = environment_stamp()
    print(stamp, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = stamp.get("gpu", "cpu").replace(" ", "_")
    path = out / f"launch_sweep_{gpu}{('_' + args.tag) if args.tag else ''}.csv"
    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        modes = args.fp32_keys.split(",") if dtype == torch.float32 else ["narrow"]
        for shape in args.shapes.split(","):
            num_experts, topk = (int(v) for v in shape.split("x"))
            block_e = 1 << (num_experts - 1).bit_length()
            for num_tokens in (int(t) for t in args.tokens.split(",")):
                candidates = [
                    (tpp, warps, mode, sort_select, register_picks, groups)
                    for tpp in (int(v) for v in args.tokens_per_program.split(","))
                    if tpp <= max(1, num_tokens) * 2 and tpp * block_e <= args.max_tile
                    for warps in (int(v) for v in args.warps.split(","))
                    if warps * 32 <= tpp * block_e
                    for mode in modes
                    for sort_select in (s == "topk" for s in args.selects.split(","))
                    if not (sort_select and mode == "wide")
                    for register_picks in (p == "registers" for p in args.picks.split(","))
                    if not (register_picks and (sort_select or mode == "wide"))
                    for groups in (int(g) for g in args.row_groups.split(","))
                    # pieces that would fall back to plain rows time a duplicate
                    if groups == 1 or _effective_groups(tpp, groups, block_e, mode) == groups
                ]
                point = sweep_point(dtype, num_experts, topk, num_tokens, candidates, args.rep_ms)
                rows += point
                # Rewritten after every point: a run cut off by its limit keeps what it measured.
                write_stamped_csv(path, stamp, rows)
                good = [r for r in point if r["correct"]]
                bad = len(point) - len(good)
                best = min(good, key=lambda r: r["us"]) if good else None
                summary = (
                    f"tpp={best['tokens_per_program']:3d} warps={best['num_warps']} "
                    f"keys={best['keys']:8s} {best['select']:6s} {best['picks']:9s} "
                    f"groups={best['row_groups']} "
                    f"{best['us']:9.2f} us"
                    if best
                    else "NONE"
                )
                print(
                    f"{dtype_name:9s} E={num_experts:4d} K={topk} T={num_tokens:7d} "
                    f"best: {summary}  incorrect configs: {bad}",
                    flush=True,
                )

    print(f"wrote {path} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
