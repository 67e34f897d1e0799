"""``torch.ops.vllm_gemma4_router.fused_router``: the whole Gemma 4 router as one op.

Functional (mutates nothing), with a fake implementation, so torch.compile
traces model code that calls it without a graph break. On the CPU it runs the
torch chain (:func:`gemma4_fused_router_reference`); on GPUs the Triton kernel
of ``fused_router_launch``, or, for the token counts where that kernel is slower
(``GEMM_PATH_TOKENS``), the same contract through a Triton prologue, cuBLAS and
the kernel's epilogue. Either way it returns the packed buffer of
``fused_handover`` and records it for one claim.
"""

from __future__ import annotations

import os

import torch

from ._validation import check_fused_router_inputs, check_fused_router_supported
from .fused_handover import new_packed, record_produced, unpack
from .reference import gemma4_fused_router_reference

OP_QUALNAME = "vllm_gemma4_router::fused_router"

_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def fused_router_into(
    hidden_states: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    """What the op computes, into ``out = (logits [T, E], weights, ids [T, K])``, without
    the dispatcher or the hand-over record (benchmarks time this). Inputs unchecked."""
    logits, weights, ids = out
    if hidden_states.device.type == "cpu":
        ref = gemma4_fused_router_reference(
            hidden_states, scale, gate_weight, per_expert_scale, eps, topk
        )
        for target, value in zip(out, ref, strict=True):
            target.copy_(value)
        return
    from .fused_router_launch import GEMM_PATH_TOKENS, launch_with_config, table_config

    num_tokens, hidden = hidden_states.shape
    if num_tokens in GEMM_PATH_TOKENS:
        from .fused_router_gemm import route_by_gemm

        route_by_gemm(hidden_states, scale, gate_weight, per_expert_scale, eps, topk, out)
    else:
        config = table_config(num_tokens, hidden, gate_weight.shape[0], hidden_states.device)
        launch_with_config(
            config, hidden_states, scale, gate_weight, per_expert_scale, eps, topk, out
        )


@torch.library.custom_op(OP_QUALNAME, mutates_args=())
def fused_router(
    hidden_states: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
) -> torch.Tensor:
    """Packed ``[T*(E + 2K)]`` float32: logits, weights, ids (see ``fused_handover``)."""
    num_tokens, _, num_experts = check_fused_router_inputs(
        hidden_states, scale, gate_weight, per_expert_scale, eps, topk
    )
    if hidden_states.device.type != "cpu":  # the CPU's torch chain takes any E and K
        check_fused_router_supported(num_experts, topk)
    packed = new_packed(num_tokens, num_experts, topk, hidden_states.device)
    out = unpack(packed, num_tokens, num_experts, topk)
    fused_router_into(hidden_states, scale, gate_weight, per_expert_scale, eps, topk, out)
    record_produced(packed, num_tokens, num_experts, topk)
    return packed


@fused_router.register_fake
def _fused_router_fake(hidden_states, scale, gate_weight, per_expert_scale, eps, topk):
    num_tokens, _, num_experts = check_fused_router_inputs(
        hidden_states, scale, gate_weight, per_expert_scale, eps, topk
    )
    return hidden_states.new_empty((num_tokens * (num_experts + 2 * topk),), dtype=torch.float32)


def gemma4_fused_router(
    hidden_states: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Gemma 4 router in one op: ``(logits, weights, ids)``, fp32 [T, E], fp32 and int32 [T, K].

    Same contract as :func:`vllm_gemma4_router.gemma4_fused_router_reference`
    (the logits within fp32 GEMM tolerance of it; weights and ids exactly the
    routing of the returned logits). The three are views of one buffer.
    """
    # Checked here too: the op's schema would reject a wrong type with a less clear error.
    num_tokens, _, num_experts = check_fused_router_inputs(
        hidden_states, scale, gate_weight, per_expert_scale, eps, topk
    )
    packed = torch.ops.vllm_gemma4_router.fused_router(
        hidden_states, scale, gate_weight, per_expert_scale, eps, topk
    )
    return unpack(packed, num_tokens, num_experts, topk)
