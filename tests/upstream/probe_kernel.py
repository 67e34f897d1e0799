"""What vLLM 0.34.0's Gemma 4 routing kernel does with ties, signed zeros and NaNs.

Run as a subprocess by ``tests/upstream/test_series.py`` with a vLLM tree first
on PYTHONPATH and ``TRITON_INTERPRET=1`` (Triton's interpreter on CPU tensors).
Prints one JSON line; ``upstream/PR.md`` ("The routing contract") states these
facts, and the test checks each of them, so the text cannot drift from the kernel.

    python tests/upstream/probe_kernel.py
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from vllm_standins import stand_in_for_triton_cpu  # noqa: E402

NUM_EXPERTS, TOPK = 16, 4


def _route(row: list[float]) -> tuple[list[int], list[float]]:
    from vllm.model_executor.models.gemma4 import gemma4_fused_routing_kernel_triton

    gating = torch.tensor([row], dtype=torch.float32)
    weights, ids = gemma4_fused_routing_kernel_triton(gating, TOPK, torch.ones(NUM_EXPERTS))
    return ids[0].tolist(), weights[0].tolist()


def _row(**values: float) -> list[float]:
    """A row of small distinct negative logits, with ``e<id>=value`` planted."""
    row = [-10.0 - 0.01 * i for i in range(NUM_EXPERTS)]
    for key, value in values.items():
        row[int(key[1:])] = value
    return row


def probe() -> dict:
    """Each behaviour, as the ids and weights the kernel returns for a planted row."""
    stand_in_for_triton_cpu()
    nan_pos = float("nan")
    nan_neg = -float("nan")
    assert math.copysign(1.0, nan_neg) < 0
    ties = _route(_row(e3=1.0, e12=0.5, e11=0.5, e10=0.5, e9=0.5))
    descending = _route(_row(e5=0.1, e7=0.9, e2=0.5, e14=0.3))
    zeros = _route(_row(e6=-0.0, e2=0.0, e9=-0.0, e1=0.0, e4=-0.0))
    nan_above_inf = _route(_row(e8=float("inf"), e13=nan_pos))
    neg_nan_below_neg_inf = _route([-float("inf")] * 12 + [nan_neg] * 4)
    inf_row = _route(_row(e5=float("inf")))
    return {
        "ties": ties[0],
        "descending": descending[0],
        "signed_zeros": zeros[0],
        "nan_above_inf": nan_above_inf[0],
        "nan_above_inf_first_weight_is_nan": math.isnan(nan_above_inf[1][0]),
        "negative_nan_below_negative_inf": neg_nan_below_neg_inf[0],
        "inf_row_weights": [("nan" if math.isnan(w) else w) for w in inf_row[1]],
    }


if __name__ == "__main__":
    print(json.dumps(probe()))
