"""Host-side launcher of the fused routing kernel."""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch

from vllm_gemma4_router.routing.checks import check_output, check_padding_mask, check_routing_inputs
from vllm_gemma4_router.routing.compiled_launches import CompiledLaunches
from vllm_gemma4_router.routing.kernels import entry as _kernel
from vllm_gemma4_router.routing.kernels.entry import gemma4_routing_kernel
from vllm_gemma4_router.routing.kernels.select import ROUTING_FP32_SELECT_VALUES, SCALE_PICK_VALUES
from vllm_gemma4_router.routing.launch_table import (
    MAX_EXPERTS,
    LaunchConfig,
    bucket_launch_config,
    check_launch_config,
    pick_launch_config,
    token_bucket,
)

# triton.jit reads this once, when the kernel is decorated (import time).
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


_LAUNCHES = CompiledLaunches(gemma4_routing_kernel)

# torch.version.hip is fixed for the process: read once, not on every call.
_GPU_PLATFORMS = {"cuda": "hip" if torch.version.hip is not None else "cuda", "xpu": "xpu"}


def _platform_of(device: torch.device) -> str:
    if _INTERPRETED and device.type == "cpu":
        return "interpreter"
    return _GPU_PLATFORMS.get(device.type, "cuda")


def gemma4_routing_triton(
    gating_output: torch.Tensor,
    topk: int,
    per_expert_scale: torch.Tensor | None = None,
    *,
    topk_weights: torch.Tensor | None = None,
    topk_ids: torch.Tensor | None = None,
    is_padding: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma 4 routing in one Triton kernel launch.

    Same contract as :func:`vllm_gemma4_router.gemma4_routing_reference`:
    softmax over all E logits in fp32, top-``topk``, renormalise to sum 1,
    multiply by ``per_expert_scale[id]``; rows ordered by unscaled weight
    descending, equal logits lowest expert id first, NaN logits ranked as -inf.

    Args:
        gating_output: ``[T, E]`` float32/float16/bfloat16 on a GPU (or on the CPU
            under ``TRITON_INTERPRET=1``); any strides, never copied. ``E <= 4096``.
        topk: experts per token, ``1 <= topk <= E``.
        per_expert_scale: ``[E]`` float tensor on the same device, or ``None`` for 1.
        topk_weights: optional preallocated float32 ``[T, topk]`` output.
        topk_ids: optional preallocated int32 ``[T, topk]`` output.
        is_padding: optional 1-D contiguous bool/uint8 ``[T]`` mask on the logits'
            device, non-zero (True) for a padding row (CUDA-graph / data-parallel
            padding). Read by the kernel on the device: no host sync, and a
            CUDA graph captured with one mask replays correctly after the buffer
            is rewritten in place. ``None``: no padding row.

    Returns:
        ``(topk_weights, topk_ids)``, float32 and int32, ``[T, topk]``. Ids are
        always ``topk`` distinct values in ``[0, E)``, for any input bits, except
        in a padding row: ids ``-1`` (padding row: no expert; vLLM's dispatch and
        experts skip id -1) and weights ``0.0``. The other rows are bit for bit
        what they are without a mask.
    """
    num_tokens, num_experts = check_routing_inputs(gating_output, topk, per_expert_scale)
    check_padding_mask(is_padding, num_tokens, gating_output.device)
    if num_experts > MAX_EXPERTS:
        raise ValueError(
            f"gating_output has E={num_experts} experts; the Triton kernel supports "
            f"E <= {MAX_EXPERTS} (use gemma4_routing_reference for more)"
        )
    device = gating_output.device
    if device.type == "cpu" and not _INTERPRETED:
        raise ValueError(
            "gating_output is a CPU tensor; the Triton kernel needs a GPU tensor "
            "(or TRITON_INTERPRET=1 set before import). Use gemma4_routing_reference on CPU."
        )
    shape = (num_tokens, topk)
    if topk_weights is None:
        topk_weights = torch.empty(shape, dtype=torch.float32, device=device)
    else:
        check_output("topk_weights", topk_weights, shape, torch.float32, device)
    if topk_ids is None:
        topk_ids = torch.empty(shape, dtype=torch.int32, device=device)
    else:
        check_output("topk_ids", topk_ids, shape, torch.int32, device)
    if num_tokens == 0:
        return topk_weights, topk_ids

    platform = _platform_of(device)
    scale_dtype = None if per_expert_scale is None else per_expert_scale.dtype
    has_padding = is_padding is not None
    if platform == "interpreter":  # its tile depends on T itself, not on a bucket
        block_e = 1 << (num_experts - 1).bit_length()
        config = pick_launch_config(num_tokens, block_e, platform, topk=topk)
        plan = _config_plan(
            config, topk, num_experts, gating_output.dtype, scale_dtype, has_padding
        )
    else:
        plan = _table_plan(
            token_bucket(num_tokens),
            topk,
            num_experts,
            gating_output.dtype,
            scale_dtype,
            platform,
            has_padding,
        )
    _launch_plan(plan, gating_output, per_expert_scale, topk_weights, topk_ids, is_padding, device)
    return topk_weights, topk_ids


def launch(
    gating_output: torch.Tensor,
    topk: int,
    per_expert_scale: torch.Tensor | None,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    config: LaunchConfig,
    *,
    is_padding: torch.Tensor | None = None,
) -> None:
    """Launch the kernel on checked arguments with an explicit shape (sweeps call this).

    ``is_padding`` is the optional padding mask of :func:`gemma4_routing_triton`
    (checked here). Raises ``ValueError`` if ``config`` cannot run as written
    (``check_launch_config``)."""
    if is_padding is not None:
        check_padding_mask(is_padding, gating_output.shape[0], gating_output.device)
    scale_dtype = None if per_expert_scale is None else per_expert_scale.dtype
    plan = _config_plan(
        config,
        topk,
        gating_output.shape[1],
        gating_output.dtype,
        scale_dtype,
        is_padding is not None,
    )
    _launch_plan(
        plan,
        gating_output,
        per_expert_scale,
        topk_weights,
        topk_ids,
        is_padding,
        gating_output.device,
    )


class _Plan(NamedTuple):
    """Everything about a launch that does not change from call to call of one shape class."""

    tokens_per_program: int
    constexprs: dict[str, int | bool]
    #: small hashable stand-in for the constexprs and dtypes (compiled_launches' cache key)
    class_key: int


# The eager decode path runs this per call and per layer: everything that
# depends only on the shape class is looked up once per class (~3 us less host
# time per call than rebuilding it).
@functools.lru_cache(maxsize=1024)
def _table_plan(
    bucket: int,
    topk: int,
    num_experts: int,
    logit_dtype: torch.dtype,
    scale_dtype: torch.dtype | None,
    platform: str,
    has_padding: bool = False,
) -> _Plan:
    block_e = 1 << (num_experts - 1).bit_length()
    config = bucket_launch_config(bucket, block_e, platform, logit_dtype == torch.float32, topk)
    return _config_plan(config, topk, num_experts, logit_dtype, scale_dtype, has_padding)


@functools.lru_cache(maxsize=1024)
def _config_plan(
    config: LaunchConfig,
    topk: int,
    num_experts: int,
    logit_dtype: torch.dtype,
    scale_dtype: torch.dtype | None,
    has_padding: bool = False,
) -> _Plan:
    constexprs = _compile_time_args(
        topk, num_experts, config, logit_dtype, scale_dtype is not None, has_padding
    )
    # The scale pointer stands in for weights (fp32) when there is no scale; the
    # padding pointer is uint8 with a mask, else ids (int32): has_padding covers both.
    class_id = (topk, num_experts, config, logit_dtype, scale_dtype or torch.float32, has_padding)
    class_key = _CLASS_KEYS.setdefault(class_id, len(_CLASS_KEYS))
    return _Plan(config.tokens_per_program, constexprs, class_key)


_CLASS_KEYS: dict[tuple, int] = {}


def _launch_plan(
    plan: _Plan,
    gating_output: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    is_padding: torch.Tensor | None,
    device: torch.device,
) -> None:
    num_tokens, num_experts = gating_output.shape
    if per_expert_scale is None:
        scale_arg, scale_stride = topk_weights, 0  # never read (HAS_SCALE=False)
    else:
        scale_arg, scale_stride = per_expert_scale, per_expert_scale.stride(0)
    if is_padding is None:
        padding_arg = topk_ids  # never read (HAS_PADDING=False)
    elif is_padding.dtype == torch.bool:
        padding_arg = is_padding.view(torch.uint8)  # metadata only: one specialisation
    else:
        padding_arg = is_padding
    tensors = (gating_output, scale_arg, topk_weights, topk_ids, padding_arg)
    ints = (
        num_tokens,
        num_experts,
        *gating_output.stride(),
        scale_stride,
        *topk_weights.stride(),
        *topk_ids.stride(),
    )
    grid_x = -(-num_tokens // plan.tokens_per_program)
    if device.type != "cuda":  # interpreter (cpu), xpu: Triton's own launch path
        gemma4_routing_kernel[(grid_x,)](*tensors, *ints, **plan.constexprs)
    else:
        _LAUNCHES.launch(grid_x, device.index, tensors, ints, plan.constexprs, plan.class_key)


def _compile_time_args(
    topk: int,
    num_experts: int,
    config: LaunchConfig,
    logit_dtype: torch.dtype,
    has_scale: bool,
    has_padding: bool = False,
) -> dict[str, int | bool]:
    """The kernel's constexprs for ``config``, which runs as written (or raises)."""
    # Runs once per shape class: the plans that call it are cached.
    block_e = 1 << (num_experts - 1).bit_length()
    check_launch_config(config, block_e, logit_dtype.itemsize, topk)
    fp32 = logit_dtype == torch.float32
    return dict(
        TOPK=topk,
        BLOCK_E=block_e,
        BLOCK_K=1 << (topk - 1).bit_length(),
        TOKENS_PER_PROGRAM=config.tokens_per_program,
        SELECT=ROUTING_FP32_SELECT_VALUES[config.fp32_select] if fp32 else int(_kernel.NARROW),
        HAS_SCALE=has_scale,
        REGISTER_PICKS=config.register_picks,
        ROW_GROUPS=config.row_groups,
        SCALE_PICK=SCALE_PICK_VALUES[config.scale_pick],
        VALUES_BY_REDUCTION=config.values_by_reduction and fp32,
        HAS_PADDING=has_padding,
        num_warps=config.num_warps,
    )
