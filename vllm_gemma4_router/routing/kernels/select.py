"""Top-K selection strategies of the routing kernel (Triton device functions), which
the fused router's kernels route with too (``select_registers``, ``load_scale_row``).

Each routes a ``[TOKENS, BLOCK_E]`` tile, one token per row, in ``TOPK``
dependent rounds of one row reduction each (on sm_90 a 32-bit integer min or
max over a warp is a single ``REDUX``). They differ in what a round reduces:

* **narrow** (``select_narrow_*``): one max/min over narrow keys per round
  (``kernel_keys``): value and lowest id in one reduction. Exact for 16-bit
  logits, whose keys keep every value bit.
* **checked** (narrow rounds on fp32 logits, then ``last_bucket_overtaken`` and
  ``exact_order``): fp32 keys drop low value bits, so two picks in one bucket may
  come out by id instead of by value. Only such a bucket can be wrong, and only
  in two ways: its picks out of value order (fixed in registers by
  ``exact_order``) or, for the last pick's bucket, an unpicked member worth more
  than a picked one (then the tile takes the exact rounds). Equal values are
  never a fault: their id order is the one wanted.
* **exact** (``select_exact_*``): a max over the exact ordered value, then a min
  over the ids holding it: two reductions a round, exact for any fp32 input.
* **checked rows** (``CHECKED_ROWS``, ``repair_checked_rows``; only the routing
  kernel's table names it): the checked rounds, but a faulty row is redone alone from memory
  (``redo_row_exact``, a ``[BLOCK_E]`` vector) instead of the tile-wide repair,
  whose tiles set every program's register allocation (sm_90, Triton 3.6, 8 fp32
  rows of 128 per warp: 96 registers instead of 138).

Register variants keep the K picks in ``[TOKENS, BLOCK_K]`` tiles and sum the
softmax as they come; memory variants store each round's id (for large K, whose
unrolled rounds would not fit in registers) and the weights read them back.
Every variant sums ``exp(logit - top)`` over the picks in their final order, so
a token gets bitwise the same weights whatever variant and tile it goes through.

Arguments that travel together go as tuples (``docs/kernel-arguments.md``); the
functions with the most parameters take these groups:

* ``TILE``: ``(TOPK, BLOCK_E, BLOCK_K, TOKENS)``, the tile's shape (constexprs);
* ``SCALING``: ``(HAS_SCALE, SCALE_PICK)`` (constexprs);
* ``scale``: ``(scale_ptr, stride_scale, scale_row)``, the ``per_expert_scale`` and
  ``load_scale_row``'s row;
* ``columns``: ``(experts, expert_ok, num_experts)``: column ids, their mask, E;
* ``logit_rows``: ``(row_logits, stride_logit_e)``, each row's logits in memory;
* ``id_rows``: ``(id_ptrs, stride_id_k)``, each row's id output;
* ``first_rows``: ``(logits_ptr, ids_ptr, first, stride_logit_t, stride_id_t)``, the
  logits and ids from the program's first row (int64) on, to address one row.

Constexpr groups (upper case) are built as tuple literals in the call (or passed
on as received) and read with ``NAME: tl.constexpr = GROUP[i]``; every group is
read by index, never unpacked (``a, b = group``). Triton's compiler (3.3 to 3.9)
keeps the constexprs constexpr only that way.
"""

from __future__ import annotations

import triton
import triton.language as tl

from vllm_gemma4_router.routing.kernels.keys import (
    TAKEN,
    as_fp32,
    canonical,
    key_bucket,
    key_expert,
    narrow_key_logit,
    narrow_keys,
    next_below,
    ordered_bits,
    ordered_to_fp32,
)

#: The top-K strategy (constexpr ``SELECT``): see the module docstring.
NARROW = tl.constexpr(0)
CHECKED = tl.constexpr(1)
EXACT = tl.constexpr(2)
#: The checked rounds with a row-at-a-time repair (``repair_checked_rows``): no
#: ``[TOKENS, BLOCK_E]`` tile beyond the rounds' keys.
CHECKED_ROWS = tl.constexpr(3)

