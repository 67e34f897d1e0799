"""The fused Gemma 4 routing kernel (Triton).

One program routes ``TOKENS_PER_PROGRAM`` tokens; each token's ``E`` logits sit
in one tile row. Selection is ``TOPK`` rounds of a max-reduction over integer
keys that hold the logit's order in the high bits and ``BLOCK_E - 1 - id`` in
the low bits, so one reduction yields both the value and the winning id and
equal logits resolve to the lowest id. Keys are unique per row, so every round
removes exactly one expert: ids are always K distinct values in ``[0, E)``,
whatever bits the logits hold.

Key modes (``KEY_MODE``):

* ``NARROW`` - 32-bit keys, the id in the low ``log2(BLOCK_E)`` bits. Exact for
  bf16/fp16 logits: widened to fp32 they have at least 13 zero low mantissa
  bits, so no value bit is lost.
* ``WIDE`` - 64-bit keys: all 32 value bits above the id. Exact for fp32, but
  64-bit compares cost about twice the 32-bit ones.
* ``NARROW_CHECKED`` - for fp32: narrow keys, whose order can differ from the
  exact one only between logits that agree in all but the dropped low bits.
  After the rounds the kernel checks that the K+1 best keys lie in distinct
  buckets of those truncated values; in a tile where some row fails the check
  (rare for real logits) it redoes the selection with wide keys. Either way
  the result is exact.
"""

from __future__ import annotations

import triton
import triton.language as tl

NARROW = tl.constexpr(0)
WIDE = tl.constexpr(1)
NARROW_CHECKED = tl.constexpr(2)

_I32_MIN = tl.constexpr(-(2**31))
_I64_MIN = tl.constexpr(-(2**63))


