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
  bf16/fp16 logits: widened to fp32 they have at least 13 low mantissa bits
  that are all zero (all one once negatives are flipped into order), so no
  value bit is lost.
* ``WIDE`` - 64-bit keys: all 32 value bits above the id. Exact for fp32, but
  about 2.5x slower than checked narrow keys (H100 sweep, 2026-11-23).
* ``NARROW_CHECKED`` - for fp32: narrow keys, whose order can differ from the
  exact one only between logits that agree in all but the dropped low bits.
  After the rounds the kernel checks that the K+1 best keys lie in distinct
  buckets of those truncated values; in a tile where some row fails the check
  (rare for real logits) it redoes the selection with wide keys. Either way
  the result is exact.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

NARROW = tl.constexpr(0)
WIDE = tl.constexpr(1)
NARROW_CHECKED = tl.constexpr(2)

_I64_MIN = tl.constexpr(-(2**63))


# The interpreter's bf16 -> fp32 conversion gets subnormals wrong (triton 3.9),
# so there bf16 is widened through its bits; GPUs convert exactly, and their
# conversion was faster at T=1 (1.70 vs 1.83 us, H100 sweep 2026-11-23).
_BF16_BY_BITS = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def _as_fp32(raw):
    """fp32 value of loaded logits (exact for every value)."""
    if _BF16_BY_BITS and raw.dtype == tl.bfloat16:
        return (raw.to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        return raw.to(tl.float32)


@triton.jit
def _narrow_keys(ordered, id_rank, BLOCK_E: tl.constexpr):
    """32-bit keys: value bits above log2(BLOCK_E), the id rank below.

    Padding columns hold -inf and the lowest id ranks, so they rank below every
    real expert (K <= E keeps them out of the picks) without a select."""
    return (ordered & -BLOCK_E) | id_rank[None, :]


@triton.jit
def _next_pick(best, keys_u):
    """The largest key below ``best`` per row (keys unique, ``keys_u`` their uint32 bits).

    With ``below = best - 1`` the map ``key -> (below - key) mod 2**32`` sends the
    keys under ``best`` to [0, 2**31 + below] in reverse order and the keys from
    ``best`` up above that range, so an unsigned min finds the next pick: one
    subtract and one min per logit, and the keys stay untouched (masking out
    each pick would cost a compare and a select more, and the integer pipe is
    what bounds this kernel: Nsight Compute, H100, 2026-11-23).
    """
    below = (best - 1).to(tl.uint32, bitcast=True)
    return (below - tl.min(below[:, None] - keys_u, axis=1)).to(tl.int32, bitcast=True)


@triton.jit
def _select_narrow(
    keys,
    id_ptrs,
    row_ok,
    stride_id_k,
    num_experts,
    TOPK: tl.constexpr,
    BLOCK_E: tl.constexpr,
    TOKENS: tl.constexpr,
):
    """TOPK rounds over 32-bit keys (see _next_pick); stores the ids, returns rows whose
    pick may be inexact."""
    keys_u = keys.to(tl.uint32, bitcast=True)
    best = tl.max(keys, axis=1)
    tl.store(id_ptrs, (BLOCK_E - 1) - (best & (BLOCK_E - 1)), mask=row_ok)
    # Two picks in one truncated-value bucket may be out of exact order.
    clash = tl.zeros([TOKENS], dtype=tl.int1)
    previous = best & -BLOCK_E
    for slot in range(1, TOPK):
        best = _next_pick(best, keys_u)
        # Each round's id goes straight to memory: collecting the K picks in a
        # [TOKENS, K] register tile would cost every lane of a row K selects a round.
        tl.store(id_ptrs + slot * stride_id_k, (BLOCK_E - 1) - (best & (BLOCK_E - 1)), mask=row_ok)
        value = best & -BLOCK_E
        clash = clash | (value == previous)
        previous = value
    # The best key left out must not share the last pick's bucket either
    # (with E == K no key is left out).
    runner_up = _next_pick(best, keys_u)
    return clash | ((num_experts > TOPK) & ((runner_up & -BLOCK_E) == previous))


@triton.jit
def _select_narrow_sorted(
    keys,
    id_ptrs,
    row_ok,
    stride_id_k,
    TOPK: tl.constexpr,
    BLOCK_E: tl.constexpr,
    SORT_K: tl.constexpr,
):
    """Same contract as _select_narrow, by one bitonic top-SORT_K of the 32-bit keys
    (SORT_K = next power of two >= K, >= K+1 when the runner-up is needed)."""
    top = tl.topk(keys, SORT_K)  # largest first
    slots = tl.arange(0, SORT_K)
    tl.store(
        id_ptrs[:, None] + slots[None, :] * stride_id_k,
        (BLOCK_E - 1) - (top & (BLOCK_E - 1)),
        mask=row_ok[:, None] & (slots < TOPK)[None, :],
    )
    # Inexact only if two of the K picks and the runner-up share a bucket.
    bucket = top & -BLOCK_E
    counted = slots <= TOPK
    pair = (slots[:, None] != slots[None, :]) & counted[:, None] & counted[None, :]
    same = (bucket[:, :, None] == bucket[:, None, :]) & pair[None, :, :]
    return tl.max(tl.max(same.to(tl.int32), axis=2), axis=1) != 0


@triton.jit
def _select_wide(
    ordered,
    id_rank,
    id_ptrs,
    row_ok,
    stride_id_k,
    TOPK: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """TOPK rounds over 64-bit keys (exact for any fp32 input); stores the ids."""
    keys = (ordered.to(tl.int64) << 32) | id_rank.to(tl.int64)[None, :]
    for slot in range(TOPK):
        best = tl.max(keys, axis=1)
        keys = tl.where(keys == best[:, None], _I64_MIN, keys)
        rank = (best & (BLOCK_E - 1)).to(tl.int32)
        tl.store(id_ptrs + slot * stride_id_k, (BLOCK_E - 1) - rank, mask=row_ok)


@triton.jit
def _chosen_logit(row_logits, id_ptrs, slot_offset, row_ok, stride_logit_e):
    """fp32 logit of each row's expert stored at ``slot_offset``; NaN read as -inf."""
    expert = tl.load(id_ptrs + slot_offset, mask=row_ok, other=0)
    logit = _as_fp32(tl.load(row_logits + expert * stride_logit_e, mask=row_ok, other=0.0))
    return tl.where(logit != logit, float("-inf"), logit)


@triton.jit
def _narrow_value(key, BLOCK_E: tl.constexpr, VALUE_MASK: tl.constexpr):
    """The fp32 logit a narrow key of a 16-bit logit holds, exactly: the bits the
    key drops are zero in a widened bf16/fp16 value (``VALUE_MASK`` keeps the rest)."""
    ordered = key & -BLOCK_E
    bits = (ordered ^ ((ordered >> 31) & 0x7FFFFFFF)) & VALUE_MASK
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _picked_logit(
    best, row_logits, row_ok, stride_logit_e, KEY_MODE: tl.constexpr, BLOCK_E: tl.constexpr
):
    """fp32 logit of each row's pick ``best`` (a narrow key); NaN read as -inf."""
    if KEY_MODE == NARROW:
        if row_logits.dtype.element_ty == tl.bfloat16:
            return _narrow_value(best, BLOCK_E, -65536)  # 0xFFFF0000
        else:
            return _narrow_value(best, BLOCK_E, -8192)  # 0xFFFFE000
    else:
        # Checked fp32 keys drop value bits: read the exact logit back (L1 hit).
        expert = (BLOCK_E - 1) - (best & (BLOCK_E - 1))
        logit = tl.load(row_logits + expert * stride_logit_e, mask=row_ok, other=0.0)
        return tl.where(logit != logit, float("-inf"), logit)


@triton.jit
def _select_narrow_in_registers(
    keys,
    row_logits,
    row_ok,
    stride_logit_e,
    num_experts,
    TOPK: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TOKENS: tl.constexpr,
    KEY_MODE: tl.constexpr,
):
    """The rounds of _select_narrow with the picks kept in [TOKENS, BLOCK_K]
    registers and the softmax sum taken as they come (same slot order, so
    bitwise the same weights as the memory path). For latency-bound launches:
    no store, barrier and reload between selection and weights.

    Returns (ids, logits, top logit, sum of exp, rows whose pick may be inexact).
    """
    slots = tl.arange(0, BLOCK_K)
    keys_u = keys.to(tl.uint32, bitcast=True)
    best = tl.max(keys, axis=1)
    top = _picked_logit(best, row_logits, row_ok, stride_logit_e, KEY_MODE, BLOCK_E)
    ids = tl.zeros([TOKENS, BLOCK_K], dtype=tl.int32)
    logits = tl.full([TOKENS, BLOCK_K], float("-inf"), dtype=tl.float32)
    total = tl.zeros([TOKENS], dtype=tl.float32)
    clash = tl.zeros([TOKENS], dtype=tl.int1)
    previous = best & -BLOCK_E
    for slot in tl.static_range(TOPK):
        if slot > 0:
            best = _next_pick(best, keys_u)
            value = best & -BLOCK_E
            clash = clash | (value == previous)
            previous = value
        logit = _picked_logit(best, row_logits, row_ok, stride_logit_e, KEY_MODE, BLOCK_E)
        total += tl.exp(logit - top)
        here = (slots == slot)[None, :]
        ids = tl.where(here, ((BLOCK_E - 1) - (best & (BLOCK_E - 1)))[:, None], ids)
        logits = tl.where(here, logit[:, None], logits)
    runner_up = _next_pick(best, keys_u)
    clash = clash | ((num_experts > TOPK) & ((runner_up & -BLOCK_E) == previous))
    return ids, logits, top, total, clash


@triton.jit
def _weights_from_stored_ids(
    row_logits,
    id_ptrs,
    row_ok,
    stride_logit_e,
    stride_id_k,
    TOPK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TOKENS: tl.constexpr,
):
    """Read this program's stored picks back and gather their logits (L1 hits):
    exact values whatever the key width. Returns (ids, logits, top logit, sum of exp)."""
    # Softmax over the K chosen logits equals softmax over all E followed by
    # renormalisation over the K: the full-row denominator cancels. The sum is
    # accumulated slot by slot, one token per lane, so its rounding does not
    # depend on the launch shape: a token gets bitwise the same weights
    # whatever batch (and launch-table bucket) it comes in.
    top = _chosen_logit(row_logits, id_ptrs, 0, row_ok, stride_logit_e)
    total = tl.zeros([TOKENS], dtype=tl.float32)
    for slot in range(TOPK):
        logit = _chosen_logit(row_logits, id_ptrs, slot * stride_id_k, row_ok, stride_logit_e)
        total += tl.exp(logit - top)
    slots = tl.arange(0, BLOCK_K)
    out_ok = row_ok[:, None] & (slots < TOPK)[None, :]
    ids = tl.load(id_ptrs[:, None] + slots[None, :] * stride_id_k, mask=out_ok, other=0)
    logits = _as_fp32(
        tl.load(row_logits[:, None] + ids * stride_logit_e, mask=out_ok, other=float("-inf"))
    )
    logits = tl.where(logits != logits, float("-inf"), logits)
    return ids, logits, top, total


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
    return tl.reshape(_as_fp32(raw), (TOKENS, BLOCK_E))


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
    SORT_K: tl.constexpr = 0,
    REGISTER_PICKS: tl.constexpr = False,
    ROW_GROUPS: tl.constexpr = 1,
):
    rows = tl.program_id(0) * TOKENS_PER_PROGRAM + tl.arange(0, TOKENS_PER_PROGRAM)
    row_ok = rows < num_tokens
    rows64 = rows.to(tl.int64)
    experts = tl.arange(0, BLOCK_E)
    expert_ok = experts < num_experts

    # Padding columns read -inf: with the lowest id ranks they rank below every real logit.
    if ROW_GROUPS == 1:
        x = _as_fp32(
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
    # maxnum returns the non-NaN operand, so NaN ranks as -inf; adding +0.0
    # turns -0.0 into +0.0 so the two zeros tie (lowest id wins). Two cheap
    # float ops instead of two compare-and-selects on the integer pipe.
    x = tl.maximum(x, float("-inf")) + 0.0
    # Sign-magnitude float bits -> two's-complement integer with the same order
    # (flip the magnitude bits of negatives). Narrow keys drop the low bits:
    # for bf16/fp16 those are 0 for positives and 1 for negatives, no value bit.
    bits = x.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    id_rank = (BLOCK_E - 1) - experts
    id_ptrs = ids_ptr + rows64 * stride_id_t

    row_logits = logits_ptr + rows64 * stride_logit_t
    slots = tl.arange(0, BLOCK_K)
    out_ok = row_ok[:, None] & (slots < TOPK)[None, :]

    if REGISTER_PICKS:
        tl.static_assert(KEY_MODE != WIDE, "register picks need narrow keys")
        keys = _narrow_keys(ordered, id_rank, BLOCK_E)
        top_ids, top_logits, top_max, total, clash = _select_narrow_in_registers(
            keys,
            row_logits,
            row_ok,
            stride_logit_e,
            num_experts,
            TOPK,
            BLOCK_E,
            BLOCK_K,
            TOKENS_PER_PROGRAM,
            KEY_MODE,
        )
        if KEY_MODE == NARROW_CHECKED:  # noqa: SIM102
            if tl.max((clash & row_ok).to(tl.int32), axis=0) != 0:
                _select_wide(ordered, id_rank, id_ptrs, row_ok, stride_id_k, TOPK, BLOCK_E)
                tl.debug_barrier()
                top_ids, top_logits, top_max, total = _weights_from_stored_ids(
                    row_logits,
                    id_ptrs,
                    row_ok,
                    stride_logit_e,
                    stride_id_k,
                    TOPK,
                    BLOCK_K,
                    TOKENS_PER_PROGRAM,
                )
        tl.store(id_ptrs[:, None] + slots[None, :] * stride_id_k, top_ids, mask=out_ok)
    else:
        if KEY_MODE == WIDE:
            _select_wide(ordered, id_rank, id_ptrs, row_ok, stride_id_k, TOPK, BLOCK_E)
        else:
            keys = _narrow_keys(ordered, id_rank, BLOCK_E)
            if SORT_K > 0:
                clash = _select_narrow_sorted(
                    keys, id_ptrs, row_ok, stride_id_k, TOPK, BLOCK_E, SORT_K
                )
            else:
                clash = _select_narrow(
                    keys,
                    id_ptrs,
                    row_ok,
                    stride_id_k,
                    num_experts,
                    TOPK,
                    BLOCK_E,
                    TOKENS_PER_PROGRAM,
                )
            # Kept apart: the constexpr test must not reach the runtime branch.
            if KEY_MODE == NARROW_CHECKED:  # noqa: SIM102
                if tl.max((clash & row_ok).to(tl.int32), axis=0) != 0:
                    tl.debug_barrier()  # the narrow pass's id stores land first
                    _select_wide(ordered, id_rank, id_ptrs, row_ok, stride_id_k, TOPK, BLOCK_E)
        # The barrier makes every thread's id stores visible to the reads.
        tl.debug_barrier()
        top_ids, top_logits, top_max, total = _weights_from_stored_ids(
            row_logits,
            id_ptrs,
            row_ok,
            stride_logit_e,
            stride_id_k,
            TOPK,
            BLOCK_K,
            TOKENS_PER_PROGRAM,
        )

    weights = tl.exp(top_logits - top_max[:, None]) / total[:, None]
    if HAS_SCALE:
        scale = tl.load(scale_ptr + top_ids * stride_scale, mask=out_ok, other=1.0)
        weights = weights * _as_fp32(scale)
    tl.store(
        weights_ptr + rows64[:, None] * stride_weight_t + slots[None, :] * stride_weight_k,
        weights,
        mask=out_ok,
    )