#: How each pick's ``per_expert_scale`` is fetched (constexpr ``SCALE_PICK``).
SCALE_AFTER = tl.constexpr(0)  # one gather with the final ids, after selection
SCALE_PER_PICK = tl.constexpr(1)  # a gather right after each pick (overlaps later rounds)
SCALE_IN_ROW = tl.constexpr(2)  # the scale row loaded with the logits, picked by a reduction

#: Launch configs' names for the fp32 ``SELECT`` values and the ``SCALE_PICK`` values.
FP32_SELECT_VALUES = {"checked": CHECKED.value, "exact": EXACT.value}
#: The routing kernel's: these and the row-at-a-time repair, which no sweep of the
#: fused router's kernels has checked or timed (its table takes the two above).
ROUTING_FP32_SELECT_VALUES = {**FP32_SELECT_VALUES, "checked_rows": CHECKED_ROWS.value}
SCALE_PICK_VALUES = {
    "after": SCALE_AFTER.value,
    "per_pick": SCALE_PER_PICK.value,
    "in_row": SCALE_IN_ROW.value,
}


@triton.jit
def load_scale_row(
    scale_ptr,
    stride_scale,
    num_experts,
    BLOCK_E: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    SCALE_PICK: tl.constexpr,
):
    """The ``per_expert_scale`` row [BLOCK_E] as int32 bits when ``SCALE_PICK`` picks
    from it (``SCALE_IN_ROW``; padding 1.0), else zeros: load it before the work it
    can overlap."""
    experts = tl.arange(0, BLOCK_E)
    if HAS_SCALE and SCALE_PICK == SCALE_IN_ROW:
        row = tl.load(scale_ptr + experts * stride_scale, mask=experts < num_experts, other=1.0)
        return as_fp32(row).to(tl.int32, bitcast=True)
    else:
        return tl.zeros([BLOCK_E], dtype=tl.int32)


@triton.jit
def pick_scale(
    expert,
    hit,
    scale_ptr,
    stride_scale,
    scale_row,
    row_ok,
    HAS_SCALE: tl.constexpr,
    SCALE_PICK: tl.constexpr,
):
    """fp32 scale of each row's pick (``expert``; ``hit`` marks its column), or 1."""
    if HAS_SCALE and SCALE_PICK == SCALE_PER_PICK:
        return as_fp32(tl.load(scale_ptr + expert * stride_scale, mask=row_ok, other=1.0))
    elif HAS_SCALE and SCALE_PICK == SCALE_IN_ROW:
        # The bits as int32: the one selected value wins an integer max (REDUX).
        bits = tl.max(tl.where(hit, scale_row[None, :], TAKEN), axis=1)
        return bits.to(tl.float32, bitcast=True)
    else:
        return tl.full(expert.shape, 1.0, tl.float32)


@triton.jit
def _narrow_pick_logit(
    best,
    hit,
    ordered,
    row_logits,
    row_ok,
    stride_logit_e,
    BLOCK_E: tl.constexpr,
    CHECKED: tl.constexpr,
    IS_BF16: tl.constexpr,
    VALUES_BY_REDUCTION: tl.constexpr,
):
    """Exact fp32 logit of each row's pick ``best`` (a narrow key)."""
    if not CHECKED:
        return narrow_key_logit(best, BLOCK_E, IS_BF16)
    elif VALUES_BY_REDUCTION:
        return ordered_to_fp32(tl.max(tl.where(hit, ordered, TAKEN), axis=1))
    else:
        # Read the exact logit back (an L1 hit: the row was just loaded).
        expert = key_expert(best, BLOCK_E)
        return canonical(tl.load(row_logits + expert * stride_logit_e, mask=row_ok, other=0.0))