@triton.jit
def _select_narrow(
    ordered,
    expert_ok,
    id_rank,
    TOPK: tl.constexpr,
    BLOCK_E: tl.constexpr,
    TOKENS: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """TOPK rounds over 32-bit keys: ids, decoded values, and whether the pick is exact."""
    keys = (ordered & -BLOCK_E) | id_rank[None, :]
    keys = tl.where(expert_ok[None, :], keys, _I32_MIN)
    slots = tl.arange(0, BLOCK_K)
    top_ids = tl.zeros([TOKENS, BLOCK_K], dtype=tl.int32)
    top_values = tl.full([TOKENS, BLOCK_K], _I32_MIN, dtype=tl.int32)
    # Two picks in one truncated-value bucket may be out of exact order.
    clash = tl.zeros([TOKENS], dtype=tl.int1)
    previous = tl.full([TOKENS], _I32_MIN, dtype=tl.int32)
    for slot in range(TOPK):
        best = tl.max(keys, axis=1)
        keys = tl.where(keys == best[:, None], _I32_MIN, keys)
        value = best & -BLOCK_E
        clash = clash | (value == previous)
        previous = value
        in_slot = slots[None, :] == slot
        top_ids = tl.where(in_slot, ((BLOCK_E - 1) - (best & (BLOCK_E - 1)))[:, None], top_ids)
        top_values = tl.where(in_slot, value[:, None], top_values)
    # The best key left out must not share the last pick's bucket either
    # (E == K leaves only removed keys, whose bucket no real value has).
    runner_up = tl.max(keys, axis=1) & -BLOCK_E
    clash = clash | (runner_up == previous)
    return top_ids, top_values, clash


@triton.jit
def _select_wide(
    ordered,
    expert_ok,
    id_rank,
    TOPK: tl.constexpr,
    BLOCK_E: tl.constexpr,
    TOKENS: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """TOPK rounds over 64-bit keys: ids and exact ordered values."""
    keys = (ordered.to(tl.int64) << 32) | id_rank.to(tl.int64)[None, :]
    keys = tl.where(expert_ok[None, :], keys, _I64_MIN)
    slots = tl.arange(0, BLOCK_K)
    top_ids = tl.zeros([TOKENS, BLOCK_K], dtype=tl.int32)
    top_values = tl.full([TOKENS, BLOCK_K], _I32_MIN, dtype=tl.int32)
    for slot in range(TOPK):
        best = tl.max(keys, axis=1)
        keys = tl.where(keys == best[:, None], _I64_MIN, keys)
        in_slot = slots[None, :] == slot
        rank = (best & (BLOCK_E - 1)).to(tl.int32)
        top_ids = tl.where(in_slot, ((BLOCK_E - 1) - rank)[:, None], top_ids)
        top_values = tl.where(in_slot, (best >> 32).to(tl.int32)[:, None], top_values)
    return top_ids, top_values


@triton.jit
def gemma4_routing_kernel(
    logits_ptr,
    scale_ptr,
    weights_ptr,
    ids_ptr,
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
    KEY_MODE: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    rows = tl.program_id(0) * TOKENS_PER_PROGRAM + tl.arange(0, TOKENS_PER_PROGRAM)
    row_ok = rows < num_tokens
    rows64 = rows.to(tl.int64)
    experts = tl.arange(0, BLOCK_E)
    expert_ok = experts < num_experts

    x = tl.load(
        logits_ptr + rows64[:, None] * stride_logit_t + experts[None, :] * stride_logit_e,
        mask=row_ok[:, None] & expert_ok[None, :],
        other=0.0,
    ).to(tl.float32)
    # NaN ranks as -inf; -0.0 becomes +0.0 so the two zeros tie (lowest id wins).
    x = tl.where(x != x, float("-inf"), x)
    x = tl.where(x == 0.0, 0.0, x)
    # Sign-magnitude float bits -> two's-complement integer with the same order.
    # Negating (instead of flipping bits) keeps zero low bits zero, which the
    # narrow keys rely on; the map is its own inverse.
    bits = x.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, -(bits & 0x7FFFFFFF), bits)
    id_rank = (BLOCK_E - 1) - experts

    if KEY_MODE == WIDE:
        top_ids, top_values = _select_wide(
            ordered, expert_ok, id_rank, TOPK, BLOCK_E, TOKENS_PER_PROGRAM, BLOCK_K
        )
    else:
        top_ids, top_values, clash = _select_narrow(
            ordered, expert_ok, id_rank, TOPK, BLOCK_E, TOKENS_PER_PROGRAM, BLOCK_K
        )
        # Kept apart: the constexpr test must not reach the runtime branch.
        if KEY_MODE == NARROW_CHECKED:  # noqa: SIM102
            if tl.max((clash & row_ok).to(tl.int32), axis=0) != 0:
                top_ids, top_values = _select_wide(
                    ordered, expert_ok, id_rank, TOPK, BLOCK_E, TOKENS_PER_PROGRAM, BLOCK_K
                )

    slots = tl.arange(0, BLOCK_K)
    slot_ok = slots < TOPK
    out_ok = row_ok[:, None] & slot_ok[None, :]
    if KEY_MODE == NARROW_CHECKED:
        # Narrow keys dropped low value bits: read the chosen logits back (L1 hits).
        top_logits = tl.load(
            logits_ptr + rows64[:, None] * stride_logit_t + top_ids * stride_logit_e,
            mask=out_ok,
            other=float("-inf"),
        ).to(tl.float32)
        top_logits = tl.where(top_logits != top_logits, float("-inf"), top_logits)
    else:
        top_bits = tl.where(top_values < 0, (-top_values) | _I32_MIN, top_values)
        top_logits = top_bits.to(tl.float32, bitcast=True)

    # Softmax over the K chosen logits equals softmax over all E followed by
    # renormalisation over the K: the full-row denominator cancels.
    top_max = tl.max(tl.where(slot_ok[None, :], top_logits, float("-inf")), axis=1)
    unnormalised = tl.where(slot_ok[None, :], tl.exp(top_logits - top_max[:, None]), 0.0)
    weights = unnormalised / tl.sum(unnormalised, axis=1)[:, None]

    if HAS_SCALE:
        scale = tl.load(scale_ptr + top_ids * stride_scale, mask=out_ok, other=1.0)
        weights = weights * scale.to(tl.float32)
    tl.store(
        weights_ptr + rows64[:, None] * stride_weight_t + slots[None, :] * stride_weight_k,
        weights,
        mask=out_ok,
    )
    tl.store(
        ids_ptr + rows64[:, None] * stride_id_t + slots[None, :] * stride_id_k,
        top_ids,
        mask=out_ok,
    )
