"""The fused Gemma 4 routing kernel (Triton).

One program routes ``TOKENS_PER_PROGRAM`` tokens; each token's ``E`` logits sit
in one tile row. Selection is ``TOPK`` rounds of a max-reduction over integer
keys that hold the logit's order in the high bits and ``BLOCK_E - 1 - id`` in
the low bits, so one reduction yields both the value and the winning id and
equal logits resolve to the lowest id. Keys are unique per row, so every round
removes exactly one expert: ids are always K distinct values in ``[0, E)``,
whatever bits the logits hold.

Key width: 16-bit logits (bf16/fp16) widened to fp32 have at least 13 zero
low mantissa bits, so the id fits into a 32-bit key without losing any value
bit. fp32 logits need all 32 value bits, so they use 64-bit keys.
"""

from __future__ import annotations

import triton
import triton.language as tl

_I32_MIN = tl.constexpr(-(2**31))
_I64_MIN = tl.constexpr(-(2**63))


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
    WIDE_KEYS: tl.constexpr,
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
    # narrow keys rely on.
    bits = x.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, -(bits & 0x7FFFFFFF), bits)

    id_rank = (BLOCK_E - 1) - experts
    if WIDE_KEYS:
        keys = (ordered.to(tl.int64) << 32) | id_rank.to(tl.int64)[None, :]
        keys = tl.where(expert_ok[None, :], keys, _I64_MIN)
        taken = _I64_MIN
    else:
        keys = (ordered & -BLOCK_E) | id_rank[None, :]
        keys = tl.where(expert_ok[None, :], keys, _I32_MIN)
        taken = _I32_MIN

    slots = tl.arange(0, BLOCK_K)
    top_ids = tl.zeros([TOKENS_PER_PROGRAM, BLOCK_K], dtype=tl.int32)
    top_logits = tl.full([TOKENS_PER_PROGRAM, BLOCK_K], float("-inf"), dtype=tl.float32)
    for slot in range(TOPK):
        best = tl.max(keys, axis=1)
        keys = tl.where(keys == best[:, None], taken, keys)
        if WIDE_KEYS:
            rank = (best & (BLOCK_E - 1)).to(tl.int32)
            value_key = (best >> 32).to(tl.int32)
        else:
            rank = best & (BLOCK_E - 1)
            value_key = best & -BLOCK_E
        value_bits = tl.where(value_key < 0, (-value_key) | _I32_MIN, value_key)
        in_slot = slots[None, :] == slot
        top_ids = tl.where(in_slot, ((BLOCK_E - 1) - rank)[:, None], top_ids)
        top_logits = tl.where(in_slot, value_bits.to(tl.float32, bitcast=True)[:, None], top_logits)

    # Softmax over the K chosen logits equals softmax over all E followed by
    # renormalisation over the K: the full-row denominator cancels.
    slot_ok = slots < TOPK
    top_max = tl.max(top_logits, axis=1)
    unnormalised = tl.where(slot_ok[None, :], tl.exp(top_logits - top_max[:, None]), 0.0)
    weights = unnormalised / tl.sum(unnormalised, axis=1)[:, None]

    out_ok = row_ok[:, None] & slot_ok[None, :]
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
