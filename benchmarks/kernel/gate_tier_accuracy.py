"""Is vLLM's low-latency gate GEMM as accurate as cuBLAS for Gemma 4's router?
(issue #35 item 5, the accuracy check of ``+gemma4_gate_tier``)

For each token count M <= 16 (GateLinear's ``ll_bf16_gemm`` range), fresh router
inputs (RMS-normed, ``* H**-0.5``, ``* scale``, bf16) and fresh bf16 gate
weights go through ``ll_bf16_gemm`` and through ``torch.mm(x, W.T,
out_dtype=torch.float32)`` (cuBLAS, GateLinear's last tier); both are checked
against an fp64 product of the same bf16 values.

The tolerance is the fp32 GEMM's own: the products of bf16 values are exact in
fp32, so any summation order of the H terms is within
``gamma(H-1) * sum_k |x_k w_k|`` of the exact sum, ``gamma(n) = n u / (1 - n u)``,
``u = 2**-24``; two such results differ by at most twice that. Checked:

- each GEMM's distance to fp64 stays within its bound (ratio <= 1);
- routing (this package's op) from the two logits gives the same expert set on
  every row whose top-K boundary gap (K-th minus (K+1)-th logit) exceeds the
  row's tolerance, and the same order where every gap among the first K+1
  logits does; rows below that are counted as undecidable, not failures, and
  every row whose expert set differs at all is counted too.

Run on an SM90/SM100 GPU with vLLM >= 0.26 installed; writes
``gate_tier_accuracy.csv`` and ``.md`` (stamped) under ``--out`` and exits 1 on
a violation, 0 otherwise (2 when ``ll_bf16_gemm`` cannot run, with the reason).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.common import stamp, tables

#: Gemma 4 26B-A4B's router: hidden size, experts, top-K.
HIDDEN, EXPERTS, TOPK = 2816, 128, 8
DEFAULT_TOKENS = (1, 2, 3, 4, 5, 8, 12, 16)
UNIT_ROUNDOFF = 2.0**-24

Gemm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Routing = Callable[[torch.Tensor, int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def gamma(n: int) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)`` for fp32 (``u = 2**-24``)."""
    return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


def router_input(tokens: int, hidden: int, generator: torch.Generator) -> torch.Tensor:
    """Gemma 4's router input ``[tokens, hidden]`` bf16: RMSNorm without weight,
    ``* hidden**-0.5``, ``* scale`` (a fresh positive per-channel scale)."""
    h = torch.randn(tokens, hidden, generator=generator, dtype=torch.float32)
    normed = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    scale = 0.5 + torch.rand(hidden, generator=generator)
    return (normed * hidden**-0.5 * scale).to(torch.bfloat16)


def gate_weight(experts: int, hidden: int, generator: torch.Generator) -> torch.Tensor:
    """A fresh bf16 gate weight ``[experts, hidden]`` giving logits of unit-order spread."""
    return (2.0 * torch.randn(experts, hidden, generator=generator)).to(torch.bfloat16)


def cublas_gemm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """GateLinear's last tier: ``torch.mm(x, w.T, out_dtype=torch.float32)``."""
    if x.device.type == "cpu":
        return torch.mm(x.float(), w.float().T)
    return torch.mm(x, w.T, out_dtype=torch.float32)


@dataclass
class RowChecks:
    """Per-row outcome of one batch: fp64 distances, bounds and routing agreement."""

    err_a: torch.Tensor  # max over experts of |a - exact| / bound
    err_b: torch.Tensor
    diff: torch.Tensor  # max |a - b|
    decidable: torch.Tensor  # boundary gap > tolerance
    same_set: torch.Tensor
    ordered: torch.Tensor  # every gap among the first K+1 > tolerance
    same_order: torch.Tensor


def check_rows(
    x: torch.Tensor,
    w: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    topk: int,
    routing: Routing,
    per_expert_scale: torch.Tensor,
) -> RowChecks:
    """Compare logits ``a`` (the tier under test) and ``b`` (cuBLAS) of ``x @ w.T``
    with the fp64 product, and the routing decisions made from each."""
    x64, w64 = x.double(), w.double()
    exact = x64 @ w64.T
    bound = gamma(x.shape[1] - 1) * (x64.abs() @ w64.abs().T)
    bound = bound.clamp_min(torch.finfo(torch.float64).tiny)
    tol = 2 * bound.max(dim=1).values
    err_a = ((a.double() - exact).abs() / bound).max(dim=1).values
    err_b = ((b.double() - exact).abs() / bound).max(dim=1).values
    diff = (a.double() - b.double()).abs().max(dim=1).values
    top = b.double().sort(dim=1, descending=True).values[:, : topk + 1]
    gaps = top[:, :-1] - top[:, 1:]
    decidable = gaps[:, topk - 1] > tol
    ordered = (gaps > tol[:, None]).all(dim=1)
    _, ids_a = routing(a, topk, per_expert_scale)
    _, ids_b = routing(b, topk, per_expert_scale)
    ids_a, ids_b = ids_a.long().cpu(), ids_b.long().cpu()
    same_set = (ids_a.sort(dim=1).values == ids_b.sort(dim=1).values).all(dim=1)
    same_order = (ids_a == ids_b).all(dim=1)
    return RowChecks(
        err_a.cpu(), err_b.cpu(), diff.cpu(), decidable.cpu(), same_set, ordered.cpu(), same_order
    )


