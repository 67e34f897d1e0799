"""Input checks of the fused router (reference, launcher and vLLM op).

Only tensor metadata is read here (shape, dtype, device), never values, so the
checks never force a host-device sync and are safe inside CUDA-graph capture.
"""

from __future__ import annotations

import torch

from vllm_gemma4_router.routing.checks import SCALE_DTYPES

#: Hidden-state dtypes the fused router accepts.
HIDDEN_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _check_tensor(name: str, value: object, dims: int, dtypes: tuple[torch.dtype, ...]) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {tuple(value.shape)}")
    if value.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must be one of {names}, got {value.dtype}")


def check_fused_router_inputs(
    hidden_states: object,
    scale: object,
    gate_weight: object,
    per_expert_scale: object,
    eps: object,
    topk: object,
) -> tuple[int, int, int]:
    """Validate the fused router's arguments and return ``(T, H, E)``.

    Metadata only (shape, dtype, device), like :func:`check_routing_inputs`:
    ``TypeError`` for a wrong type or dtype, ``ValueError`` for a wrong shape,
    value range or device, each naming the argument.
    """
    _check_tensor("hidden_states", hidden_states, 2, HIDDEN_DTYPES)
    num_tokens, hidden = hidden_states.shape
    if hidden < 1:
        raise ValueError(f"hidden_states must have at least one column, got H={hidden}")
    _check_tensor("scale", scale, 1, SCALE_DTYPES)
    if scale.shape[0] != hidden:
        raise ValueError(f"scale must have shape ({hidden},), got {tuple(scale.shape)}")
    _check_tensor("gate_weight", gate_weight, 2, (hidden_states.dtype,))
    if gate_weight.shape[1] != hidden:
        raise ValueError(
            f"gate_weight must be [E, H={hidden}] to match hidden_states, "
            f"got {tuple(gate_weight.shape)}"
        )
    num_experts = gate_weight.shape[0]
    if num_experts < 1:
        raise ValueError("gate_weight must have at least one expert row")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    # A SymInt when torch.compile traces with dynamic shapes (the fake implementation).
    if isinstance(topk, bool) or not isinstance(topk, (int, torch.SymInt)):
        raise TypeError(f"topk must be an int, got {type(topk).__name__} ({topk!r})")
    if not 1 <= topk <= num_experts:
        raise ValueError(f"topk must be in [1, E={num_experts}], got topk={topk}")
    if per_expert_scale is not None:
        _check_tensor("per_expert_scale", per_expert_scale, 1, SCALE_DTYPES)
        if per_expert_scale.shape[0] != num_experts:
            raise ValueError(
                f"per_expert_scale must have shape ({num_experts},) to match gate_weight, "
                f"got {tuple(per_expert_scale.shape)}"
            )
    for name, tensor in (
        ("scale", scale),
        ("gate_weight", gate_weight),
        ("per_expert_scale", per_expert_scale),
    ):
        if tensor is not None and tensor.device != hidden_states.device:
            raise ValueError(
                f"{name} is on {tensor.device} but hidden_states is on "
                f"{hidden_states.device}; all must be on the same device"
            )
    return num_tokens, hidden, num_experts


#: Largest expert count and top-K the fused router's kernel takes (one [tokens, E]
#: row tile in registers, the picks unrolled). Gemma 4 MoE models have E=128, K=8.
MAX_FUSED_EXPERTS = 256


MAX_FUSED_TOPK = 16


def fused_router_supports(num_experts: int, topk: int) -> bool:
    """Whether the fused router's kernel takes ``E`` experts and top-``K``."""
    return 1 <= topk <= min(num_experts, MAX_FUSED_TOPK) and num_experts <= MAX_FUSED_EXPERTS


def check_fused_router_supported(num_experts: int, topk: int) -> None:
    """Raise ``ValueError`` unless :func:`fused_router_supports` takes ``E`` and ``topk``."""
    if not fused_router_supports(num_experts, topk):
        raise ValueError(
            f"the fused router takes E <= {MAX_FUSED_EXPERTS} and topk <= {MAX_FUSED_TOPK}, "
            f"got E={num_experts}, topk={topk}"
        )