@triton.jit
def select_narrow_registers(
    keys,
    ordered,
    row_ok,
    logit_rows,
    scale,
    TILE,
    CHECKED: tl.constexpr,
    IS_BF16: tl.constexpr,
    VALUES_BY_REDUCTION: tl.constexpr,
    SCALING,
):
    """TOPK narrow rounds (``next_below``), picks kept in registers.

    Returns ``(ids, logits, scales, top, total, misordered, crowded, last_key,
    bucket_min)``: ``[TOKENS, BLOCK_K]`` tiles of the picks in pick order, the
    first pick's logit, the sum of ``exp(logit - top)``; for ``CHECKED`` also
    rows whose same-bucket picks fall out of value order, rows whose runner-up
    shares the last pick's bucket, the last pick's key and the smallest logit
    picked from that bucket (the other three are placeholders otherwise).
    Argument groups: see the module docstring.
    """
    row_logits = logit_rows[0]
    stride_logit_e = logit_rows[1]
    scale_ptr = scale[0]
    stride_scale = scale[1]
    scale_row = scale[2]
    TOPK: tl.constexpr = TILE[0]
    BLOCK_E: tl.constexpr = TILE[1]
    BLOCK_K: tl.constexpr = TILE[2]
    TOKENS: tl.constexpr = TILE[3]
    HAS_SCALE: tl.constexpr = SCALING[0]
    SCALE_PICK: tl.constexpr = SCALING[1]
    slots = tl.arange(0, BLOCK_K)
    keys_u = keys.to(tl.uint32, bitcast=True)
    ids = tl.zeros([TOKENS, BLOCK_K], dtype=tl.int32)
    logits = tl.full([TOKENS, BLOCK_K], float("-inf"), dtype=tl.float32)
    scales = tl.full([TOKENS, BLOCK_K], 1.0, dtype=tl.float32)
    total = tl.zeros([TOKENS], dtype=tl.float32)
    misordered = tl.zeros([TOKENS], dtype=tl.int1)
    best = tl.max(keys, axis=1)
    hit = keys == best[:, None]
    top = _narrow_pick_logit(
        best,
        hit,
        ordered,
        row_logits,
        row_ok,
        stride_logit_e,
        BLOCK_E,
        CHECKED,
        IS_BF16,
        VALUES_BY_REDUCTION,
    )
    logit = top
    bucket = key_bucket(best, BLOCK_E)
    bucket_min = top
    for slot in tl.static_range(TOPK):
        if slot > 0:
            best = next_below(best, keys_u)
            hit = keys == best[:, None]
            previous = logit
            logit = _narrow_pick_logit(
                best,
                hit,
                ordered,
                row_logits,
                row_ok,
                stride_logit_e,
                BLOCK_E,
                CHECKED,
                IS_BF16,
                VALUES_BY_REDUCTION,
            )
            if CHECKED:
                same = key_bucket(best, BLOCK_E) == bucket
                misordered = misordered | (same & (logit > previous))
                bucket_min = tl.where(same, tl.minimum(bucket_min, logit), logit)
                bucket = key_bucket(best, BLOCK_E)
        expert = key_expert(best, BLOCK_E)
        total += tl.exp(logit - top)
        scale = pick_scale(
            expert, hit, scale_ptr, stride_scale, scale_row, row_ok, HAS_SCALE, SCALE_PICK
        )
        here = (slots == slot)[None, :]
        ids = tl.where(here, expert[:, None], ids)
        logits = tl.where(here, logit[:, None], logits)
        scales = tl.where(here, scale[:, None], scales)
    crowded = tl.zeros([TOKENS], dtype=tl.int1)
    if CHECKED:
        crowded = key_bucket(next_below(best, keys_u), BLOCK_E) == bucket
    return ids, logits, scales, top, total, misordered, crowded, best, bucket_min


@triton.jit
def last_bucket_overtaken(keys, ordered, last_key, bucket_min, expert_ok, BLOCK_E: tl.constexpr):
    """Rows where an expert left out of the last pick's bucket has a larger logit than
    one picked from it. The picks took that bucket's lowest ids (narrow order within a
    bucket is by id), so the ones left all have higher ids: equal values stay out."""
    left = (
        (key_bucket(keys, BLOCK_E) == key_bucket(last_key, BLOCK_E)[:, None])
        & (keys < last_key[:, None])
        & expert_ok[None, :]
    )
    best_left = tl.max(tl.where(left, ordered, TAKEN), axis=1)
    return best_left > ordered_bits(bucket_min)


