"""benchmarks/kernel/gate_tier_accuracy.py on the CPU: the bound, the decidable-row
logic and the report, with GEMMs whose errors are known (the real check runs
vLLM's ll_bf16_gemm on the GPU)."""

from __future__ import annotations

import csv

import torch

from benchmarks.kernel import gate_tier_accuracy as acc
from vllm_gemma4_router.routing.reference import gemma4_routing_reference

CPU = torch.device("cpu")


def correctly_rounded(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The fp64 product rounded once to fp32: a GEMM far inside the bound."""
    return (x.double() @ w.double().T).float()


def test_a_gemm_within_the_fp32_bound_passes_and_agrees_on_decidable_rows():
    summary = acc.measure(correctly_rounded, gemma4_routing_reference, 3, 60, 2, CPU, seed=1)
    assert summary.rows == 60 and summary.ok
    assert 0 < summary.max_abs_diff < 1e-3
    assert summary.max_err_ratio_tier < 1 and summary.max_err_ratio_cublas < 1
    # The worst-case bound (~1e-2 here) leaves some rows undecidable, most not.
    assert summary.decidable_rows >= 40 and summary.set_mismatches == 0
    assert summary.rows_differing <= summary.rows - summary.decidable_rows
    assert 0 < summary.ordered_rows <= summary.decidable_rows


def test_a_gemm_off_by_more_than_the_bound_fails():
    def off(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = correctly_rounded(x, w)
        out[:, 5] += 0.5  # far beyond gamma(H-1) * sum |x w|, and it moves expert 5
        return out

    summary = acc.measure(off, gemma4_routing_reference, 2, 40, 1, CPU, seed=2)
    assert summary.max_err_ratio_tier > 1 and not summary.ok
    assert summary.max_err_ratio_cublas <= 1


def test_rows_inside_the_tolerance_are_undecidable_not_failures():
    generator = torch.Generator().manual_seed(3)
    x = acc.router_input(4, acc.HIDDEN, generator)
    w = acc.gate_weight(acc.EXPERTS, acc.HIDDEN, generator)
    b = acc.cublas_gemm(x, w)
    # Tie the K-th and (K+1)-th logits of row 0 in b (the lower id wins there);
    # a lifts the higher id by one ulp, so a picks the other expert.
    order = b[0].argsort(descending=True)
    low, high = sorted((int(order[acc.TOPK - 1]), int(order[acc.TOPK])))
    b[0, high] = b[0, low]
    a = b.clone()
    a[0, high] = torch.nextafter(b[0, low], torch.tensor(float("inf")))
    scale = torch.ones(acc.EXPERTS)
    checks = acc.check_rows(x, w, a, b, acc.TOPK, gemma4_routing_reference, scale)
    assert not checks.decidable[0] and not checks.same_set[0]
    assert checks.decidable[1:].all() and checks.same_set[1:].all()


def test_gamma_and_the_router_input():
    assert acc.gamma(1) == 2.0**-24 / (1 - 2.0**-24)
    assert acc.gamma(2815) > 2815 * 2.0**-24
    x = acc.router_input(5, 64, torch.Generator().manual_seed(0))
    assert x.dtype == torch.bfloat16 and x.shape == (5, 64)
    # Normed, times 64**-0.5 and a scale in [0.5, 1.5): row norms between 0.5 and 1.5.
    norms = x.float().norm(dim=1)
    assert ((norms > 0.5) & (norms < 1.5)).all()


def test_report_is_stamped_with_csv_and_verdict(tmp_path):
    summaries = [
        acc.measure(correctly_rounded, gemma4_routing_reference, t, 8, 1, CPU) for t in (1, 4)
    ]
    env = {"date": "2026-12-06T00:00:00Z", "device": "cpu", "versions": {"torch": "x"}}
    text = acc.write_results(tmp_path, summaries, env, "test gemm")
    assert text.splitlines()[0].startswith("# Gate GEMM accuracy: test gemm vs cuBLAS")
    assert "date=2026-12-06T00:00:00Z" in text and text.rstrip().endswith("PASS")
    lines = (tmp_path / "gate_tier_accuracy.csv").read_text().splitlines()
    assert lines[0].startswith("# date=") and "kernel=test gemm" in lines[0]
    rows = list(csv.DictReader(lines[1:]))
    assert [int(r["tokens"]) for r in rows] == [1, 4] and rows[0]["set_mismatches"] == "0"


def test_without_a_gpu_it_exits_2_and_says_why(capsys):
    if torch.cuda.is_available():
        return
    assert acc.main(["--tokens", "1"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
