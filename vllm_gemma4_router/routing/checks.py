"""Input checks of the routing op (reference, Triton launcher, torch.library op).

Only tensor metadata is read here (shape, dtype, device), never values, so the
checks never force a host-device sync and are safe inside CUDA-graph capture.
"""

from __future__ import annotations

import torch

#: Logit dtypes the routing accepts.
LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


#: ``per_expert_scale`` dtypes the routing accepts.
SCALE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_routing_inputs(
    gating_output: object,
    topk: object,
    per_expert_scale: object,
) -> tuple[int, int]:
    """Validate the routing arguments and return ``(T, E)``.

    Raises ``TypeError`` for a wrong type or dtype and ``ValueError`` for a
    wrong rank, shape, range or device; each message names the argument.
    """
    if not isinstance(gating_output, torch.Tensor):
        raise TypeError(f"gating_output must be a torch.Tensor, got {type(gating_output).__name__}")
    if gating_output.dim() != 2:
        raise ValueError(
            f"gating_output must be 2-D [num_tokens, num_experts], "
            f"got shape {tuple(gating_output.shape)}"
        )
    if gating_output.dtype not in LOGIT_DTYPES:
        raise TypeError(
            f"gating_output must be float32, float16 or bfloat16, got {gating_output.dtype}"
        )
    num_tokens, num_experts = gating_output.shape
    if num_experts < 1:
        raise ValueError(f"gating_output must have at least one expert column, got E={num_experts}")
    # bool is an int subclass; True as a top-k is a bug, not a request for 1.
    if isinstance(topk, bool) or not isinstance(topk, int):
        raise TypeError(f"topk must be an int, got {type(topk).__name__} ({topk!r})")
    if not 1 <= topk <= num_experts:
        raise ValueError(f"topk must be in [1, E={num_experts}], got topk={topk}")
    if per_expert_scale is not None:
        if not isinstance(per_expert_scale, torch.Tensor):
            raise TypeError(
                "per_expert_scale must be a torch.Tensor or None, "
                f"got {type(per_expert_scale).__name__}"
            )
        if tuple(per_expert_scale.shape) != (num_experts,):
            raise ValueError(
                f"per_expert_scale must have shape ({num_experts},) to match gating_output, "
                f"got {tuple(per_expert_scale.shape)}"
            )
        if per_expert_scale.dtype not in SCALE_DTYPES:
            raise TypeError(
                "per_expert_scale must be float32, float16 or bfloat16, "
                f"got {per_expert_scale.dtype}"
            )
        if per_expert_scale.device != gating_output.device:
            raise ValueError(
                f"per_expert_scale is on {per_expert_scale.device} but gating_output is on "
                f"{gating_output.device}; both must be on the same device"
            )
    return num_tokens, num_experts


def check_output(
    name: str,
    out: object,
    shape: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    """Validate a caller-provided output tensor (``topk_weights`` or ``topk_ids``)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(out).__name__}")
    if tuple(out.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(out.shape)}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {out.dtype}")
    if out.device != device:
        raise ValueError(f"{name} is on {out.device} but gating_output is on {device}")


#: ``is_padding`` dtypes the routing accepts (non-zero / True: a padding row).
PADDING_DTYPES = (torch.bool, torch.uint8)


def check_padding_mask(is_padding: object, num_tokens: int, device: torch.device) -> None:
    """Validate an optional padding mask for ``num_tokens`` rows on ``device``.

    ``None`` passes. Otherwise ``is_padding`` must be a 1-D contiguous bool or
    uint8 tensor of exactly ``num_tokens`` elements on ``device``: ``TypeError``
    for a wrong type or dtype, ``ValueError`` for a wrong rank, length, layout
    or device. Metadata only: the mask's values are never read on the host.
    """
    if is_padding is None:
        return
    if not isinstance(is_padding, torch.Tensor):
        raise TypeError(
            f"is_padding must be a torch.Tensor or None, got {type(is_padding).__name__}"
        )
    if is_padding.dim() != 1:
        raise ValueError(
            f"is_padding must be 1-D [num_tokens], got shape {tuple(is_padding.shape)}"
        )
    if is_padding.dtype not in PADDING_DTYPES:
        raise TypeError(f"is_padding must be bool or uint8, got {is_padding.dtype}")
    if is_padding.shape[0] != num_tokens:
        raise ValueError(
            f"is_padding must have {num_tokens} elements (one per token), got {is_padding.shape[0]}"
        )
    if num_tokens > 1 and is_padding.stride(0) != 1:
        raise ValueError(f"is_padding must be contiguous, got stride {is_padding.stride(0)}")
    if is_padding.device != device:
        raise ValueError(
            f"is_padding is on {is_padding.device} but the routing input is on {device}; "
            "both must be on the same device"
        )
