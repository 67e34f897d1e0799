"""The fused Gemma 4 router kernel (Triton): norm, scale, gate GEMM and routing in one launch.

Per token ``t`` and expert ``e``::

    logits[t, e] = rsqrt(mean_h(x[t, h]**2) + eps) * H**-0.5 * sum_h (x[t, h] * scale[h]) * W[e, h]

The norm is one fp32 factor per token, applied after the sum (it commutes with
it), so a single pass over ``x`` feeds both the sum of squares and the GEMM.
The GEMM operand ``x * scale`` is rounded to bf16 for bf16 inputs (tensor
cores), kept fp32 otherwise (``OPERAND``). The finished logits are routed by
the routing kernel's own selection (``kernel_select.select_registers``; constexprs
``SELECT`` and ``SCALE_PICK``): lowest id on equal logits, rows sorted by weight,
K distinct valid ids whatever the bits, and bitwise the weights
``gemma4_routing_triton`` gives for the same logits, whichever selection runs.

A program computes a ``[BLOCK_T, BLOCK_E]`` tile of the sum over one slice of
``H`` (grid: token blocks x expert slices x H slices), with ``tl.dot`` for
``BLOCK_T >= 16`` and in registers below (the register GEMM: any ``BLOCK_E``). With one expert slice
and one H slice (large T) it holds the whole row and routes it in its epilogue.
Otherwise (decode sizes: few tokens, so the 720 KB of gate weight must be read
by many programs) each program stores its partial sums; a counter per token
block elects the last program to arrive, which adds the partials in a fixed
order (deterministic bits), routes the rows and resets the counter for the next
launch. Launches sharing a counter buffer must therefore be stream-ordered.

With ``HAS_PADDING`` the routing epilogue reads a ``[T]`` uint8 mask on the device
(vLLM's CUDA-graph and data-parallel padding rows): padding rows keep their logits
and get ids -1 and weights 0; other rows' bits are the unmasked launch's. Without
it the mask pointer is never read and the code is the unmasked kernel's.

Device functions take the arguments that travel together as tuples, built and
read as ``kernel_select``'s are (``docs/kernel-arguments.md``):

* ``inputs``: ``(x_ptr, stride_xt, stride_xh, scale_ptr, stride_s, w_ptr, stride_we,
  stride_wh)``, the GEMM's operands and their strides;
* ``GEMM``: ``(BLOCK_T, BLOCK_E, BLOCK_H, OPERAND, PDL)`` (constexprs);
* ``out``: ``(logits_ptr, stride_lt, stride_le, weights_ptr, stride_wt, stride_wk,
  ids_ptr, stride_it, stride_ik)``, the three outputs and their strides;
* ``norm``: ``(hidden, eps, inv_sqrt_hidden)``;
* ``scale``: ``(pes_ptr, stride_pes, scale_row)``, ``kernel_select``'s ``scale``;
* ``TILE``: ``(TOPK, BLOCK_E_ALL, BLOCK_K, ROUTE_T)``, ``kernel_select``'s ``TILE``
  for one routing chunk (constexprs);
* ``ROUTING``: ``(SELECT, HAS_SCALE, SCALE_PICK, HAS_PADDING)`` (constexprs).

The kernels themselves keep one parameter per pointer, integer and constexpr: the
host passes them as it always has (``fused_router.launcher``, ``gemm_path``) and the
offline compiles specialise them by name.
"""

from __future__ import annotations

import triton
import triton.language as tl

from vllm_gemma4_router.routing.kernels.keys import as_fp32, canonical, ordered_bits
from vllm_gemma4_router.routing.kernels.select import SCALE_AFTER, load_scale_row, select_registers

#: The GEMM operand ``x * scale`` (constexpr ``OPERAND``).
OPERAND_FP32 = tl.constexpr(0)  # fp32, IEEE dot (fp16 and fp32 inputs)
OPERAND_BF16 = tl.constexpr(1)  # rounded to bf16, tensor-core dot (bf16 inputs)
OPERAND_BF16_ROUNDED = tl.constexpr(2)  # rounded to bf16, fp32 dot (bf16 under the interpreter)


