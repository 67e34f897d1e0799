"""What vLLM 0.34's padding mask costs the routing kernel and the fused router (GPU).

Each op is timed without a mask and with one (half the rows padding, as a
batch padded to its CUDA-graph size may be), side by side in one run, in CUDA
graphs (``triton.testing.do_bench_cudagraph``, median), three interleaved
repeats. The mask is applied inside each op's own kernel, so the difference is
the mask's load and select, not a launch.

    python -m benchmarks.kernel.bench_padding_mask --out benchmarks/results/padding_mask

Writes ``<out>/padding_mask_<gpu>_<date>.{csv,md}`` stamped with the device,
versions and date, and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import datetime
from pathlib import Path

import torch

from benchmarks.common.gpu import device_slug
from benchmarks.common.tables import markdown_table
from benchmarks.common.timing import bench_graph, environment_stamp
from vllm_gemma4_router.fused_router import torch_library as fused_library
from vllm_gemma4_router.fused_router.handover import new_packed, unpack
from vllm_gemma4_router.routing.launcher import gemma4_routing_triton

EXPERTS, TOPK, HIDDEN = 128, 8, 2816
ROUTING_TOKENS = (1, 16, 64, 256, 4096, 65536)
FUSED_TOKENS = (1, 16, 64, 256, 512)
REPEATS = 3


def _mask(num_tokens: int, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(num_tokens, generator=gen) < 0.5).cuda()


def routing_cases(gen: torch.Generator):
    """(op, T, callable without mask, callable with mask) for the routing op, fp32 logits."""
    for num_tokens in ROUTING_TOKENS:
        logits = torch.randn(num_tokens, EXPERTS, generator=gen).cuda()
        scale = (torch.rand(EXPERTS, generator=gen) + 0.5).cuda()
        weights = torch.empty(num_tokens, TOPK, device="cuda")
        ids = torch.empty(num_tokens, TOPK, device="cuda", dtype=torch.int32)
        mask = _mask(num_tokens, gen)
        out = dict(topk_weights=weights, topk_ids=ids)

        def plain(logits=logits, scale=scale, out=out):
            gemma4_routing_triton(logits, TOPK, scale, **out)

        def masked(logits=logits, scale=scale, out=out, mask=mask):
            gemma4_routing_triton(logits, TOPK, scale, is_padding=mask, **out)

        yield "routing fp32", num_tokens, plain, masked


def fused_cases(gen: torch.Generator):
    """The fused router (bf16 hidden states, 26B-A4B's router shape), as the op computes it."""
    for num_tokens in FUSED_TOKENS:
        h = torch.randn(num_tokens, HIDDEN, generator=gen).to(torch.bfloat16).cuda()
        s = (torch.rand(HIDDEN, generator=gen) + 0.5).cuda()
        w = (torch.randn(EXPERTS, HIDDEN, generator=gen) * 0.02).to(torch.bfloat16).cuda()
        pes = (torch.rand(EXPERTS, generator=gen) + 0.5).cuda()
        out = unpack(new_packed(num_tokens, EXPERTS, TOPK, h.device), num_tokens, EXPERTS, TOPK)
        mask = _mask(num_tokens, gen)

        def plain(args=(h, s, w, pes), out=out):
            fused_library.fused_router_into(*args, 1e-6, TOPK, out)

        def masked(args=(h, s, w, pes), out=out, mask=mask):
            fused_library.fused_router_into(*args, 1e-6, TOPK, out, mask)

        yield "fused router bf16", num_tokens, plain, masked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/padding_mask"))
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(int.from_bytes(torch.randint(0, 2**31, (1,)).numpy()))
    stamp = environment_stamp()
    rows = []
    for op, num_tokens, plain, masked in [*routing_cases(gen), *fused_cases(gen)]:
        plain(), masked()  # compile both outside the timing
        times = {"none": [], "half padding": []}
        for _ in range(REPEATS):  # interleaved: drift hits both alike
            times["none"].append(bench_graph(plain))
            times["half padding"].append(bench_graph(masked))
        best = {k: min(v) for k, v in times.items()}
        spread = max(max(v) - min(v) for v in times.values())
        rows.append(
            {
                "op": op,
                "T": num_tokens,
                "no mask (us)": round(best["none"], 2),
                "with mask (us)": round(best["half padding"], 2),
                "mask cost (us)": round(best["half padding"] - best["none"], 2),
                "repeat spread (us)": round(spread, 2),
            }
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"padding_mask_{device_slug(stamp)}_{datetime.date.today().isoformat()}"
    with stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    align = ["left"] + ["right"] * (len(rows[0]) - 1)  # op, then numbers
    table = markdown_table(list(rows[0]), [row.values() for row in rows], align)
    header = "\n".join(f"- {k}: {v}" for k, v in stamp.items())
    stem.with_suffix(".md").write_text(
        f"# Padding mask cost, CUDA graphs, best of {REPEATS} interleaved repeats\n\n"
        f"{header}\n\n{table}\n"
    )
    print(table)


if __name__ == "__main__":
    main()