@triton.jit
def stored_picks(scales, row_ok, logit_rows, id_rows, scale, TILE, SCALING):
    """``(ids, logits, scales, top, total)`` of the ids this program stored for each row,
    read back after a barrier (every thread's stores first); ``scales`` are kept
    where the kernel fetches them after the selection (``SCALE_AFTER``). Argument
    groups: see the module docstring."""
    TOPK: tl.constexpr = TILE[0]
    BLOCK_K: tl.constexpr = TILE[2]
    HAS_SCALE: tl.constexpr = SCALING[0]
    SCALE_PICK: tl.constexpr = SCALING[1]
    tl.debug_barrier()
    ids, logits, top, total = weights_from_stored_ids(
        logit_rows[0], id_rows[0], row_ok, logit_rows[1], id_rows[1], TOPK, BLOCK_K, TILE[3]
    )
    if HAS_SCALE and SCALE_PICK != SCALE_AFTER:
        out_ok = row_ok[:, None] & (tl.arange(0, BLOCK_K) < TOPK)[None, :]
        scales = as_fp32(tl.load(scale[0] + ids * scale[1], mask=out_ok, other=1.0))
    return ids, logits, scales, top, total


@triton.jit
def repair_checked_rows(picks, faults, num_experts, row_ok, logit_rows, id_rows, first_rows,
                        scale, TILE, SCALING):  # fmt: skip
    """Make checked narrow picks exact by redoing each faulty row alone from memory
    (``redo_row_exact``, a ``[BLOCK_E]`` vector): the same results as
    ``repair_checked_picks``, bit for bit, without its ``[TOKENS, BLOCK_E]`` tiles,
    which set every program's register allocation although few tiles need them.

    A row is redone where its picks of one key bucket came out of value order or its
    runner-up shares the last pick's bucket (which may be worth more). In a tile with
    such a row, every row's narrow ids are stored, the faulty rows' overwritten, and
    every row's picks read back (``stored_picks``). ``first_rows``: ``(logits_ptr,
    ids_ptr, first, stride_logit_t, stride_id_t)``, the kernel's outputs, the program's
    first row (int64) and the row strides, to address a row as a scalar (a stride of 1
    may come as a constexpr). Other arguments: ``repair_checked_picks``."""
    TOPK: tl.constexpr = TILE[0]
    BLOCK_E: tl.constexpr = TILE[1]
    TOKENS: tl.constexpr = TILE[3]
    ids = picks[0]
    logits = picks[1]
    scales = picks[2]
    top = picks[3]
    total = picks[4]
    faulty = (faults[0] | (faults[1] & (num_experts > TOPK))) & row_ok
    if tl.max(faulty.to(tl.int32), axis=0) != 0:
        slots = tl.arange(0, TILE[2])
        out_ok = row_ok[:, None] & (slots < TOPK)[None, :]
        tl.store(id_rows[0][:, None] + slots[None, :] * id_rows[1], ids, mask=out_ok)
        tl.debug_barrier()  # the narrow ids before the rows redone overwrite theirs
        tokens = tl.arange(0, TOKENS)
        for t in range(TOKENS):
            if tl.sum(tl.where(tokens == t, faulty.to(tl.int32), 0), axis=0) != 0:
                row = first_rows[2] + t  # int64, as the program's first row is
                redo_row_exact(
                    first_rows[0] + row * first_rows[3],
                    first_rows[1] + row * first_rows[4],
                    logit_rows[1],
                    id_rows[1],
                    num_experts,
                    TOPK,
                    BLOCK_E,
                )
        ids, logits, scales, top, total = stored_picks(
            scales, row_ok, logit_rows, id_rows, scale, TILE, SCALING
        )
    return ids, logits, scales, top, total


