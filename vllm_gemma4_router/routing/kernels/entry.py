"""The fused Gemma 4 routing kernel (Triton): entry point.

One program routes ``TOKENS_PER_PROGRAM`` tokens; each token's ``E`` logits sit
in one tile row (``ROW_GROUPS`` > 1 loads a row in pieces, see
``_load_rows_grouped``). ``SELECT`` names the top-K strategy of
``kernel_select``: ``NARROW`` for bf16/fp16 logits, ``CHECKED``, ``CHECKED_ROWS`` or ``EXACT`` for
fp32. Whatever the strategy and the input bits, the ids are K distinct experts
in ``[0, E)``, equal logits go to the lowest id, rows come out sorted by
weight, and a token's weights do not depend on the batch it comes in.

``HAS_PADDING`` adds a per-token padding mask (``padding_ptr``, one uint8 per
token, non-zero: a padding row), read on the device: a padding row gets ids
``-1`` (no expert; vLLM's dispatch and experts skip id -1) and weights ``0.0``,
its logits are never read, and every other row is bit-for-bit what it is
without a mask. Without it (``HAS_PADDING=False``) the constexpr removes all of
this and ``padding_ptr`` is never read (the launcher passes any pointer).
"""

from __future__ import annotations

import triton
import triton.language as tl

from vllm_gemma4_router.routing.kernels.keys import as_fp32, canonical, narrow_keys, ordered_bits
from vllm_gemma4_router.routing.kernels.select import (
    CHECKED,
    CHECKED_ROWS,
    EXACT,
    NARROW,
    SCALE_AFTER,
    load_scale_row,
    select_exact_memory,
    select_narrow_memory,
    select_registers,
    weights_from_stored_ids,
)

__all__ = ["CHECKED", "CHECKED_ROWS", "EXACT", "NARROW", "gemma4_routing_kernel"]


@triton.jit
def _load_rows_grouped(
    logits_ptr,
    rows64,
    row_ok,
    num_experts,
    stride_logit_t,
    stride_logit_e,
    BLOCK_E: tl.constexpr,
    TOKENS: tl.constexpr,
    GROUPS: tl.constexpr,
):
    """The [TOKENS, BLOCK_E] logits, loaded as [TOKENS, GROUPS, BLOCK_E // GROUPS].

    Triton lays a load out from its fastest axis outwards: a plain row of 128
    bf16 logits spreads over 16 lanes (8 per 16-byte load). With the row cut
    into GROUPS pieces, the lanes left after the piece go to the tokens and a
    row's pieces stay in one lane's registers: 128 / GROUPS / 8 lanes per row.
    Every round's min then has fewer shuffle steps and the per-row work runs
    for several rows in one instruction (H100 SASS, triton 3.6, bf16, 8 tokens:
    about 1000 instructions per program instead of 1430). The reshape keeps
    the element order, so column j is still expert j."""
    WIDTH: tl.constexpr = BLOCK_E // GROUPS
    group = tl.arange(0, GROUPS)[None, :, None]
    column = tl.arange(0, WIDTH)[None, None, :]
    expert = group * WIDTH + column
    raw = tl.load(
        logits_ptr + rows64[:, None, None] * stride_logit_t + expert * stride_logit_e,
        mask=row_ok[:, None, None] & (expert < num_experts),
        other=float("-inf"),
    )
    return tl.reshape(as_fp32(raw), (TOKENS, BLOCK_E))


