"""What a routing-table launch compiles, for offline compiles (``ci/offline_compile.py``,
``benchmarks/tuning/compile_resources.py``) and their checks: the runtime never needs it.

Built from the launcher's own cached plan (``routing.launcher._table_plan``), so an
offline compile is exactly what the launcher would launch for that bucket.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vllm_gemma4_router.routing.kernels.entry import gemma4_routing_kernel
from vllm_gemma4_router.routing.launch_table import LaunchConfig
from vllm_gemma4_router.routing.launcher import _config_plan, _table_plan


class CompileSpec(NamedTuple):
    """What one table launch compiles: for offline compiles (``triton.compile``) and checks."""

    #: runtime parameters in kernel order -> Triton type string (``*fp32``, ``i32``, ...)
    arg_types: dict[str, str]
    #: compile-time parameters (the kernel's ``tl.constexpr`` arguments)
    constexprs: dict[str, int | bool]
    num_warps: int


_TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def compile_spec(
    bucket: int,
    topk: int,
    num_experts: int,
    logit_dtype: torch.dtype,
    scale_dtype: torch.dtype | None,
    platform: str,
    *,
    has_padding: bool = False,
    config: LaunchConfig | None = None,
) -> CompileSpec:
    """The kernel that a launch in ``bucket`` (see ``routing.launch_table.token_bucket``) on a GPU
    ``platform`` ("cuda", "hip", "xpu") compiles, from the same plan the launcher uses.

    ``has_padding``: a launch with an ``is_padding`` mask (``*u8``, ``HAS_PADDING``);
    without one (the default) the padding pointer is the ids buffer (``*i32``), never
    read. Runtime integers are typed ``i32`` (Triton's type for ints below 2**31); the
    launcher's stride-1 / multiple-of-16 specialisations are left to the caller.
    ``config``: a launch shape to compile instead of the bucket's table row (a
    sweep's candidate), planned as the launcher plans every config."""
    if config is None:
        plan = _table_plan(
            bucket, topk, num_experts, logit_dtype, scale_dtype, platform, has_padding
        )
    else:
        plan = _config_plan(config, topk, num_experts, logit_dtype, scale_dtype, has_padding)
    constexprs = dict(plan.constexprs)
    num_warps = int(constexprs.pop("num_warps"))
    scale_type = _TRITON_TYPES[scale_dtype] if scale_dtype is not None else "fp32"
    pointers = {
        "logits_ptr": "*" + _TRITON_TYPES[logit_dtype],
        "scale_ptr": "*" + scale_type,
        "weights_ptr": "*fp32",
        "ids_ptr": "*i32",
        "padding_ptr": "*u8" if has_padding else "*i32",
    }
    names = [n for n in gemma4_routing_kernel.arg_names if n not in pointers]
    ints = {n: "i32" for n in names if n not in constexprs}
    return CompileSpec({**pointers, **ints}, constexprs, num_warps)
