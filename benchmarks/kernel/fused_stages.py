"""Stage ablation of the fused router's split launch: where its decode time goes.

The split launch (``fused_router_kernel``, decode sizes) is a chain of dependent
stages. This module's kernel runs the same code as the runtime kernel, from the
same device functions, up to a chosen stage (constexpr ``STAGE``):

1. ``dot``: each program loads its ``x`` tile, scale and weight slice, does the
   dot and stores its partial sums (no counter: nothing waits for the others);
2. ``handoff``: 1 + the release/acquire counter; the last program to arrive
   resets it and stops;
3. ``gather``: 2 + that program adds the partial slices and stores the row sums
   into ``logits`` (no norm, no routing);
4. ``route``: 3 + the norm factor, the logits store and the routing: the whole
   kernel (its time should equal the runtime kernel's).

``benchmarks.kernel.bench_fused_stages`` times each stage under the same CUDA-graph set-up
as ``bench_router``; the differences between consecutive stages are the stages'
costs on the critical path (a stage can overlap the one before it, so a
difference is what it adds, not what it takes alone). Not runtime code: vLLM
never loads this module.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vllm_gemma4_router.fused_router.kernels.entry import (
    arrive_last,
    finish_rows,
    gather_partials,
    program_sums,
    store_partials,
)
from vllm_gemma4_router.fused_router.launch_table import FusedLaunchConfig, is_split
from vllm_gemma4_router.fused_router.launcher import kernel_launch
from vllm_gemma4_router.routing.kernels.select import load_scale_row

STAGES = ("dot", "handoff", "gather", "route")


@triton.jit
def fused_router_stage_kernel(
    x_ptr,
    scale_ptr,
    w_ptr,
    pes_ptr,
    logits_ptr,
    weights_ptr,
    ids_ptr,
    partial_ptr,
    partial_sumsq_ptr,
    counter_ptr,
    padding_ptr,
    num_tokens,
    hidden,
    num_experts,
    eps,
    inv_sqrt_hidden,
    stride_xt,
    stride_xh,
    stride_s,
    stride_we,
    stride_wh,
    stride_pes,
    stride_lt,
    stride_le,
    stride_wt,
    stride_wk,
    stride_it,
    stride_ik,
    TOPK: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_E_ALL: tl.constexpr,
    BLOCK_H: tl.constexpr,
    H_SLICE: tl.constexpr,
    H_SLICES: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ROUTE_T: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    OPERAND: tl.constexpr,
    PDL: tl.constexpr,
    SELECT: tl.constexpr,
    SCALE_PICK: tl.constexpr,
    HAS_PADDING: tl.constexpr,
    STAGE: tl.constexpr,
):
    # The runtime kernel's split path (gemma4_fused_router_kernel), cut after STAGE.
    # Its arguments are the runtime kernel's (kernel_launch's, no padding mask: the
    # launch passes HAS_PADDING=False and a dummy padding_ptr).
    pid_t = tl.program_id(0)
    pid_e = tl.program_id(1)
    pid_h = tl.program_id(2)
    rows64, row_ok, experts, sums, sumsq = program_sums(
        pid_t, pid_e, pid_h,
        (x_ptr, stride_xt, stride_xh, scale_ptr, stride_s, w_ptr, stride_we, stride_wh),
        num_tokens, hidden, num_experts, (BLOCK_T, BLOCK_E, BLOCK_H, OPERAND, PDL), H_SLICE,
    )  # fmt: skip
    store_partials(
        pid_e, pid_h, partial_ptr, partial_sumsq_ptr, sums, sumsq, rows64, row_ok, experts,
        num_tokens, BLOCK_E_ALL,
    )  # fmt: skip
    # A constexpr test of its own: stage 1 compiles no counter at all.
    if STAGE >= 2:  # noqa: SIM102
        if arrive_last(counter_ptr + pid_t, (BLOCK_E_ALL // BLOCK_E) * H_SLICES):
            if STAGE >= 3:
                scale_row = load_scale_row(
                    pes_ptr, stride_pes, num_experts, BLOCK_E_ALL, HAS_SCALE, SCALE_PICK
                )
                row_sums, row_sumsq = gather_partials(
                    partial_ptr, partial_sumsq_ptr, rows64, row_ok, num_tokens,
                    BLOCK_T, BLOCK_E_ALL, H_SLICES,
                )  # fmt: skip
                if STAGE == 3:
                    all_experts = tl.arange(0, BLOCK_E_ALL)
                    tl.store(
                        logits_ptr + rows64[:, None] * stride_lt + all_experts[None, :] * stride_le,
                        row_sums,
                        mask=row_ok[:, None] & (all_experts < num_experts)[None, :],
                    )
                else:
                    finish_rows(
                        row_sums, row_sumsq, pid_t * BLOCK_T, num_tokens, num_experts,
                        (hidden, eps, inv_sqrt_hidden),
                        (logits_ptr, stride_lt, stride_le, weights_ptr, stride_wt, stride_wk,
                         ids_ptr, stride_it, stride_ik),
                        padding_ptr,
                        (pes_ptr, stride_pes, scale_row),
                        (TOPK, BLOCK_E_ALL, BLOCK_K, ROUTE_T),
                        BLOCK_T,
                        (SELECT, HAS_SCALE, SCALE_PICK, HAS_PADDING),
                    )  # fmt: skip
            tl.atomic_xchg(counter_ptr + pid_t, 0)


def launch_stage(
    stage: str,
    config: FusedLaunchConfig,
    hidden_states: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    partial: torch.Tensor | None = None,
) -> None:
    """Run the split launch ``config`` up to ``stage`` (one of :data:`STAGES`) into ``out``.

    ``partial``: a ``[H_SLICES * T * BLOCK_E_ALL]`` fp32 buffer for the partial sums
    (so a test can read them); otherwise the launcher's own. Raises ``ValueError``
    for an unknown stage or a config that does not split."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    hidden, num_experts = hidden_states.shape[1], gate_weight.shape[0]
    if not is_split(config, hidden, num_experts):
        raise ValueError(f"config {config} does not split: it has no stages")
    launch = kernel_launch(
        config, hidden_states, scale, gate_weight, per_expert_scale, eps, topk, out
    )
    if launch is None:
        return
    grid, args, kwargs = launch
    if partial is not None:
        at = fused_router_stage_kernel.arg_names.index("partial_ptr")
        args = (*args[:at], partial, *args[at + 1 :])
    fused_router_stage_kernel[grid](*args, STAGE=STAGES.index(stage) + 1, **kwargs)