@triton.jit
def gemma4_routing_kernel(
    logits_ptr,
    scale_ptr,
    weights_ptr,
    ids_ptr,
    padding_ptr,
    num_tokens,
    num_experts,
    stride_logit_t,
    stride_logit_e,
    stride_scale,
    stride_weight_t,
    stride_weight_k,
    stride_id_t,
    stride_id_k,
    TOPK: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TOKENS_PER_PROGRAM: tl.constexpr,
    SELECT: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    REGISTER_PICKS: tl.constexpr,
    ROW_GROUPS: tl.constexpr,
    SCALE_PICK: tl.constexpr,
    VALUES_BY_REDUCTION: tl.constexpr,
    HAS_PADDING: tl.constexpr,
):
    rows = tl.program_id(0) * TOKENS_PER_PROGRAM + tl.arange(0, TOKENS_PER_PROGRAM)
    row_ok = rows < num_tokens
    rows64 = rows.to(tl.int64)
    if HAS_PADDING:
        # Padding rows leave the routing (row_ok false: nothing of theirs is read
        # or written there) and get their -1 / 0 outputs at the stores.
        in_range = row_ok
        padding_byte = tl.load(padding_ptr + rows64, mask=in_range, other=0)
        padding = padding_byte != 0
        row_ok = in_range & (padding_byte == 0)
    experts = tl.arange(0, BLOCK_E)
    expert_ok = experts < num_experts

    # Padding columns read -inf: with the highest ids they lose every tie.
    if ROW_GROUPS == 1:
        x = as_fp32(
            tl.load(
                logits_ptr + rows64[:, None] * stride_logit_t + experts[None, :] * stride_logit_e,
                mask=row_ok[:, None] & expert_ok[None, :],
                other=float("-inf"),
            )
        )
    else:
        x = _load_rows_grouped(
            logits_ptr,
            rows64,
            row_ok,
            num_experts,
            stride_logit_t,
            stride_logit_e,
            BLOCK_E,
            TOKENS_PER_PROGRAM,
            ROW_GROUPS,
        )
    ordered = ordered_bits(canonical(x))
    scale_row = load_scale_row(scale_ptr, stride_scale, num_experts, BLOCK_E, HAS_SCALE, SCALE_PICK)
    id_ptrs = ids_ptr + rows64 * stride_id_t
    row_logits = logits_ptr + rows64 * stride_logit_t
    slots = tl.arange(0, BLOCK_K)
    out_ok = row_ok[:, None] & (slots < TOPK)[None, :]
    store_ok = out_ok
    if HAS_PADDING:
        store_ok = in_range[:, None] & (slots < TOPK)[None, :]

    if REGISTER_PICKS:
        ids, logits, scales, top, total = select_registers(
            ordered,
            (experts, expert_ok, num_experts),
            row_ok,
            (row_logits, stride_logit_e),
            (id_ptrs, stride_id_k),
            (
                logits_ptr,
                ids_ptr,
                (tl.program_id(0) * TOKENS_PER_PROGRAM).to(tl.int64),
                stride_logit_t,
                stride_id_t,
            ),
            (scale_ptr, stride_scale, scale_row),
            (TOPK, BLOCK_E, BLOCK_K, TOKENS_PER_PROGRAM),
            SELECT,
            logits_ptr.dtype.element_ty == tl.bfloat16,
            VALUES_BY_REDUCTION,
            (HAS_SCALE, SCALE_PICK),
        )
        tl.store(id_ptrs[:, None] + slots[None, :] * stride_id_k, ids, mask=out_ok)
    else:
        if SELECT == NARROW:
            keys = narrow_keys(ordered, (BLOCK_E - 1) - experts, BLOCK_E)
            select_narrow_memory(keys, id_ptrs, row_ok, stride_id_k, TOPK, BLOCK_E)
        else:
            select_exact_memory(ordered, experts, id_ptrs, row_ok, stride_id_k, TOPK, BLOCK_E)
        # Every thread's id stores must be visible to the reads.
        tl.debug_barrier()
        ids, logits, top, total = weights_from_stored_ids(
            row_logits,
            id_ptrs,
            row_ok,
            stride_logit_e,
            stride_id_k,
            TOPK,
            BLOCK_K,
            TOKENS_PER_PROGRAM,
        )
        scales = tl.full([TOKENS_PER_PROGRAM, BLOCK_K], 1.0, dtype=tl.float32)

    weights = tl.exp(logits - top[:, None]) / total[:, None]
    if HAS_SCALE:
        if SCALE_PICK == SCALE_AFTER or not REGISTER_PICKS:
            scales = as_fp32(tl.load(scale_ptr + ids * stride_scale, mask=out_ok, other=1.0))
        weights = weights * scales
    if HAS_PADDING:
        weights = tl.where(padding[:, None], 0.0, weights)
    tl.store(
        weights_ptr + rows64[:, None] * stride_weight_t + slots[None, :] * stride_weight_k,
        weights,
        mask=store_ok,
    )
    if HAS_PADDING:
        # A store of its own, not a tl.where on the ids: that one took up to 72 more
        # registers (sm_90, bf16, large buckets). The selection stored and read back
        # only the other rows' ids (row_ok), so no thread reads these.
        tl.store(
            id_ptrs[:, None] + slots[None, :] * stride_id_k,
            tl.full([TOKENS_PER_PROGRAM, BLOCK_K], -1, dtype=tl.int32),
            mask=padding[:, None] & (slots < TOPK)[None, :],
        )
