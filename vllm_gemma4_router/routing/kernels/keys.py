"""Integer keys of the routing kernel: logit bits in an order integers compare by.

Every selection in ``kernel_select`` works on these. A logit becomes an
*ordered* int32 (same order as the float, NaN as ``-inf``, ``-0.0`` as
``+0.0``). A *narrow key* packs the ordered value's high bits above
``BLOCK_E - 1 - expert`` (the *id rank*), so one integer max gives both the
value and, on equal values, the lowest expert id. The ordered value's high bits
form the key's *bucket*: for 16-bit logits the bucket is the whole value; for
fp32 it drops the low ``log2(BLOCK_E)`` bits.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

# The interpreter's bf16 -> fp32 conversion gets subnormals wrong (triton 3.9),
# so there bf16 is widened through its bits; GPUs convert exactly, and their
# conversion was faster at T=1 (1.70 vs 1.83 us in an H100 launch sweep).
_BF16_BY_BITS = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")

#: Below every ordered logit (ordered(-inf) is -2**31 + 2**23 - 1): marks a taken expert.
TAKEN = tl.constexpr(-(2**31))


@triton.jit
def as_fp32(raw):
    """fp32 value of loaded logits or scales (exact for every value)."""
    if _BF16_BY_BITS and raw.dtype == tl.bfloat16:
        return (raw.to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        return raw.to(tl.float32)


@triton.jit
def canonical(x):
    """NaN -> -inf (maxnum returns the non-NaN operand), -0.0 -> +0.0 (adding +0.0):
    two float ops instead of two compare-and-selects on the integer pipe."""
    return tl.maximum(x, float("-inf")) + 0.0


@triton.jit
def ordered_bits(x):
    """int32 with the order of the fp32 ``x`` (canonical: no NaN, no -0.0).

    Sign-magnitude bits -> two's complement: flip the magnitude bits of negatives."""
    bits = x.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def ordered_to_fp32(ordered):
    """Inverse of :func:`ordered_bits` (the map is its own inverse on the bits)."""
    return (ordered ^ ((ordered >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def narrow_keys(ordered, id_rank, BLOCK_E: tl.constexpr):
    """32-bit keys: the bucket above log2(BLOCK_E) bits, the id rank below.

    Padding columns hold -inf and the lowest id ranks, so they rank below every
    real expert (K <= E keeps them out of the picks) without a select."""
    return (ordered & -BLOCK_E) | id_rank[None, :]


@triton.jit
def key_expert(key, BLOCK_E: tl.constexpr):
    """The expert id a narrow key holds."""
    return (BLOCK_E - 1) - (key & (BLOCK_E - 1))


@triton.jit
def key_bucket(key, BLOCK_E: tl.constexpr):
    """The ordered-value bits a narrow key keeps (equal buckets: equal up to the dropped bits)."""
    return key & -BLOCK_E


@triton.jit
def narrow_key_logit(key, BLOCK_E: tl.constexpr, IS_BF16: tl.constexpr):
    """The exact fp32 logit of a 16-bit logit's narrow key: the bits the key drops
    are zero in a widened bf16/fp16 value, so masking them off restores it."""
    ordered = key_bucket(key, BLOCK_E)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    bits = bits & -65536 if IS_BF16 else bits & -8192  # 0xFFFF0000 / 0xFFFFE000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def next_below(best, keys_u):
    """The largest key below ``best`` per row (keys unique, ``keys_u`` their uint32 bits).

    With ``below = best - 1`` the map ``key -> (below - key) mod 2**32`` sends the
    keys under ``best`` to [0, 2**31 + below] in reverse order and the keys from
    ``best`` up above that range, so an unsigned min finds the next pick: one
    subtract and one min per logit, and the keys stay untouched (masking out
    each pick would cost a compare and a select more, and the integer pipe is
    what bounds this kernel: Nsight Compute on an H100, benchmarks/results/ncu/).
    """
    below = (best - 1).to(tl.uint32, bitcast=True)
    return (below - tl.min(below[:, None] - keys_u, axis=1)).to(tl.int32, bitcast=True)