@triton.jit
def round_to_bf16(x):
    """fp32 ``x`` rounded to the nearest bf16 (ties to even), as fp32 (finite ``x``)."""
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _hidden_tile(x_ptr, rows64, row_ok, h, h_ok, stride_xt, stride_xh):
    return tl.load(
        x_ptr + rows64[:, None] * stride_xt + h[None, :] * stride_xh,
        mask=row_ok[:, None] & h_ok[None, :],
        other=0.0,
    ).to(tl.float32)


@triton.jit
def _weight_tile(w_ptr, experts64, expert_ok, h, h_ok, stride_we, stride_wh):
    return tl.load(
        w_ptr + experts64[None, :] * stride_we + h[:, None] * stride_wh,
        mask=h_ok[:, None] & expert_ok[None, :],
        other=0.0,
    )


@triton.jit
def _dot_slice(inputs, rows64, row_ok, experts, expert_ok, h_begin, h_end, GEMM):
    """Sums of ``x*scale*W`` [BLOCK_T, BLOCK_E] and ``x**2`` [BLOCK_T] over h_begin..h_end
    (argument groups: see the module docstring).

    ``PDL`` (programmatic dependent launch): the weight and scale tiles load
    before waiting for the previous kernel, ``x`` after (from the second step on
    the wait returns at once)."""
    x_ptr = inputs[0]
    stride_xt = inputs[1]
    stride_xh = inputs[2]
    scale_ptr = inputs[3]
    stride_s = inputs[4]
    w_ptr = inputs[5]
    stride_we = inputs[6]
    stride_wh = inputs[7]
    BLOCK_T: tl.constexpr = GEMM[0]
    BLOCK_E: tl.constexpr = GEMM[1]
    BLOCK_H: tl.constexpr = GEMM[2]
    OPERAND: tl.constexpr = GEMM[3]
    PDL: tl.constexpr = GEMM[4]
    acc = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.float32)
    sumsq = tl.zeros([BLOCK_T], dtype=tl.float32)
    experts64 = experts.to(tl.int64)
    for h0 in range(h_begin, h_end, BLOCK_H):
        h = h0 + tl.arange(0, BLOCK_H)
        h_ok = h < h_end
        if PDL:
            s = tl.load(scale_ptr + h * stride_s, mask=h_ok, other=0.0).to(tl.float32)
            w = _weight_tile(w_ptr, experts64, expert_ok, h, h_ok, stride_we, stride_wh)
            tl.extra.cuda.gdc_wait()
            x = _hidden_tile(x_ptr, rows64, row_ok, h, h_ok, stride_xt, stride_xh)
        else:
            x = _hidden_tile(x_ptr, rows64, row_ok, h, h_ok, stride_xt, stride_xh)
            s = tl.load(scale_ptr + h * stride_s, mask=h_ok, other=0.0).to(tl.float32)
            w = _weight_tile(w_ptr, experts64, expert_ok, h, h_ok, stride_we, stride_wh)
        sumsq += tl.sum(x * x, axis=1)
        operand = x * s[None, :]
        if BLOCK_T < 16:
            # Fewer rows than a tensor-core tile (decode): products summed in registers,
            # the same bf16 operand and fp32 sums, so BLOCK_E may go down to one expert
            # and the grid up to a program per expert (vLLM's ll_bf16 dot-product layout).
            if OPERAND == OPERAND_BF16:
                operand = operand.to(tl.bfloat16).to(tl.float32)
            elif OPERAND == OPERAND_BF16_ROUNDED:
                operand = round_to_bf16(operand)
            acc += tl.sum(operand[:, :, None] * w.to(tl.float32)[None, :, :], axis=1)
        elif OPERAND == OPERAND_BF16:
            acc = tl.dot(operand.to(tl.bfloat16), w, acc)
        elif OPERAND == OPERAND_BF16_ROUNDED:
            # Same products and fp32 sums, for the interpreter: its bf16 dot is
            # wrong and its bf16 cast truncates, so round to nearest even by hand.
            operand = round_to_bf16(operand)
            acc = tl.dot(operand, w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(operand, w.to(tl.float32), acc, input_precision="ieee")
    return acc, sumsq


@triton.jit
def _route_rows(logits, rows64, row_ok, num_experts, out, padding_ptr, scale, TILE, ROUTING):
    """Route ``ROUTE_T`` rows of fp32 ``logits`` [ROUTE_T, BLOCK_E_ALL] (padding -inf),
    already stored at ``logits_ptr``, with the routing kernel's ``SELECT`` and
    ``SCALE_PICK`` (``scale_row``: ``load_scale_row``'s; argument groups: see the
    module docstring).

    ``HAS_PADDING``: ``padding_ptr`` is a contiguous ``[T]`` uint8 mask (nonzero: a
    padding row), read on the device; padding rows are routed as any other, then
    stored as ids -1 and weights 0 (vLLM's padding). Otherwise ``padding_ptr`` is
    never read."""
    logits_ptr = out[0]
    stride_lt = out[1]
    stride_le = out[2]
    weights_ptr = out[3]
    stride_wt = out[4]
    stride_wk = out[5]
    ids_ptr = out[6]
    stride_it = out[7]
    stride_ik = out[8]
    pes_ptr = scale[0]
    stride_pes = scale[1]
    TOPK: tl.constexpr = TILE[0]
    BLOCK_E_ALL: tl.constexpr = TILE[1]
    BLOCK_K: tl.constexpr = TILE[2]
    SELECT: tl.constexpr = ROUTING[0]
    HAS_SCALE: tl.constexpr = ROUTING[1]
    SCALE_PICK: tl.constexpr = ROUTING[2]
    HAS_PADDING: tl.constexpr = ROUTING[3]
    if HAS_PADDING:
        # Issued first: the selection rounds hide its latency.
        padding = tl.load(padding_ptr + rows64, mask=row_ok, other=0) != 0
    experts = tl.arange(0, BLOCK_E_ALL)
    # Checked rounds take each pick's value by a reduction: the stored logits are read
    # back only by their rare repair, which a barrier puts after every thread's store.
    ids, picked, scales, top, total = select_registers(
        ordered_bits(canonical(logits)),
        (experts, experts < num_experts, num_experts),
        row_ok,
        (logits_ptr + rows64 * stride_lt, stride_le),
        (ids_ptr + rows64 * stride_it, stride_ik),
        (logits_ptr, ids_ptr, tl.min(rows64, axis=0), stride_lt, stride_it),
        scale,
        TILE,
        SELECT,
        False,
        True,
        (HAS_SCALE, SCALE_PICK),
    )
    slots = tl.arange(0, BLOCK_K)
    out_ok = row_ok[:, None] & (slots < TOPK)[None, :]
    weights = tl.exp(picked - top[:, None]) / total[:, None]
    if HAS_SCALE:
        if SCALE_PICK == SCALE_AFTER:
            scales = as_fp32(tl.load(pes_ptr + ids * stride_pes, mask=out_ok, other=1.0))
        weights = weights * scales
    if HAS_PADDING:
        # After the scale gather above, which reads per_expert_scale at the real ids.
        ids = tl.where(padding[:, None], -1, ids)
        weights = tl.where(padding[:, None], 0.0, weights)
    tl.store(
        weights_ptr + rows64[:, None] * stride_wt + slots[None, :] * stride_wk, weights, mask=out_ok
    )
    tl.store(ids_ptr + rows64[:, None] * stride_it + slots[None, :] * stride_ik, ids, mask=out_ok)


@triton.jit
def finish_rows(
    sums, sumsq, first_row, num_tokens, num_experts, norm, out, padding_ptr, scale, TILE,
    BLOCK_T: tl.constexpr, ROUTING,
):  # fmt: skip
    """Norm the full-row sums into logits, store them and route them (``scale``,
    ``ROUTING`` and ``padding_ptr``: see ``_route_rows``; padding rows' logits are
    stored as every other row's; argument groups: see the module docstring).

    One routing chunk (``ROUTE_T == BLOCK_T``, the split launches) routes the
    registers it stored. Wider tiles route ``ROUTE_T`` rows at a time, read back
    from the store: a whole [BLOCK_T, E] tile through the selection rounds would
    not fit in registers next to the GEMM's."""
    hidden = norm[0]
    eps = norm[1]
    inv_sqrt_hidden = norm[2]
    logits_ptr = out[0]
    stride_lt = out[1]
    stride_le = out[2]
    BLOCK_E_ALL: tl.constexpr = TILE[1]
    ROUTE_T: tl.constexpr = TILE[3]
    experts = tl.arange(0, BLOCK_E_ALL)
    expert_ok = experts < num_experts
    rows64 = (first_row + tl.arange(0, BLOCK_T)).to(tl.int64)
    row_ok = rows64 < num_tokens
    factor = tl.rsqrt(sumsq / hidden + eps) * inv_sqrt_hidden
    logits = sums * factor[:, None]
    tl.store(
        logits_ptr + rows64[:, None] * stride_lt + experts[None, :] * stride_le,
        logits,
        mask=row_ok[:, None] & expert_ok[None, :],
    )
    if ROUTE_T != BLOCK_T:
        # Every thread's logit stores must be visible to the reads.
        tl.debug_barrier()
    for chunk in tl.static_range(BLOCK_T // ROUTE_T):
        route_rows = (first_row + chunk * ROUTE_T + tl.arange(0, ROUTE_T)).to(tl.int64)
        route_ok = route_rows < num_tokens
        # Padding columns are -inf: with the highest ids they lose every tie.
        if ROUTE_T == BLOCK_T:
            chunk_logits = tl.where(expert_ok[None, :], logits, float("-inf"))
        else:
            chunk_logits = tl.load(
                logits_ptr + route_rows[:, None] * stride_lt + experts[None, :] * stride_le,
                mask=route_ok[:, None] & expert_ok[None, :],
                other=float("-inf"),
            )
        _route_rows(
            chunk_logits, route_rows, route_ok, num_experts, out, padding_ptr, scale, TILE, ROUTING
        )


@triton.jit
def gather_partials(
    partial_ptr,
    partial_sumsq_ptr,
    rows64,
    row_ok,
    num_tokens,
    BLOCK_T: tl.constexpr,
    BLOCK_E_ALL: tl.constexpr,
    H_SLICES: tl.constexpr,
):
    """The full-row sums [BLOCK_T, BLOCK_E_ALL] and sums of squares [BLOCK_T], added
    over the H slices in a fixed order (the same bits whichever program finishes)."""
    experts = tl.arange(0, BLOCK_E_ALL)
    total_sums = tl.zeros([BLOCK_T, BLOCK_E_ALL], dtype=tl.float32)
    total_sumsq = tl.zeros([BLOCK_T], dtype=tl.float32)
    # Unrolled: the slices' loads are independent and go out together.
    for s in tl.static_range(H_SLICES):
        part_rows = s * num_tokens + rows64
        total_sums += tl.load(
            partial_ptr + part_rows[:, None] * BLOCK_E_ALL + experts[None, :],
            mask=row_ok[:, None],
            other=0.0,
            cache_modifier=".cg",
        )
        total_sumsq += tl.load(
            partial_sumsq_ptr + part_rows, mask=row_ok, other=0.0, cache_modifier=".cg"
        )
    return total_sums, total_sumsq


@triton.jit
def program_sums(pid_t, pid_e, pid_h, inputs, num_tokens, hidden, num_experts, GEMM, H_SLICE):
    """Program ``(pid_t, pid_e, pid_h)``'s tile (grid: token blocks x expert slices x H
    slices): its rows (int64) and their mask, its experts, and ``_dot_slice`` over its
    H slice (argument groups: see the module docstring)."""
    BLOCK_T: tl.constexpr = GEMM[0]
    BLOCK_E: tl.constexpr = GEMM[1]
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < num_tokens
    rows64 = rows.to(tl.int64)
    experts = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    h_begin = pid_h * H_SLICE
    sums, sumsq = _dot_slice(
        inputs, rows64, row_ok, experts, experts < num_experts,
        h_begin, tl.minimum(h_begin + H_SLICE, hidden), GEMM,
    )  # fmt: skip
    return rows64, row_ok, experts, sums, sumsq


@triton.jit
def store_partials(
    pid_e,
    pid_h,
    partial_ptr,
    partial_sumsq_ptr,
    sums,
    sumsq,
    rows64,
    row_ok,
    experts,
    num_tokens,
    BLOCK_E_ALL: tl.constexpr,
):
    """Store this program's partials: ``[H_SLICES, T, BLOCK_E_ALL]`` sums and (first
    expert slice only) ``[H_SLICES, T]`` sums of squares."""
    slice_rows = pid_h * num_tokens + rows64
    tl.store(
        partial_ptr + slice_rows[:, None] * BLOCK_E_ALL + experts[None, :],
        sums,
        mask=row_ok[:, None],
    )
    if pid_e == 0:
        tl.store(partial_sumsq_ptr + slice_rows, sumsq, mask=row_ok)


@triton.jit
def arrive_last(counter_ptr, PROGRAMS: tl.constexpr):
    """Count this program in on its token block's counter (``counter_ptr``); whether it
    is the last of ``PROGRAMS`` (it then sees every other program's partials)."""
    # Every thread's stores come before the one release below.
    tl.debug_barrier()
    arrived = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
    return arrived == PROGRAMS - 1


@triton.jit
def gemma4_fused_router_kernel(
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
):
    pid_t = tl.program_id(0)
    pid_e = tl.program_id(1)
    pid_h = tl.program_id(2)
    rows64, row_ok, experts, sums, sumsq = program_sums(
        pid_t, pid_e, pid_h,
        (x_ptr, stride_xt, stride_xh, scale_ptr, stride_s, w_ptr, stride_we, stride_wh),
        num_tokens, hidden, num_experts, (BLOCK_T, BLOCK_E, BLOCK_H, OPERAND, PDL), H_SLICE,
    )  # fmt: skip
    E_SLICES: tl.constexpr = BLOCK_E_ALL // BLOCK_E
    SPLIT: tl.constexpr = E_SLICES * H_SLICES > 1
    finishes = True
    if SPLIT:
        store_partials(
            pid_e, pid_h, partial_ptr, partial_sumsq_ptr, sums, sumsq, rows64, row_ok, experts,
            num_tokens, BLOCK_E_ALL,
        )  # fmt: skip
        finishes = arrive_last(counter_ptr + pid_t, E_SLICES * H_SLICES)
    if finishes:
        # Before the gather: its latency hides the scale row's.
        scale_row = load_scale_row(
            pes_ptr, stride_pes, num_experts, BLOCK_E_ALL, HAS_SCALE, SCALE_PICK
        )
        if SPLIT:
            row_sums, row_sumsq = gather_partials(
                partial_ptr, partial_sumsq_ptr, rows64, row_ok, num_tokens,
                BLOCK_T, BLOCK_E_ALL, H_SLICES,
            )  # fmt: skip
        else:
            row_sums, row_sumsq = sums, sumsq
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
        if SPLIT:
            tl.atomic_xchg(counter_ptr + pid_t, 0)
