"""The fused router's float64 chain and the checks its tests share."""

from __future__ import annotations

import torch
from oracle import assert_ids_valid, assert_matches_oracle


def router_inputs(
    num_tokens: int,
    hidden: int,
    num_experts: int,
    dtype: torch.dtype,
    gen: torch.Generator,
    device: str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh ``(hidden_states, scale, gate_weight, per_expert_scale)`` of Gemma-like size:
    hidden states far from unit RMS (the norm matters), a gate whose logits spread ~1."""
    h = torch.randn(num_tokens, hidden, generator=gen) * 7 + 0.5
    scale = torch.rand(hidden, generator=gen) * 2 + 0.1
    w = torch.randn(num_experts, hidden, generator=gen) * (3 / hidden**0.5)
    pes = torch.rand(num_experts, generator=gen) + 0.5
    return tuple(t.to(dtype).to(device) for t in (h, scale, w)) + (pes.to(device),)


def fp64_logits(hidden_states, scale, gate_weight, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, bound)`` in float64 under the package's contract (the bf16 GEMM operand
    ``h * scale`` rounded once, exact in fp64 otherwise); ``bound`` is a per-element error
    bound for an fp32 evaluation (sums of |terms| times a few fp32 epsilons per term)."""
    h = hidden_states.double().cpu()
    operand = h * scale.double().cpu()
    if hidden_states.dtype == torch.bfloat16:
        operand = operand.to(torch.bfloat16).double()  # the product of two bf16 is exact
    w = gate_weight.double().cpu()
    factor = torch.rsqrt((h * h).mean(dim=-1) + eps) * h.shape[-1] ** -0.5
    logits = (operand @ w.t()) * factor[:, None]
    magnitude = (operand.abs() @ w.abs().t()) * factor[:, None]
    bound = magnitude * (hidden_states.shape[-1] ** 0.5 * 2.0**-22) + logits.abs() * 2.0**-20
    return logits, bound


def assert_fused_contract(
    logits, weights, ids, hidden_states, scale, gate_weight, per_expert_scale, eps, topk
) -> None:
    """Logits within the fp32 bound of the fp64 chain; routing exact on the op's own logits."""
    ref, bound = fp64_logits(hidden_states, scale, gate_weight, eps)
    _assert_within_and_routed(logits, weights, ids, ref, bound, "the fp64 chain",
                              gate_weight.shape[0], per_expert_scale, topk)  # fmt: skip


def _assert_within_and_routed(
    logits, weights, ids, ref, bound, what, num_experts, per_expert_scale, topk
) -> None:
    err = (logits.double().cpu() - ref).abs()
    worst = float((err / bound.clamp_min(1e-30)).max()) if err.numel() else 0.0
    assert worst <= 1.0, f"logits off {what} by {worst:.2f}x the fp32 bound"
    pes = None if per_expert_scale is None else per_expert_scale.cpu()
    assert_matches_oracle(weights.cpu(), ids.cpu(), logits.cpu(), topk, pes)
    assert_ids_valid(ids, num_experts)


def fp64_gate_logits(operand, gate_weight) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, bound)`` of vLLM's gate on its operand (the router's normed, scaled
    ``x'``), in float64: ``operand @ W.T``; ``bound`` as :func:`fp64_logits`'s, for an
    fp32 evaluation in any order."""
    operand, w = operand.double().cpu(), gate_weight.double().cpu()
    logits = operand @ w.t()
    magnitude = operand.abs() @ w.abs().t()
    bound = magnitude * (operand.shape[-1] ** 0.5 * 2.0**-22) + logits.abs() * 2.0**-20
    return logits, bound


def assert_gate_contract(logits, weights, ids, operand, gate_weight, per_expert_scale, topk):
    """The split router's own counts on the gate's operand: logits within the fp32 bound
    of the gate's fp64 GEMM; routing exact on the op's own logits."""
    ref, bound = fp64_gate_logits(operand, gate_weight)
    _assert_within_and_routed(logits, weights, ids, ref, bound, "the gate's fp64 GEMM",
                              gate_weight.shape[0], per_expert_scale, topk)  # fmt: skip