@triton.jit
def repair_checked_picks(
    picks,
    faults,
    keys,
    ordered,
    columns,
    row_ok,
    logit_rows,
    id_rows,
    scale,
    TILE,
    SCALING,
):
    """Make checked narrow picks (``select_narrow_registers``) exact.

    Faults are rare (random fp32 rows: about one in a thousand has one), so the
    common tile pays two branches on tile-wide flags. A tile where some row's last
    bucket was overtaken (or, with several tokens, any fault) takes the exact rounds;
    a one-token tile whose picks are only out of order is re-sorted in registers.

    ``picks``: ``(ids, logits, scales, top, total)`` and ``faults``: ``(misordered,
    crowded, last_key, bucket_min)``, as ``select_narrow_registers`` returns them; the
    other groups: see the module docstring. Returns ``(ids, logits, scales, top, total)``."""
    ids = picks[0]
    logits = picks[1]
    scales = picks[2]
    top = picks[3]
    total = picks[4]
    misordered = faults[0]
    crowded = faults[1]
    last_key = faults[2]
    bucket_min = faults[3]
    experts = columns[0]
    expert_ok = columns[1]
    num_experts = columns[2]
    id_ptrs = id_rows[0]
    stride_id_k = id_rows[1]
    TOPK: tl.constexpr = TILE[0]
    BLOCK_E: tl.constexpr = TILE[1]
    BLOCK_K: tl.constexpr = TILE[2]
    TOKENS: tl.constexpr = TILE[3]
    crowded = crowded & row_ok & (num_experts > TOPK)
    overtaken = tl.zeros([TOKENS], dtype=tl.int1)
    if tl.max(crowded.to(tl.int32), axis=0) != 0:
        overtaken = crowded & last_bucket_overtaken(
            keys, ordered, last_key, bucket_min, expert_ok, BLOCK_E
        )
    misordered = misordered & row_ok
    if TOKENS > 1:
        # Re-sorting picks in registers costs [tokens, K, K] tiles, which spill
        # in a many-token tile: there any fault redoes it.
        overtaken = overtaken | misordered
    if tl.max(overtaken.to(tl.int32), axis=0) != 0:
        # Through memory: the exact rounds' own register tiles would sit beside
        # the narrow ones and spill.
        select_exact_memory(ordered, experts, id_ptrs, row_ok, stride_id_k, TOPK, BLOCK_E)
        ids, logits, scales, top, total = stored_picks(
            scales, row_ok, logit_rows, id_rows, scale, TILE, SCALING
        )
    elif TOKENS == 1:  # noqa: SIM102 (the constexpr test must not reach the runtime branch)
        if tl.max(misordered.to(tl.int32), axis=0) != 0:
            ids, logits, scales, top, total = exact_order(ids, logits, scales, TOPK, BLOCK_K)
    return ids, logits, scales, top, total


@triton.jit
def _column(tile, slot: tl.constexpr, BLOCK_K: tl.constexpr):
    """``tile[:, slot]`` of a float tile (-inf stays -inf)."""
    return tl.max(tl.where((tl.arange(0, BLOCK_K) == slot)[None, :], tile, float("-inf")), axis=1)


@triton.jit
def exact_order(ids, logits, scales, TOPK: tl.constexpr, BLOCK_K: tl.constexpr):
    """Re-sort register picks by (logit desc, id asc) and redo the softmax sum in
    that order. For rows whose picks are the right set in a wrong order.

    Returns ``(ids, logits, scales, top, total)`` like the selections."""
    slots = tl.arange(0, BLOCK_K)
    real = (slots < TOPK)[None, None, :]
    ahead = real & (
        (logits[:, None, :] > logits[:, :, None])
        | ((logits[:, None, :] == logits[:, :, None]) & (ids[:, None, :] < ids[:, :, None]))
    )
    rank = tl.where((slots < TOPK)[None, :], tl.sum(ahead.to(tl.int32), axis=2), slots[None, :])
    moves = rank[:, :, None] == slots[None, None, :]  # [token, from slot, to slot]
    # Exactly one pick moves to each slot: summing it with zeros is exact.
    ids = tl.sum(tl.where(moves, ids[:, :, None], 0), axis=1)
    logits = tl.sum(tl.where(moves, logits[:, :, None], 0.0), axis=1)
    scales = tl.sum(tl.where(moves, scales[:, :, None], 0.0), axis=1)
    top = _column(logits, 0, BLOCK_K)
    total = tl.zeros(top.shape, dtype=tl.float32)
    for slot in tl.static_range(TOPK):
        total += tl.exp(_column(logits, slot, BLOCK_K) - top)
    return ids, logits, scales, top, total