@dataclass
class Summary:
    """One token count's result (a CSV row)."""

    tokens: int
    rows: int
    max_abs_diff: float
    max_err_ratio_tier: float
    max_err_ratio_cublas: float
    decidable_rows: int
    set_mismatches: int
    ordered_rows: int
    order_mismatches: int
    rows_differing: int

    @property
    def ok(self) -> bool:
        """Within the bounds, and no mismatch on a decidable row."""
        return (
            self.max_err_ratio_tier <= 1.0
            and self.max_err_ratio_cublas <= 1.0
            and self.set_mismatches == 0
            and self.order_mismatches == 0
        )


def measure(
    tier: Gemm,
    routing: Routing,
    tokens: int,
    rows: int,
    weights: int,
    device: torch.device,
    seed: int = 0,
    baseline: Gemm = cublas_gemm,
) -> Summary:
    """``rows`` rows at ``tokens`` per call (``weights`` fresh gate weights in turn)."""
    generator = torch.Generator().manual_seed(seed * 1000 + tokens)
    ws = [gate_weight(EXPERTS, HIDDEN, generator).to(device) for _ in range(weights)]
    scale = (0.5 + torch.rand(EXPERTS, generator=generator)).to(device)
    checks = []
    for call in range(math.ceil(rows / tokens)):
        x = router_input(tokens, HIDDEN, generator).to(device)
        w = ws[call % weights]
        a, b = tier(x, w), baseline(x, w)
        checks.append(check_rows(x, w, a, b, TOPK, routing, scale))
    cat = {name: torch.cat([getattr(c, name) for c in checks]) for name in asdict(checks[0])}
    decidable, ordered = cat["decidable"], cat["ordered"]
    return Summary(
        tokens=tokens,
        rows=int(cat["diff"].numel()),
        max_abs_diff=float(cat["diff"].max()),
        max_err_ratio_tier=float(cat["err_a"].max()),
        max_err_ratio_cublas=float(cat["err_b"].max()),
        decidable_rows=int(decidable.sum()),
        set_mismatches=int((decidable & ~cat["same_set"]).sum()),
        ordered_rows=int(ordered.sum()),
        order_mismatches=int((ordered & ~cat["same_order"]).sum()),
        rows_differing=int((~cat["same_set"]).sum()),
    )


HEADERS = (
    "T",
    "rows",
    "max abs(ll - cuBLAS)",
    "max err/bound, ll_bf16",
    "max err/bound, cuBLAS",
    "rows decidable (set)",
    "set mismatches",
    "rows decidable (order)",
    "order mismatches",
    "rows with other experts (any gap)",
)


def write_results(out: Path, summaries: Sequence[Summary], env: dict, label: str) -> str:
    """``gate_tier_accuracy.csv`` and ``.md`` under ``out``; the markdown text."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "gate_tier_accuracy.csv", "w", newline="") as f:
        f.write(f"# {stamp.stamp_line(env)}, kernel={label}\n")
        writer = csv.DictWriter(f, fieldnames=list(asdict(summaries[0])))
        writer.writeheader()
        writer.writerows(asdict(s) for s in summaries)
    rows = [
        [
            s.tokens,
            s.rows,
            f"{s.max_abs_diff:.3g}",
            f"{s.max_err_ratio_tier:.3g}",
            f"{s.max_err_ratio_cublas:.3g}",
            s.decidable_rows,
            s.set_mismatches,
            s.ordered_rows,
            s.order_mismatches,
            s.rows_differing,
        ]
        for s in summaries
    ]
    verdict = "PASS" if all(s.ok for s in summaries) else "FAIL"
    text = (
        f"# Gate GEMM accuracy: {label} vs cuBLAS, H={HIDDEN}, E={EXPERTS}, K={TOPK}\n\n"
        f"{stamp.stamp_line(env)}\n\n"
        "Bound: gamma(H-1) * sum |x w| per logit (fp32 summation of exact bf16 products, "
        "any order); a row is decidable when its top-K boundary gap (or, for the order, "
        "every gap among the first K+1 logits) exceeds twice the row's largest bound. "
        "The last column counts every row whose expert set differs, decidable or not.\n\n"
        f"{tables.markdown_table(HEADERS, rows)}\n\n{verdict}\n"
    )
    (out / "gate_tier_accuracy.md").write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; exit 0 pass, 1 a violation, 2 the tier cannot run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS))
    parser.add_argument("--rows", type=int, default=4096, help="rows per token count")
    parser.add_argument("--weights", type=int, default=8, help="gate weights in turn")
    parser.add_argument("--out", type=Path, default=Path("gate-tier-accuracy-out"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: ll_bf16_gemm runs on SM90/SM100", file=sys.stderr)
        return 2
    from benchmarks.common.ll_gemm import load_ll_gemm
    from vllm_gemma4_router.routing.launcher import gemma4_routing_triton

    ll = load_ll_gemm("installed", torch.cuda.get_device_capability(), HIDDEN)
    if ll.fn is None:
        print(f"ll_bf16_gemm cannot run: {ll.reason}", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    summaries = [
        measure(ll.fn, gemma4_routing_triton, t, args.rows, args.weights, device)
        for t in args.tokens
    ]
    print(write_results(args.out, summaries, stamp.environment_stamp(), ll.label))
    return 0 if all(s.ok for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
