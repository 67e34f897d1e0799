"""The fused router where its own kernels win, vLLM's gate and the routing chain elsewhere.

The one-launch fused router is ahead of the plugin's default chain only at some token
counts; where vLLM's gate has a vendor GEMM (``ll_bf16_gemm`` at T <= 16 on Hopper with
vLLM >= 0.26, cuBLAS at large T) and Inductor fuses the router's norm into the layer
tail, the chain wins. Which counts are which is measured data: the fused-router policy
row's ``own_kernel_tokens`` (``op_policy.fused_router_own_tokens``).

``torch.ops.vllm_gemma4_router.fused_router_or_gate`` takes both the router's input
``h`` and the gate's operand ``x' = norm(h) * H**-0.5 * scale``, which the patched
router computes in traced code exactly as vLLM's ``Gemma4Router.forward`` does (so
Inductor fuses it as in vLLM's own graph). It is opaque to torch.compile, so the
choice is made per call, with that call's token count (vLLM traces once, at
``max_num_tokens``, and drops every guard):

* a count in the gate's ``own_kernel_tokens``: the fused router's one-launch build on
  ``x'`` where the decode path takes the count (its logits the gate's own, no second
  norm), else the fused router op on ``h``; the logits returned are the logits view of
  its packed buffer, which the routing function then claims (``fused_router.handover``);
* any other count: the gate's own class ``forward`` on ``x'`` (vLLM's tiers, chosen
  for this count); the routing function finds nothing to claim and routes the
  logits with the plugin's routing op, as in the default chain.

The op finds its gate as ``gate_tier`` does, by a name registered in the compilation
config's static forward context.
"""

from __future__ import annotations

import torch

from vllm_gemma4_router.fused_router import torch_library as fused_library
from vllm_gemma4_router.fused_router.checks import check_fused_router_inputs
from vllm_gemma4_router.fused_router.handover import logits_view, record_unrouted
from vllm_gemma4_router.integration.gate_tier import checked_gate_output

FUSED_OR_GATE_OP_QUALNAME = "vllm_gemma4_router::fused_router_or_gate"

#: Suffix of the name a fused router's gate is registered under (its vLLM prefix +
#: this): apart from the gate tier's and from every name vLLM registers itself.
REGISTERED_NAME_SUFFIX = ".gemma4_fused_gate"

#: The attribute of a registered gate holding its ``own_kernel_tokens`` ranges.
OWN_TOKENS_ATTRIBUTE = "_gemma4_own_kernel_tokens"

TokenRanges = tuple[tuple[int, int | None], ...]


def takes_own_kernel(num_tokens: int, own_tokens: TokenRanges) -> bool:
    """Whether ``num_tokens`` falls in one of the inclusive ranges ``own_tokens``
    (``last`` ``None``: unbounded)."""
    return any(
        first <= num_tokens and (last is None or num_tokens <= last) for first, last in own_tokens
    )


def register_gate(gate: torch.nn.Module, context: dict, own_tokens: TokenRanges) -> str:
    """Register ``gate`` (vLLM's gate of a fused router, unchanged) in the static forward
    ``context`` with the token counts its router's own kernels take; returns its name.
    A name already there is refused with vLLM's own ``ValueError``."""
    name = f"{gate.prefix}{REGISTERED_NAME_SUFFIX}"
    if name in context:
        raise ValueError(f"Duplicate layer name: {name}")
    gate.__dict__[OWN_TOKENS_ATTRIBUTE] = tuple(own_tokens)
    context[name] = gate
    return name


def registered_gate(layer_name: str) -> torch.nn.Module:
    """The gate registered as ``layer_name`` in the running model's forward context."""
    from vllm.forward_context import get_forward_context

    gate = get_forward_context().no_compile_layers.get(layer_name)
    if gate is None or not hasattr(gate, OWN_TOKENS_ATTRIBUTE):
        raise KeyError(f"no fused router's gate registered as {layer_name!r}")
    return gate


def _check_x_gate(hidden_states: torch.Tensor, x_gate: torch.Tensor) -> None:
    if not isinstance(x_gate, torch.Tensor):
        raise TypeError(f"x_gate must be a tensor, got {type(x_gate).__name__}")
    if x_gate.shape != hidden_states.shape or x_gate.dtype != hidden_states.dtype:
        raise ValueError(
            f"x_gate must match hidden_states: {tuple(x_gate.shape)} {x_gate.dtype} against "
            f"{tuple(hidden_states.shape)} {hidden_states.dtype}"
        )


@torch.library.custom_op(FUSED_OR_GATE_OP_QUALNAME, mutates_args=())
def _fused_router_or_gate(
    hidden_states: torch.Tensor,
    x_gate: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
    layer_name: str,
) -> torch.Tensor:
    num_tokens, _, num_experts = check_fused_router_inputs(
        hidden_states, scale, gate_weight, per_expert_scale, eps, topk
    )
    _check_x_gate(hidden_states, x_gate)
    gate = registered_gate(layer_name)
    if takes_own_kernel(num_tokens, getattr(gate, OWN_TOKENS_ATTRIBUTE)):
        # x_gate is already normed and scaled: where a one-launch build takes it, no second
        # norm, and its logits round as the gate's do
        packed = fused_library.fused_router_packed_from_operand(
            hidden_states, x_gate.contiguous(), scale, gate_weight, per_expert_scale, eps, topk
        )
        return logits_view(packed, num_tokens, num_experts)
    # The gate's own class forward: vLLM's tier branches run here, with this call's T.
    output, bias = type(gate).forward(gate, x_gate.contiguous())
    checked_gate_output(output, bias, layer_name, num_tokens, num_experts)
    record_unrouted(output)
    return output


@_fused_router_or_gate.register_fake
def _fused_router_or_gate_fake(
    hidden_states, x_gate, scale, gate_weight, per_expert_scale, eps, topk, layer_name
):
    num_tokens, _, num_experts = check_fused_router_inputs(
        hidden_states, scale, gate_weight, per_expert_scale, eps, topk
    )
    _check_x_gate(hidden_states, x_gate)  # while tracing, as the op does per call
    return hidden_states.new_empty((num_tokens, num_experts), dtype=torch.float32)


def fused_router_or_gate(
    hidden_states: torch.Tensor,
    x_gate: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
    layer_name: str,
) -> torch.Tensor:
    """Router logits ``[T, E]`` fp32 for ``hidden_states`` ``[T, H]``: from the fused router
    (routing done, claimable) where the gate registered as ``layer_name`` says its own
    kernels take ``T``, else from that gate's own forward on ``x_gate`` ``[T, H]`` (the
    router's normed and scaled operand, same dtype), routed later by the routing op.
    Same contract on either side: logits within fp32 GEMM tolerance of the fp64 chain;
    weights and ids the routing of the returned logits (lowest id on ties).

    Defined next to the op's schema on purpose: Dynamo inlines this function while
    vLLM traces the model, so this file is in vLLM's compile-cache key.
    """
    return torch.ops.vllm_gemma4_router.fused_router_or_gate(
        hidden_states, x_gate, scale, gate_weight, per_expert_scale, eps, topk, layer_name
    )