@triton.jit
def select_exact_registers(
    ordered,
    experts,
    row_ok,
    scale_ptr,
    stride_scale,
    scale_row,
    TOPK: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TOKENS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    SCALE_PICK: tl.constexpr,
):
    """TOPK exact rounds (largest ordered value, then its lowest id), picks in registers.

    Returns ``(ids, logits, scales, top, total)`` like ``select_narrow_registers``."""
    slots = tl.arange(0, BLOCK_K)
    keys = ordered
    ids = tl.zeros([TOKENS, BLOCK_K], dtype=tl.int32)
    logits = tl.full([TOKENS, BLOCK_K], float("-inf"), dtype=tl.float32)
    scales = tl.full([TOKENS, BLOCK_K], 1.0, dtype=tl.float32)
    total = tl.zeros([TOKENS], dtype=tl.float32)
    top = tl.zeros([TOKENS], dtype=tl.float32)
    for slot in tl.static_range(TOPK):
        best = tl.max(keys, axis=1)
        expert = tl.min(tl.where(keys == best[:, None], experts[None, :], BLOCK_E), axis=1)
        hit = experts[None, :] == expert[:, None]
        keys = tl.where(hit, TAKEN, keys)
        logit = ordered_to_fp32(best)
        if slot == 0:
            top = logit
        total += tl.exp(logit - top)
        scale = pick_scale(
            expert, hit, scale_ptr, stride_scale, scale_row, row_ok, HAS_SCALE, SCALE_PICK
        )
        here = (slots == slot)[None, :]
        ids = tl.where(here, expert[:, None], ids)
        logits = tl.where(here, logit[:, None], logits)
        scales = tl.where(here, scale[:, None], scales)
    return ids, logits, scales, top, total


@triton.jit
def select_narrow_memory(
    keys, id_ptrs, row_ok, stride_id_k, TOPK: tl.constexpr, BLOCK_E: tl.constexpr
):
    """TOPK narrow rounds in a runtime loop, each id stored as it comes (16-bit logits)."""
    keys_u = keys.to(tl.uint32, bitcast=True)
    best = tl.max(keys, axis=1)
    tl.store(id_ptrs, key_expert(best, BLOCK_E), mask=row_ok)
    for slot in range(1, TOPK):
        best = next_below(best, keys_u)
        tl.store(id_ptrs + slot * stride_id_k, key_expert(best, BLOCK_E), mask=row_ok)


@triton.jit
def select_exact_memory(
    ordered, experts, id_ptrs, row_ok, stride_id_k, TOPK: tl.constexpr, BLOCK_E: tl.constexpr
):
    """TOPK exact rounds in a runtime loop, each id stored as it comes (fp32 logits)."""
    keys = ordered
    for slot in range(TOPK):
        best = tl.max(keys, axis=1)
        expert = tl.min(tl.where(keys == best[:, None], experts[None, :], BLOCK_E), axis=1)
        keys = tl.where(experts[None, :] == expert[:, None], TAKEN, keys)
        tl.store(id_ptrs + slot * stride_id_k, expert, mask=row_ok)


