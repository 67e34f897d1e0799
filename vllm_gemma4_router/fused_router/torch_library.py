"""``torch.ops.vllm_gemma4_router.fused_router``: the whole Gemma 4 router as one op.

Functional (mutates nothing), with a fake implementation, so torch.compile
traces model code that calls it without a graph break. On the CPU it runs the
torch chain (:func:`gemma4_fused_router_reference`); on GPUs the Triton kernel
of ``fused_router.launcher``, or, for the token counts where that kernel is slower
(``GEMM_PATH_TOKENS``), the same contract through a Triton prologue, cuBLAS and
the kernel's epilogue, or, for the decode token counts ``DECODE_PATH`` names, on sm_90+
NVIDIA GPUs, the CUDA C++ build of ``fused_router.cuda_decode`` it names for that count
(the Triton kernel wherever that build cannot run). Either way it returns the packed buffer of
``handover`` and records it for one claim.

The op takes no padding mask (a traced argument would be frozen into the
compiled graph): each call asks the run-time padding source
(:func:`~vllm_gemma4_router.routing.padding.checked_padding_mask`), which checks what it
returns and hands it to the kernels, which read it on the device. Padding rows
get ids -1 and weights 0, their logits as usual; a CUDA graph captured with one
mask buffer replays whatever that buffer holds.
"""

from __future__ import annotations

import os

import torch

from vllm_gemma4_router.fused_router.checks import (
    check_fused_router_inputs,
    check_fused_router_supported,
)
from vllm_gemma4_router.fused_router.handover import new_packed, record_produced, unpack
from vllm_gemma4_router.fused_router.reference import gemma4_fused_router_reference
from vllm_gemma4_router.routing.padding import checked_padding_mask

FUSED_ROUTER_OP_QUALNAME = "vllm_gemma4_router::fused_router"

_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def fused_router_into(
    hidden_states: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    is_padding: torch.Tensor | None = None,
    operand: torch.Tensor | None = None,
) -> None:
    """What the op computes, into ``out = (logits [T, E], weights, ids [T, K])``, without
    the dispatcher, the padding source or the hand-over record (benchmarks time this).
    ``is_padding``: ``None`` or a ``[T]`` bool/uint8 mask on the device (padding rows:
    ids -1, weights 0). ``operand``: the gate's operand [T, H] (``hidden_states`` normed
    and scaled as vLLM's router computes it, same dtype), where the caller has it: at the
    counts ``DECODE_PATH`` names, its tensor-core build routes it, and the logits are the
    gate's (``operand @ W.T``, fp32 accumulation, no norm of its own); every other path
    reads ``hidden_states``. Inputs unchecked."""
    if hidden_states.device.type == "cpu":
        ref = gemma4_fused_router_reference(
            hidden_states, scale, gate_weight, per_expert_scale, eps, topk, is_padding=is_padding
        )
        for target, value in zip(out, ref, strict=True):
            target.copy_(value)
        return
    from vllm_gemma4_router.fused_router.launch_table import (
        DECODE_PATH,
        GEMM_PATH_TOKENS,
        fused_launch_config,
    )
    from vllm_gemma4_router.fused_router.launcher import launch_with_config

    num_tokens, hidden = hidden_states.shape
    args = (hidden_states, scale, gate_weight, per_expert_scale, eps, topk, out)
    decode_build = DECODE_PATH.build_for(num_tokens)
    if decode_build is not None:
        from vllm_gemma4_router.fused_router.cuda_decode.launcher import launch_decode

        if operand is not None and launch_decode(
            decode_build, operand, *args[1:], is_padding=is_padding, prenormed=True
        ):
            return
        if launch_decode(decode_build, *args, is_padding=is_padding):
            return
    if num_tokens in GEMM_PATH_TOKENS:
        from vllm_gemma4_router.fused_router.gemm_path import route_by_gemm

        route_by_gemm(*args, is_padding=is_padding)
    else:
        config = fused_launch_config(num_tokens, hidden, gate_weight.shape[0], hidden_states.device)
        launch_with_config(config, *args, is_padding=is_padding)


@torch.library.custom_op(FUSED_ROUTER_OP_QUALNAME, mutates_args=())
def fused_router(
    hidden_states: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
) -> torch.Tensor:
    """Packed ``[T*(E + 2K)]`` float32: logits, weights, ids (see ``handover``);
    the padding source's rows (``current_padding_mask(T)``) with ids -1 and weights 0."""
    check_fused_router_inputs(hidden_states, scale, gate_weight, per_expert_scale, eps, topk)
    return _recorded_packed(hidden_states, scale, gate_weight, per_expert_scale, eps, topk)


def _recorded_packed(
    hidden_states: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
    operand: torch.Tensor | None = None,
) -> torch.Tensor:
    # The op's body past its input checks: the kernels' limits, the padding source's
    # mask, a new packed buffer, recorded for one claim.
    num_tokens, num_experts = hidden_states.shape[0], gate_weight.shape[0]
    if hidden_states.device.type != "cpu":  # the CPU's torch chain takes any E and K
        check_fused_router_supported(num_experts, topk)
    is_padding = checked_padding_mask(num_tokens, hidden_states.device)
    packed = new_packed(num_tokens, num_experts, topk, hidden_states.device)
    out = unpack(packed, num_tokens, num_experts, topk)
    fused_router_into(hidden_states, scale, gate_weight, per_expert_scale, eps, topk, out,
                      is_padding, operand)  # fmt: skip
    record_produced(packed, num_tokens, num_experts, topk)
    return packed


@fused_router.register_fake
def _fused_router_fake(hidden_states, scale, gate_weight, per_expert_scale, eps, topk):
    num_tokens, _, num_experts = check_fused_router_inputs(
        hidden_states, scale, gate_weight, per_expert_scale, eps, topk
    )
    return hidden_states.new_empty((num_tokens * (num_experts + 2 * topk),), dtype=torch.float32)


def fused_router_packed(
    hidden_states: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
) -> torch.Tensor:
    """The op's packed buffer, as model code calls it (the vLLM CustomOp does).

    Defined next to the op's schema on purpose: Dynamo inlines this function
    while vLLM traces the model, so vLLM hashes this file into its compile-cache
    key (``traced_files``), and a schema change invalidates compiled graphs
    that call the op (tests/integration/test_compile_cache_key.py).
    """
    return torch.ops.vllm_gemma4_router.fused_router(
        hidden_states, scale, gate_weight, per_expert_scale, eps, topk
    )


def fused_router_packed_from_operand(
    hidden_states: torch.Tensor,
    operand: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
) -> torch.Tensor:
    """The op's packed buffer where the caller also has the gate's ``operand`` (see
    :func:`fused_router_into`), with the padding source's mask and the buffer recorded
    for one claim, as the op does. For callers inside an opaque op of their own; shapes
    and dtypes checked by the caller, the kernels' limits here."""
    return _recorded_packed(hidden_states, scale, gate_weight, per_expert_scale, eps, topk, operand)


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
    routing of the returned logits). The three are views of one buffer. Rows the
    padding source marks (``vllm_gemma4_router.routing.padding``) get ids -1 and weights 0.
    """
    # Checked here too: the op's schema would reject a wrong type with a less clear error.
    num_tokens, _, num_experts = check_fused_router_inputs(
        hidden_states, scale, gate_weight, per_expert_scale, eps, topk
    )
    packed = fused_router_packed(hidden_states, scale, gate_weight, per_expert_scale, eps, topk)
    return unpack(packed, num_tokens, num_experts, topk)