@triton.jit
def redo_row_exact(
    row_ptr,
    id_ptr,
    stride_logit_e,
    stride_id_k,
    num_experts,
    TOPK: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """One row's TOPK exact rounds on its logits read again from memory, each id stored
    as it comes: a ``[BLOCK_E]`` vector, so a repair of one faulty row holds no tile."""
    experts = tl.arange(0, BLOCK_E)
    raw = tl.load(
        row_ptr + experts * stride_logit_e, mask=experts < num_experts, other=float("-inf")
    )
    keys = ordered_bits(canonical(as_fp32(raw)))
    for slot in range(TOPK):
        best = tl.max(keys, axis=0)
        expert = tl.min(tl.where(keys == best, experts, BLOCK_E), axis=0)
        keys = tl.where(experts == expert, TAKEN, keys)
        tl.store(id_ptr + slot * stride_id_k, expert)


@triton.jit
def weights_from_stored_ids(
    row_logits,
    id_ptrs,
    row_ok,
    stride_logit_e,
    stride_id_k,
    TOPK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TOKENS: tl.constexpr,
):
    """Read a program's stored picks back and gather their logits (L1 hits).

    Returns ``(ids, logits, top, total)`` like the register selections."""
    # Softmax over the K chosen logits equals softmax over all E followed by
    # renormalisation over the K: the full-row denominator cancels.
    top = _stored_logit(row_logits, id_ptrs, 0, row_ok, stride_logit_e)
    total = tl.zeros([TOKENS], dtype=tl.float32)
    for slot in range(TOPK):
        logit = _stored_logit(row_logits, id_ptrs, slot * stride_id_k, row_ok, stride_logit_e)
        total += tl.exp(logit - top)
    slots = tl.arange(0, BLOCK_K)
    out_ok = row_ok[:, None] & (slots < TOPK)[None, :]
    ids = tl.load(id_ptrs[:, None] + slots[None, :] * stride_id_k, mask=out_ok, other=0)
    raw = tl.load(row_logits[:, None] + ids * stride_logit_e, mask=out_ok, other=float("-inf"))
    return ids, canonical(as_fp32(raw)), top, total


@triton.jit
def _stored_logit(row_logits, id_ptrs, slot_offset, row_ok, stride_logit_e):
    """fp32 logit of each row's expert stored at ``slot_offset``; NaN read as -inf."""
    expert = tl.load(id_ptrs + slot_offset, mask=row_ok, other=0)
    return canonical(as_fp32(tl.load(row_logits + expert * stride_logit_e, mask=row_ok, other=0.0)))


@triton.jit
def select_registers(
    ordered,
    columns,
    row_ok,
    logit_rows,
    id_rows,
    first_rows,
    scale,
    TILE,
    SELECT: tl.constexpr,
    IS_BF16: tl.constexpr,
    VALUES_BY_REDUCTION: tl.constexpr,
    SCALING,
):
    """The ``SELECT`` strategy's picks of a ``[TOKENS, BLOCK_E]`` tile, kept in registers.

    ``ordered`` is the tile's ``ordered_bits`` (padding columns -inf); ``row_logits``
    points at each row's logits in memory, which the checked rounds read back:
    their rare repair after a barrier of its own, the rounds themselves (unless
    ``VALUES_BY_REDUCTION``) with none, so logits this program stored need a
    barrier before the call; ``id_ptrs`` is each row's id output, which the repair
    uses as scratch; ``first_rows`` addresses one row as a scalar for ``CHECKED_ROWS``
    (``repair_checked_rows``). Returns ``(ids, logits, scales, top, total)``:
    ``[TOKENS, BLOCK_K]`` picks in order (lowest id first among equal logits), the
    first pick's logit and the sum of ``exp(logit - top)``.
    Argument groups: see the module docstring."""
    experts = columns[0]
    scale_ptr = scale[0]
    stride_scale = scale[1]
    scale_row = scale[2]
    TOPK: tl.constexpr = TILE[0]
    BLOCK_E: tl.constexpr = TILE[1]
    BLOCK_K: tl.constexpr = TILE[2]
    TOKENS: tl.constexpr = TILE[3]
    HAS_SCALE: tl.constexpr = SCALING[0]
    SCALE_PICK: tl.constexpr = SCALING[1]
    if SELECT == EXACT:
        ids, logits, scales, top, total = select_exact_registers(
            ordered,
            experts,
            row_ok,
            scale_ptr,
            stride_scale,
            scale_row,
            TOPK,
            BLOCK_E,
            BLOCK_K,
            TOKENS,
            HAS_SCALE,
            SCALE_PICK,
        )
    else:
        keys = narrow_keys(ordered, (BLOCK_E - 1) - experts, BLOCK_E)
        ids, logits, scales, top, total, misordered, crowded, last_key, bucket_min = (
            select_narrow_registers(
                keys,
                ordered,
                row_ok,
                logit_rows,
                scale,
                TILE,
                SELECT != NARROW,
                IS_BF16,
                VALUES_BY_REDUCTION,
                SCALING,
            )
        )
        if SELECT == CHECKED_ROWS:
            ids, logits, scales, top, total = repair_checked_rows(
                (ids, logits, scales, top, total),
                (misordered, crowded),
                columns[2],
                row_ok,
                logit_rows,
                id_rows,
                first_rows,
                scale,
                TILE,
                SCALING,
            )
        elif SELECT == CHECKED:
            ids, logits, scales, top, total = repair_checked_picks(
                (ids, logits, scales, top, total),
                (misordered, crowded, last_key, bucket_min),
                keys,
                ordered,
                columns,
                row_ok,
                logit_rows,
                id_rows,
                scale,
                TILE,
                SCALING,
            )
    return ids, logits, scales, top, total
