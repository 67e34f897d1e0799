"""The whole Gemma 4 router of one layer: vLLM's unfused chain vs our fused router op.

Run on a GPU as ``python -m benchmarks.kernel.bench_router`` (``.cache/peer_kernels``
carried along for vLLM's routing kernel). For gemma-4-26B-A4B's router (H=2816,
E=128, K=8, bfloat16 hidden states and weights), per token count T, each piece
as vLLM 0.24 runs it on Hopper (``Gemma4Router.forward``, then the routing):

* ``norm``: RMSNorm without weight (``ir.ops.rms_norm``'s native code: x.float(),
  var = x.pow(2).mean(-1), x * rsqrt(var + eps), back to bf16), ``* root_size``,
  ``* scale``, under ``torch.compile`` (one Inductor kernel, as in vLLM's graph);
* ``gemm``: the gate, bf16 x bf16 -> fp32 logits [T, E] (GateLinear's cuBLAS
  tier: ``torch.mm(x, w.t(), out_dtype=torch.float32)``; where torch lacks
  ``out_dtype``, ``F.linear(x, w).float()``, named in the output);
* ``route_vllm`` / ``route_ours``: vLLM's in-tree routing kernel / ours on those logits;
* ``chain_vllm`` / ``chain_ours``: norm + gemm + that routing, one call after the other;
* ``fused``: what the fused op runs (``fused_router_op.fused_router_into``): one
  launch of its kernel, or its GEMM path for ``GEMM_PATH_TOKENS``;
* ``fused_gemm``: the op's GEMM path (Triton prologue, cuBLAS, the kernel's
  epilogue: ``fused_router_gemm.route_by_gemm``) at every T;
* ``fused_pdl``: the table's split launch with programmatic dependent launch
  (``FusedLaunchConfig.pdl``), where the op launches a split row (else ``-``);
* ``empty``: an empty Triton kernel, the floor of one graph-replayed launch;
* ``gemm_ll`` / ``chain_ll``: GateLinear's first tier from vLLM 0.26.0 on SM90/SM100,
  vLLM's CuTe-DSL ``ll_bf16_gemm`` (imported from the installed vLLM, or with
  ``--ll-source PATH`` from a vLLM source tree: ``benchmarks.common.ll_gemm``), alone
  and as norm + it + vLLM's routing, where GateLinear would dispatch it (T <= 16);
  ``-`` elsewhere, the reason written once in the md and the stamp;
* ``tail`` / ``tail_router``: a compiled stand-in for Gemma4DecoderLayer.forward
  between the attention and the MLP/MoE GEMMs (post_attention_layernorm, + residual,
  pre_feedforward_layernorm, pre_feedforward_layernorm_2), without and with the
  router's norm as one more consumer of the residual; their difference is what the
  router's norm adds in a compiled layer (Inductor fuses it with the rest), and
  ``serving_equiv = (tail_router - tail) + gate GEMM as GateLinear dispatches it
  (gemm_ll at T <= 16 where eligible, else gemm) + routing vLLM``, and
  ``plugin_equiv``, the same with our routing: the plugin's own chain (``gemma4_gate_tier``
  + ``gemma4_routing``), the best chain the fused router must beat (issue #36);
* ``fused_operand``: what the split router runs at its own counts
  (``fused_router_into`` with ``operand``): the decode path's build on the gate's operand
  (``norm``'s output, as vLLM's lines compute it), its logits the gate's, where the
  decode path takes T; else the op on the hidden states;
* ``split_equiv``: the plugin's split fused router (``fused_router_or_gate``) as the
  fused-router policy row of the installed vLLM on this GPU sends each T: at the row's
  ``own_kernel_tokens``, the router norm's marginal cost (vLLM's operand lines run in
  the compiled layer on both branches) + ``fused_operand``; at every other T,
  ``plugin_equiv`` (the gate's own tier, then our routing). Left out where no row splits.

``--cache both``: each T with the L2-resident rotation (``--hot-layers``, 30 sets)
and the cold one (``auto``), the issue's T list by default. ``--anchors-only``:
only ``gemm`` (cuBLAS), ``gemm_ll`` and ``fused`` (the anchors that tie a second
process's numbers to the first), T <= 16 by default, written as
``bench_router_anchors_*``: with ``--ll-source`` the way to time another vLLM's
``ll_bf16_gemm`` (0.34.0 with nvidia-cutlass-dsl 4.8.0) on the same machine.

Timing (``common.bench_rotated``): one CUDA graph of calls cycling through L
layers' weight sets (gate weight, scale, per_expert_scale), median of the
replays, per call. By default L is enough sets to be 3x the L2 (at least 30),
so every call reads its gate weight from HBM, as in a real step where the
experts' weights flush the L2 between two routers; ``--layers 30`` is the plain
30-layer rotation, whose weights (30 x 0.7 MB) stay in the L2. The hidden
states are one tensor, L2-hot as after the op before the router.

``--producer``: as in serving, a kernel that writes the hidden states (a copy
of an L2-hot tensor of the same shape, standing in for vLLM's residual add and
norm) runs before every call; that producer is timed alone in the same graph
set-up and its time subtracted from every piece. Programmatic dependent launch
only pays where the kernel ahead is not one's own: this is the set-up for it.

Before timing, each T is checked: the fused op's ids must equal our routing
kernel's on the fused op's own logits (exactly; weights to 1e-5), and its
logits must be within ``--logit-rtol`` of the row's largest |logit| of the
chain's (the chain rounds the normed input to bf16 up to three times, the fused
op rounds ``h * scale`` once); a miss is a warning and the ``check`` column.
Where ``gemm_ll`` runs, its logits must match cuBLAS's within 1e-3 of the row's
largest |logit| (both accumulate in fp32).
Writes benchmarks/results/bench_router_<device>_<date>[_<tag>].{csv,md,png}.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common.gpu import device_name, device_slug
from benchmarks.common.ll_gemm import LLGemm, load_ll_gemm
from benchmarks.common.plots import pyplot
from benchmarks.common.tables import markdown_table
from benchmarks.common.timing import (
    ROUTER_HIDDEN,
    bench_rotated,
    copy_bandwidth_gbs,
    environment_stamp,
    geomean,
    l2_bytes,
    producer_of,
    rotation_calls,
    rotation_sets,
    write_stamped_csv,
)
from vllm_gemma4_router.integration.fused_or_gate import takes_own_kernel

TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
#: Issue #34 item 3's T list: the default of ``--cache``.
ISSUE_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
#: ``--anchors-only``'s default: where GateLinear dispatches ``ll_bf16_gemm``.
ANCHOR_TOKENS = (1, 2, 4, 8, 16)
#: Timed pieces, in column order: CSV column ``<piece>_us``.
PIECES = (
    "norm",
    "gemm",
    "route_vllm",
    "route_ours",
    "chain_vllm",
    "chain_ours",
    "fused",
    "fused_gemm",
    "fused_pdl",
    "empty",
)
#: The split router's own-count kernel, on the gate's operand (``Router.fused_operand``).
OPERAND_PIECES = ("fused_operand",)
HEADERS = {
    "norm": "norm+scale",
    "gemm": "gate GEMM",
    "route_vllm": "routing vLLM",
    "route_ours": "routing ours",
    "chain_vllm": "chain vLLM",
    "chain_ours": "chain ours",
    "fused": "fused",
    "fused_gemm": "fused, GEMM path",
    "fused_pdl": "fused, PDL",
    "empty": "empty launch",
    "fused_operand": "fused, gate operand",
}
#: GateLinear's first tier (``benchmarks.common.ll_gemm``), timed where it would run.
LL_PIECES = ("gemm_ll", "chain_ll")
#: The compiled decoder-layer tail without / with the router's norm (``layer_tail``).
TAIL_PIECES = ("tail", "tail_router")
ANCHOR_PIECES = ("gemm", "gemm_ll", "fused")
HEADERS.update(
    gemm_ll="gate GEMM ll_bf16",
    chain_ll="chain ll_bf16",
    tail="layer tail",
    tail_router="tail + router norm",
)
#: logits of ``ll_bf16_gemm`` vs cuBLAS's, relative to the row's largest |logit|
LL_LOGIT_RTOL = 1e-3
SERVING_FORMULA = (
    "serving-equivalent = (tail + router norm - tail) + gate GEMM (the tier GateLinear "
    "dispatches: ll_bf16 where T <= 16 and it is eligible, else cuBLAS) + routing vLLM; "
    "plugin-equivalent = the same with our routing (the plugin's own chain); "
    "split = (tail + router norm - tail) + fused on the gate operand at the fused-router "
    "policy row's own token counts, else plugin-equivalent"
)
FUSED_IMPL = "vllm_gemma4_router.fused_router.torch_library.fused_router_into (what the op runs)"


def add_router_shape_args(parser: argparse.ArgumentParser) -> None:
    """The router problem both this bench and ``sweep_fused_router`` take: T list, H, E,
    K, eps, dtype (gemma-4-26B-A4B by default)."""
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    parser.add_argument("--hidden", type=int, default=ROUTER_HIDDEN)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--topk", type=int, default=8)
    parser.add_argument("--eps", type=float, default=1e-6, help="gemma-4 rms_norm_eps")
    parser.add_argument("--dtype", default="bfloat16", help="hidden states and weights")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_router_shape_args(parser)
    parser.set_defaults(tokens=None)  # TOKENS, or with --cache/--anchors-only their lists
    parser.add_argument(
        "--layers",
        default=None,
        help="weight sets rotated: 'auto' (3x the L2, at least --min-layers) and/or "
        "numbers, comma-separated (e.g. 'auto,30'); one table each (default auto)",
    )
    parser.add_argument(
        "--cache",
        choices=("hot", "cold", "both"),
        default=None,
        help="hot: --hot-layers sets (L2-resident), cold: 'auto' (from HBM), both: each T "
        "with both; instead of --layers",
    )
    parser.add_argument("--hot-layers", type=int, default=30, help="--cache hot's rotation")
    parser.add_argument(
        "--ll-source",
        default="installed",
        help="vLLM's ll_bf16_gemm: 'installed' (the installed vLLM) or a vLLM source "
        "tree's path (e.g. .cache/vllm-src/vllm-0.34.0), its cute_dsl package loaded by path",
    )
    parser.add_argument(
        "--no-ll", action="store_true", help="skip gemm_ll/chain_ll (reason: --no-ll)"
    )
    parser.add_argument(
        "--no-tail", action="store_true", help="skip the compiled layer tail (serving_equiv)"
    )
    parser.add_argument(
        "--anchors-only",
        action="store_true",
        help="time only gemm (cuBLAS), gemm_ll and fused: bench_router_anchors_* files",
    )
    parser.add_argument("--min-layers", type=int, default=30)
    parser.add_argument("--min-calls", type=int, default=32, help="calls per graph, at least")
    parser.add_argument("--replays", type=int, default=15)
    parser.add_argument(
        "--logit-rtol",
        type=float,
        default=2e-2,
        help="fused vs chain logits, relative to the row's largest |logit|",
    )
    parser.add_argument("--no-compile", action="store_true", help="norm eagerly, no Inductor")
    parser.add_argument(
        "--real-step-estimate",
        action="store_true",
        help="md line: (chain vLLM - fused) x --model-layers at T=16 and T=64",
    )
    parser.add_argument("--model-layers", type=int, default=30, help="routers per decode step")
    parser.add_argument(
        "--producer",
        action="store_true",
        help="a kernel writing the hidden states before every call, its time subtracted",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    if args.cache and args.layers is not None:
        parser.error("--cache and --layers both choose the rotation: give one")
    if args.hot_layers < 1:
        parser.error(f"--hot-layers must be >= 1, got {args.hot_layers}")
    if args.anchors_only and args.cache is None and args.layers is None:
        args.cache = "both"
    if args.tokens is None:
        default = ANCHOR_TOKENS if args.anchors_only else ISSUE_TOKENS if args.cache else TOKENS
        args.tokens = ",".join(map(str, default))
    args.tokens = [int(t) for t in args.tokens.split(",") if t]
    if args.cache:
        hot = str(args.hot_layers)
        args.layers = {"hot": hot, "cold": "auto", "both": f"auto,{hot}"}[args.cache]
    args.layers = [s.strip() for s in (args.layers or "auto").split(",") if s.strip()]
    for spec in args.layers:
        if spec != "auto" and not (spec.isdigit() and int(spec) >= 1):
            parser.error(f"--layers takes 'auto' or positive numbers, got {spec!r}")
    return args


def layer_bytes(hidden: int, experts: int, elt: int) -> int:
    """One layer's router weights: gate weight [E, H], scale [H], per_expert_scale [E]."""
    return (experts * hidden + hidden + experts) * elt


def resolve_layers(specs: list[str], bytes_per_layer: int, l2: int, minimum: int) -> list[int]:
    """``'auto'`` -> ``rotation_sets`` (3x the L2, at least ``minimum``), numbers as given."""
    counts = [rotation_sets(bytes_per_layer, l2, minimum) if s == "auto" else int(s) for s in specs]
    return list(dict.fromkeys(counts))


def weights_location(layers: int, bytes_per_layer: int, l2: int) -> str:
    """Where a pass over ``layers`` weight sets finds them: ``HBM`` (>= 3x the L2),
    ``L2`` (they fit) or ``mixed``."""
    total = layers * bytes_per_layer
    if total >= 3 * l2:
        return "HBM"
    return "L2" if total <= l2 else "mixed"


def router_norm(
    x: torch.Tensor, root_size: torch.Tensor, scale: torch.Tensor, eps: float
) -> torch.Tensor:
    """vLLM's Gemma4Router before its GEMM: weightless RMSNorm, ``* root_size``, ``* scale``."""
    orig_dtype = x.dtype
    y = x.to(torch.float32)
    variance = y.pow(2).mean(dim=-1, keepdim=True)
    y = (y * torch.rsqrt(variance + eps)).to(orig_dtype)
    y = y * root_size.to(y.dtype)
    return y * scale.to(y.dtype)


def gate_gemm(device: torch.device | str) -> tuple[Callable, str]:
    """``(fn(x, w) -> fp32 logits, description)``: ``torch.mm(..., out_dtype=fp32)``
    if this torch has it on ``device``, else ``F.linear(x, w).float()``."""
    x = torch.ones(2, 16, dtype=torch.bfloat16, device=device)
    try:
        if torch.mm(x, x.t(), out_dtype=torch.float32).dtype == torch.float32:
            return (
                lambda x, w: torch.mm(x, w.t(), out_dtype=torch.float32),
                "torch.mm(x, w.t(), out_dtype=torch.float32)",
            )
    except (TypeError, RuntimeError):  # NotImplementedError is a RuntimeError
        pass
    return (
        lambda x, w: torch.nn.functional.linear(x, w).float(),
        "F.linear(x, w).float() (this torch has no torch.mm out_dtype here)",
    )


@dataclass
class Router:
    """Everything one T's pieces call: the weight sets and the four implementations."""

    weights: list[torch.Tensor]  # [E, H] per layer
    scales: list[torch.Tensor]  # [H]
    expert_scales: list[torch.Tensor]  # [E]
    root_size: torch.Tensor  # 0-d, H**-0.5 (vLLM's buffer)
    eps: float
    topk: int
    norm: Callable
    gemm: Callable
    route_vllm: Callable
    route_ours: Callable
    fused: Callable
    fused_gemm: Callable  # the op's GEMM path at every T: where it beats the kernel
    fused_pdl: Callable  # the op's split launch with PDL; None where the op has none
    #: vLLM's ll_bf16_gemm as GateLinear calls it, or why not (None: not asked for)
    ll: LLGemm | None = None
    #: compiled decoder-layer tail without / with the router norm (None: not timed)
    tail: Callable | None = None
    tail_router: Callable | None = None
    tail_weights: tuple[torch.Tensor, ...] = ()  # post_attn, pre_ff, pre_ff_2 norm weights
    #: the split fused router's own token counts (policy row); None: no row splits
    own_tokens: tuple[tuple[int, int | None], ...] | None = None
    #: fn(h, x_gate, s, w, pes, eps, topk): the split router's own-count path; None: untimed
    fused_operand: Callable | None = None

    def ll_eligible(self, num_tokens: int) -> bool:
        """Whether GateLinear would dispatch ``ll_bf16_gemm`` at ``num_tokens``."""
        return self.ll is not None and self.ll.eligible(num_tokens)

    def gemm_tier(self, num_tokens: int) -> Callable:
        """The gate GEMM GateLinear dispatches at ``num_tokens``: ll_bf16 or cuBLAS."""
        return self.ll.fn if self.ll_eligible(num_tokens) else self.gemm


def rms_norm_weighted(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """vLLM's RMSNorm with a weight (``ir.ops.rms_norm``'s native code): x.float(),
    x * rsqrt(mean(x^2) + eps), cast to the weight's dtype, * weight, back to x's dtype."""
    orig_dtype = x.dtype
    y = x.to(torch.float32)
    y = y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (y.to(weight.dtype) * weight).to(orig_dtype)


def layer_tail(
    attn_out: torch.Tensor,
    residual: torch.Tensor,
    w_post_attn: torch.Tensor,
    w_pre_ff: torch.Tensor,
    w_pre_ff_2: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gemma4DecoderLayer.forward (vLLM 0.34.0) between the attention's output and the
    MLP/MoE GEMMs, written here: ``h = post_attention_layernorm(attn_out) + residual``
    (the new residual), ``pre_feedforward_layernorm(h)`` (the MLP's input) and
    ``pre_feedforward_layernorm_2(h)`` (the experts' input). Returns all three."""
    h = rms_norm_weighted(attn_out, w_post_attn, eps) + residual
    return h, rms_norm_weighted(h, w_pre_ff, eps), rms_norm_weighted(h, w_pre_ff_2, eps)


def layer_tail_router(
    attn_out: torch.Tensor,
    residual: torch.Tensor,
    w_post_attn: torch.Tensor,
    w_pre_ff: torch.Tensor,
    w_pre_ff_2: torch.Tensor,
    eps: float,
    root_size: torch.Tensor,
    scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`layer_tail` plus the router's norm of the new residual (``router(residual)``
    before its GEMM: :func:`router_norm`), one more consumer in the same graph."""
    h, mlp_in, moe_in = layer_tail(attn_out, residual, w_post_attn, w_pre_ff, w_pre_ff_2, eps)
    return h, mlp_in, moe_in, router_norm(h, root_size, scale, eps)


def make_layer_sets(count, hidden, experts, dtype, device, generator=None):
    """``count`` layers' router weights. Gate weights ~ N(0, 0.02^2) (as
    ``common.make_logits``); scale ~ U(32, 96), so the logits' std is ~1.3; the
    per-expert scale ~ U(0.5, 1.5); all in ``dtype``, as vLLM loads them."""

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=device)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=device)

    weights = [(randn(experts, hidden) * 0.02).to(dtype) for _ in range(count)]
    scales = [((rand(hidden) + 0.5) * 64).to(dtype) for _ in range(count)]
    expert_scales = [(rand(experts) + 0.5).to(dtype) for _ in range(count)]
    return weights, scales, expert_scales


def logit_error(logits: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest ``|logits - expected|`` of a row over the row's largest ``|expected|``."""
    diff = (logits.float() - expected.float()).abs().amax(dim=1)
    rowmax = expected.float().abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    return float((diff / rowmax).max()) if logits.numel() else 0.0


def check_point(router: Router, hidden_states: torch.Tensor, logit_rtol: float) -> dict:
    """The fused op at layer 0 against our routing of its own logits and the chain's logits.

    Returns ``check`` ('ok' or 'FAIL: ...'), ``logit_err`` (:func:`logit_error`
    against the chain) and ``ids_vs_chain`` (fraction of tokens whose K experts,
    as a set, are those our routing picks from the chain's logits: near-ties
    may differ, information only)."""
    r, k = router, router.topk
    s, w, p = r.scales[0], r.weights[0], r.expert_scales[0]
    chain_logits = r.gemm(r.norm(hidden_states, r.root_size, s, r.eps), w)
    logits, weights, ids = r.fused(hidden_states, s, w, p, r.eps, k)
    own_w, own_ids = r.route_ours(logits, k, p)
    _, chain_ids = r.route_ours(chain_logits, k, p)
    problems = []
    if not torch.equal(ids.to(torch.int32), own_ids.to(torch.int32)):
        problems.append("ids != our routing of its logits")
    elif not torch.allclose(weights.float(), own_w.float(), rtol=1e-5, atol=1e-6):
        problems.append("weights != our routing of its logits")
    err = logit_error(logits, chain_logits)
    if not err <= logit_rtol:  # NaN fails too
        problems.append(f"logits {err:.3g} > {logit_rtol:g} of row max")
    pdl_out = r.fused_pdl(hidden_states, s, w, p, r.eps, k)
    if pdl_out is not None and not all(map(torch.equal, pdl_out, (logits, weights, ids))):
        problems.append("PDL launch != the op's bits")
    if r.fused_operand is not None:
        # the split router's own path on the gate's operand: the gate's logits (fp32 sums
        # in another order), routed exactly
        normed = r.norm(hidden_states, r.root_size, s, r.eps)
        op_logits, op_w, op_ids = r.fused_operand(hidden_states, normed, s, w, p, r.eps, k)
        want_w, want_ids = r.route_ours(op_logits, k, p)
        if not torch.equal(op_ids.to(torch.int32), want_ids.to(torch.int32)):
            problems.append("gate operand: ids != our routing of its logits")
        elif not torch.allclose(op_w.float(), want_w.float(), rtol=1e-5, atol=1e-6):
            problems.append("gate operand: weights != our routing of its logits")
        operand_err = logit_error(op_logits, r.gemm(normed, w))
        if not operand_err <= logit_rtol:
            problems.append(f"gate operand: logits {operand_err:.3g} > {logit_rtol:g} of row max")
    ll_err = float("nan")
    num_tokens = hidden_states.shape[0]
    if r.ll_eligible(num_tokens):
        normed = r.norm(hidden_states, r.root_size, s, r.eps)
        if not normed.is_contiguous():  # GateLinear hands it the norm's contiguous output
            problems.append("normed input not contiguous")
        ll_err = logit_error(r.ll.fn(normed, w), r.gemm(normed, w))
        if not ll_err <= LL_LOGIT_RTOL:
            problems.append(f"ll_bf16 logits {ll_err:.3g} > {LL_LOGIT_RTOL:g} of row max")
    same_set = ids.long().sort(dim=1).values == chain_ids.long().sort(dim=1).values
    agree = float(same_set.all(dim=1).float().mean()) if ids.numel() else 1.0
    check = "ok" if not problems else "FAIL: " + "; ".join(problems)
    return dict(
        check=check,
        logit_err=round(err, 5),
        ids_vs_chain=round(agree, 4),
        **({"ll_err": round(ll_err, 7)} if r.ll is not None else {}),
    )


def pieces(router: Router, hidden_states: torch.Tensor, empty: Callable[[], object]) -> dict:
    """``{piece: fn(layer)}``; ``norm``/``gemm``/routing alone read layer 0's upstream output.
    ``fused_pdl`` only where the op launches a split row."""
    r, h, k = router, hidden_states, router.topk
    normed = r.norm(h, r.root_size, r.scales[0], r.eps)
    logits = r.gemm(normed, r.weights[0])

    def chain(route):
        return lambda i: route(
            r.gemm(r.norm(h, r.root_size, r.scales[i], r.eps), r.weights[i]),
            k,
            r.expert_scales[i],
        )

    fns = {
        "norm": lambda i: r.norm(h, r.root_size, r.scales[i], r.eps),
        "gemm": lambda i: r.gemm(normed, r.weights[i]),
        "route_vllm": lambda i: r.route_vllm(logits, k, r.expert_scales[i]),
        "route_ours": lambda i: r.route_ours(logits, k, r.expert_scales[i]),
        "chain_vllm": chain(r.route_vllm),
        "chain_ours": chain(r.route_ours),
        "fused": lambda i: r.fused(h, r.scales[i], r.weights[i], r.expert_scales[i], r.eps, k),
        "fused_gemm": lambda i: r.fused_gemm(
            h, r.scales[i], r.weights[i], r.expert_scales[i], r.eps, k
        ),
        "fused_pdl": lambda i: r.fused_pdl(
            h, r.scales[i], r.weights[i], r.expert_scales[i], r.eps, k
        ),
        "empty": lambda i: empty(),
    }
    if r.fused_pdl(h, r.scales[0], r.weights[0], r.expert_scales[0], r.eps, k) is None:
        del fns["fused_pdl"]
    if r.fused_operand is not None:  # the operand: vLLM's lines' output for layer 0
        fns["fused_operand"] = lambda i: r.fused_operand(
            h, normed, r.scales[i], r.weights[i], r.expert_scales[i], r.eps, k
        )
    if r.ll_eligible(h.shape[0]):
        ll = r.ll.fn
        fns["gemm_ll"] = lambda i: ll(normed, r.weights[i])
        fns["chain_ll"] = lambda i: r.route_vllm(
            ll(r.norm(h, r.root_size, r.scales[i], r.eps), r.weights[i]), k, r.expert_scales[i]
        )
    return fns


def tail_pieces(router: Router, hidden_states: torch.Tensor, generator=None) -> dict:
    """``{"tail": fn(layer), "tail_router": fn(layer)}`` (the compiled :func:`layer_tail`
    without and with the router's norm, layer ``i``'s router scale), on an attention
    output like ``hidden_states`` and ``hidden_states`` as the residual; ``{}`` where
    the router has no tail."""
    r, h = router, hidden_states
    if r.tail is None or r.tail_router is None:
        return {}
    attn_out = torch.randn(h.shape, generator=generator, device=h.device).to(h.dtype)
    w1, w2, w3 = r.tail_weights
    return {
        "tail": lambda i: r.tail(attn_out, h, w1, w2, w3, r.eps),
        "tail_router": lambda i: r.tail_router(
            attn_out, h, w1, w2, w3, r.eps, r.root_size, r.scales[i]
        ),
    }


def with_producer(fns: dict, hidden_states: torch.Tensor) -> dict:
    """``fns`` each preceded by a kernel writing ``hidden_states`` (``common.producer_of``),
    plus ``producer`` alone."""
    produce, preceded = producer_of(hidden_states)
    return {"producer": lambda i: produce(), **{name: preceded(fn) for name, fn in fns.items()}}


def measure_point(
    router: Router,
    num_tokens: int,
    layer_counts: list[int],
    bytes_per_layer: int,
    l2: int,
    timer: Callable[[Callable[[int], object], int], float],
    empty: Callable[[], object],
    logit_rtol: float,
    dtype: torch.dtype,
    device,
    generator=None,
    producer: bool = False,
    only: tuple[str, ...] | None = None,
) -> list[dict]:
    """One row per layer count at ``T = num_tokens``: the check, then every piece timed
    (``producer``: :func:`with_producer`, its time subtracted; ``producer_us`` the row's).

    Where the router has ``ll``, the rows also hold ``gemm_ll_us``/``chain_ll_us``
    (NaN where GateLinear would not dispatch it) and ``gemm_tier``; where it has a
    tail, ``tail_us``, ``tail_router_us`` (timed without the producer: the tail is
    what produces the hidden states), ``norm_marginal_us``, ``serving_equiv_us`` and
    ``serving_over_fused`` (:data:`SERVING_FORMULA`). ``only``: time just these
    pieces (``--anchors-only``), the others' columns left out."""
    hidden = router.weights[0].shape[1]
    h = torch.randn(num_tokens, hidden, generator=generator, device=device).to(dtype)
    check = check_point(router, h, logit_rtol)
    if check["check"] != "ok":
        print(f"\nWARNING T={num_tokens}: {check['check']}", flush=True)
    fns = pieces(router, h, empty)
    tails = tail_pieces(router, h, generator) if only is None else {}
    if only is not None:
        fns = {name: fn for name, fn in fns.items() if name in only}
    if producer:
        fns = with_producer(fns, h)
    columns = list(only) if only is not None else list(PIECES)
    if only is None and router.ll is not None:
        columns += LL_PIECES
    if tails:
        columns += TAIL_PIECES
    if only is None and router.fused_operand is not None:
        columns += OPERAND_PIECES
    rows = []
    for layers in layer_counts:
        us = {name: timer(fn, layers) for name, fn in fns.items()}
        base = us.pop("producer", 0.0)
        us = {name: us[name] - base if name in us else float("nan") for name in columns}
        us.update({name: timer(fn, layers) for name, fn in tails.items()})
        row = dict(
            T=num_tokens,
            layers=layers,
            weights_from=weights_location(layers, bytes_per_layer, l2),
            weights_MB=round(layers * bytes_per_layer / 1e6, 1),
            **{f"{name}_us": round(v, 3) for name, v in us.items()},
            **({"producer_us": round(base, 3)} if producer else {}),
        )
        if "chain_vllm" in us:
            row["vllm_over_fused"] = round(us["chain_vllm"] / us["fused"], 3)
            row["ours_over_fused"] = round(us["chain_ours"] / us["fused"], 3)
        if router.ll is not None:
            row["gemm_tier"] = "ll_bf16" if router.ll_eligible(num_tokens) else "cuBLAS"
            if "gemm_ll" in us and "gemm" in us:
                row["ll_over_cublas"] = round(us["gemm_ll"] / us["gemm"], 3)
        if tails:
            tier = us["gemm_ll"] if router.ll_eligible(num_tokens) else us["gemm"]
            marginal = us["tail_router"] - us["tail"]
            serving = marginal + tier + us["route_vllm"]
            plugin = marginal + tier + us["route_ours"]
            row["norm_marginal_us"] = round(marginal, 3)
            row["serving_equiv_us"] = round(serving, 3)
            row["serving_over_fused"] = round(serving / us["fused"], 3)
            row["plugin_equiv_us"] = round(plugin, 3)
            row["plugin_over_fused"] = round(plugin / us["fused"], 3)
            if router.own_tokens is not None:
                own = takes_own_kernel(num_tokens, router.own_tokens)
                kernel = us["fused_operand"] if router.fused_operand is not None else us["fused"]
                split = marginal + kernel if own else plugin
                row["split_branch"] = "own kernel" if own else "gate tier"
                row["split_equiv_us"] = round(split, 3)
                row["plugin_over_split"] = round(plugin / split, 3)
        rows.append({**row, **check})
    return rows


def _empty_launcher() -> Callable[[], object]:
    import triton

    @triton.jit
    def _empty_kernel():
        pass

    return lambda: _empty_kernel[(1,)]()


def load_fused() -> tuple[Callable, Callable, Callable]:
    """What our fused router op runs (``FUSED_IMPL``: the kernel, its GEMM path or its
    CUDA decode build, where the op takes those), its GEMM path alone, and the op's split
    launch with programmatic dependent launch (``None`` where the op launches no split
    Triton row),
    each as ``fn(h, s, w, pes, eps, topk) -> (logits, weights, ids)``; no
    fallback: a missing op fails the run."""
    from vllm_gemma4_router.fused_router.cuda_decode.launcher import decode_path_takes
    from vllm_gemma4_router.fused_router.gemm_path import route_by_gemm
    from vllm_gemma4_router.fused_router.handover import new_packed, unpack
    from vllm_gemma4_router.fused_router.launch_table import (
        DECODE_PATH,
        GEMM_PATH_TOKENS,
        fused_launch_config,
        is_split,
    )
    from vllm_gemma4_router.fused_router.launcher import launch_with_config
    from vllm_gemma4_router.fused_router.torch_library import fused_router_into

    def pdl_twin(num_tokens: int, hidden: int, num_experts: int):
        """The op's split row at T with PDL on, or ``None`` where the op launches none."""
        config = fused_launch_config(num_tokens, hidden, num_experts)
        if num_tokens in GEMM_PATH_TOKENS or not is_split(config, hidden, num_experts):
            return None
        return config._replace(pdl=True)

    def into_new_buffer(compute):
        def run(hidden_states, scale, gate_weight, per_expert_scale, eps, topk):
            num_tokens, num_experts = hidden_states.shape[0], gate_weight.shape[0]
            packed = new_packed(num_tokens, num_experts, topk, hidden_states.device)
            out = unpack(packed, num_tokens, num_experts, topk)
            compute(hidden_states, scale, gate_weight, per_expert_scale, eps, topk, out)
            return out

        return run

    def launch_pdl_twin(hidden_states, scale, gate_weight, *args):
        config = pdl_twin(*hidden_states.shape, gate_weight.shape[0])
        launch_with_config(config, hidden_states, scale, gate_weight, *args)

    run_pdl_twin = into_new_buffer(launch_pdl_twin)

    def fused_pdl(hidden_states, scale, gate_weight, per_expert_scale, eps, topk):
        if pdl_twin(*hidden_states.shape, gate_weight.shape[0]) is None:
            return None
        # the op's own test: there it launches the CUDA build, which has no Triton twin
        build = DECODE_PATH.build_for(hidden_states.shape[0])
        if build is not None and decode_path_takes(
            build, hidden_states, scale, gate_weight, per_expert_scale, topk
        ):
            return None
        return run_pdl_twin(hidden_states, scale, gate_weight, per_expert_scale, eps, topk)

    return into_new_buffer(fused_router_into), into_new_buffer(route_by_gemm), fused_pdl


def build_router(args, device, generator=None) -> tuple[Router, dict[str, str], int]:
    """The GPU run's Router, what each piece is (stamp entries), and the weight sets made."""
    from benchmarks.common.peer_kernels import load_vllm_router
    from vllm_gemma4_router import gemma4_routing_triton

    dtype = getattr(torch, args.dtype)
    bytes_per_layer = layer_bytes(args.hidden, args.experts, dtype.itemsize)
    counts = resolve_layers(args.layers, bytes_per_layer, l2_bytes(), args.min_layers)
    weights, scales, expert_scales = make_layer_sets(
        max(counts), args.hidden, args.experts, dtype, device, generator
    )
    vllm_label, route_vllm = load_vllm_router()
    gemm, gemm_label = gate_gemm(device)
    if args.no_compile:
        norm, norm_label = router_norm, "eager torch"
    else:
        norm = torch.compile(router_norm, fullgraph=True)
        norm_label = "torch.compile (Inductor), token dim dynamic"
        # Compile once with a dynamic token dim, as vLLM's graph (T=1 may specialise).
        x = torch.randn(64, args.hidden, device=device).to(dtype)
        torch._dynamo.maybe_mark_dynamic(x, 0)
        norm(x, torch.tensor(args.hidden**-0.5, device=device).to(dtype), scales[0], args.eps)
    fused, fused_gemm, fused_pdl = load_fused()
    fused_operand = load_fused_operand()
    ll = load_ll(args, device, dtype)
    tail = tail_router = None
    tail_weights: tuple[torch.Tensor, ...] = ()
    if not (args.no_tail or args.anchors_only):
        tail, tail_router, tail_weights, tail_label = compiled_tails(args, device, dtype, scales[0])
    router = Router(
        weights=weights,
        scales=scales,
        expert_scales=expert_scales,
        root_size=torch.tensor(args.hidden**-0.5, device=device).to(dtype),
        eps=args.eps,
        topk=args.topk,
        norm=norm,
        gemm=gemm,
        route_vllm=route_vllm,
        route_ours=gemma4_routing_triton,
        fused=fused,
        fused_gemm=fused_gemm,
        fused_pdl=fused_pdl,
        ll=ll,
        tail=tail,
        tail_router=tail_router,
        tail_weights=tail_weights,
        fused_operand=fused_operand,
    )
    labels = dict(
        impl_norm=norm_label,
        impl_gemm=gemm_label,
        impl_route_vllm=vllm_label,
        impl_route_ours="vllm_gemma4_router.gemma4_routing_triton",
        impl_fused=FUSED_IMPL,
        impl_gemm_ll=ll.label,
        gemm_ll_vllm=ll.vllm_version,
        gemm_ll_cutlass_dsl=ll.cutlass_dsl,
        gemm_ll_skipped=ll.reason or f"T > {ll.max_tokens} (GateLinear dispatches cuBLAS)",
    )
    if tail is not None:
        labels["impl_tail"] = tail_label
        router.own_tokens, labels["split_policy"] = split_policy(device)
    return router, labels, counts


def split_policy(device) -> tuple[tuple[tuple[int, int | None], ...] | None, str]:
    """The split fused router's own token counts under the installed vLLM on ``device``
    (its fused-router policy row), and a stamp entry naming the row's release and counts."""
    from importlib.metadata import PackageNotFoundError, version

    from vllm_gemma4_router.integration.op_policy import (
        fused_router_own_tokens,
        platform_family,
    )

    try:
        vllm_version = version("vllm")
    except PackageNotFoundError:
        return None, "no split column: vLLM is not installed"
    family = platform_family("cuda", torch.cuda.get_device_capability(device))
    own = fused_router_own_tokens(family, vllm_version)
    if own is None:
        return None, f"no split column: no {family} row for vLLM {vllm_version} splits"
    # no commas: the stamp is one comma-separated line
    ranges = " and ".join(f"{first}-{'' if last is None else last}" for first, last in own)
    return own, f"{family} vLLM {vllm_version}: own kernel at T = {ranges}"


def load_fused_operand() -> Callable:
    """The split router's own-count path (``fused_router_into`` with ``operand``) as
    ``fn(h, x_gate, s, w, pes, eps, topk) -> (logits, weights, ids)``, into a new buffer."""
    from vllm_gemma4_router.fused_router.handover import new_packed, unpack
    from vllm_gemma4_router.fused_router.torch_library import fused_router_into

    def run(hidden_states, x_gate, scale, gate_weight, per_expert_scale, eps, topk):
        num_tokens, num_experts = hidden_states.shape[0], gate_weight.shape[0]
        out = unpack(new_packed(num_tokens, num_experts, topk, hidden_states.device),
                     num_tokens, num_experts, topk)  # fmt: skip
        fused_router_into(hidden_states, scale, gate_weight, per_expert_scale, eps, topk, out,
                          operand=x_gate)  # fmt: skip
        return out

    return run


def load_ll(args, device, dtype) -> LLGemm:
    """vLLM's ``ll_bf16_gemm`` from ``--ll-source`` (``--no-ll``: none, that the reason)."""
    if args.no_ll:
        return LLGemm(None, "not asked for", "--no-ll")
    capability = torch.cuda.get_device_capability(device) if torch.cuda.is_available() else None
    ll = load_ll_gemm(args.ll_source, capability, args.hidden, dtype)
    print(f"gemm_ll: {ll.label}" + (f": not run, {ll.reason}" if ll.reason else ""), flush=True)
    return ll


def compiled_tails(args, device, dtype, scale) -> tuple[Callable, Callable, tuple, str]:
    """:func:`layer_tail` and :func:`layer_tail_router` under ``torch.compile`` (or eager
    with ``--no-compile``), each compiled once with a dynamic token dim as vLLM's graph,
    the three norm weights (bf16, ~1), and what they are (a stamp entry)."""
    weights = tuple(
        (1.0 + 0.1 * torch.randn(args.hidden, device=device)).to(dtype) for _ in range(3)
    )
    if args.no_compile:
        return layer_tail, layer_tail_router, weights, "eager torch"
    tail = torch.compile(layer_tail, fullgraph=True)
    tail_router = torch.compile(layer_tail_router, fullgraph=True)
    x = torch.randn(64, args.hidden, device=device).to(dtype)
    res = torch.randn(64, args.hidden, device=device).to(dtype)
    for t in (x, res):
        torch._dynamo.maybe_mark_dynamic(t, 0)
    root_size = torch.tensor(args.hidden**-0.5, device=device).to(dtype)
    tail(x, res, *weights, args.eps)
    tail_router(x, res, *weights, args.eps, root_size, scale)
    label = (
        "torch.compile (Inductor), token dim dynamic: post_attention_layernorm + residual, "
        "pre_feedforward_layernorm, pre_feedforward_layernorm_2 [+ router norm]"
    )
    return tail, tail_router, weights, label


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_router times CUDA graphs: it needs an NVIDIA GPU")
    torch.manual_seed(args.seed)
    device = torch.device("cuda")
    dtype = getattr(torch, args.dtype)
    stamp = environment_stamp()
    l2 = l2_bytes()
    bytes_per_layer = layer_bytes(args.hidden, args.experts, dtype.itemsize)
    router, labels, counts = build_router(args, device)
    stamp.update(labels)
    copy_gbs = copy_bandwidth_gbs()
    stamp.update(
        copy_floor_GBps=f"{copy_gbs:.0f}",
        L2_bytes=str(l2),
        layer_bytes=str(bytes_per_layer),
        layers="/".join(map(str, counts)),
        shape=f"H={args.hidden} E={args.experts} K={args.topk} {args.dtype} eps={args.eps:g}",
        graph=f"{args.replays} replays, calls per graph "
        + "/".join(str(rotation_calls(n, args.min_calls)) for n in counts),
        logit_rtol=f"{args.logit_rtol:g}",
        producer="hidden-states copy before every call, subtracted" if args.producer else "none",
        cache=args.cache or "--layers",
    )
    print(stamp, flush=True)
    print(
        f"copy floor {copy_gbs:.0f} GB/s; L2 {l2 / 2**20:.0f} MiB; "
        f"{bytes_per_layer / 1e3:.0f} KB per layer; layers {counts}",
        flush=True,
    )
    empty = _empty_launcher()

    def timer(fn, layers):
        return bench_rotated(fn, layers, replays=args.replays, min_calls=args.min_calls)

    rows = []
    for n, num_tokens in enumerate(args.tokens):
        print(f"\r[{n}/{len(args.tokens)}] T={num_tokens}   ", end="", flush=True)
        rows += measure_point(
            router,
            num_tokens,
            counts,
            bytes_per_layer,
            l2,
            timer,
            empty,
            args.logit_rtol,
            dtype,
            device,
            producer=args.producer,
            only=ANCHOR_PIECES if args.anchors_only else None,
        )
    print(f"\r[{len(args.tokens)}/{len(args.tokens)}] done", flush=True)
    tag = args.tag or default_tag(args)
    if args.anchors_only:
        base = write_anchor_results(rows, stamp, Path(args.out), tag)
        print(f"wrote {base}.csv/.md")
        print("\n".join(anchor_table_lines(rows)))
        return
    base = write_results(
        rows, stamp, Path(args.out), tag, args.model_layers if args.real_step_estimate else None
    )
    print(f"wrote {base}.csv/.md" + ("/.png" if Path(f"{base}.png").exists() else ""))
    print("\n".join(summary_lines(rows, args.model_layers if args.real_step_estimate else None)))


def default_tag(args) -> str:
    """The file tag without ``--tag``: the rotation (``cache-both``, ``L30``; none for
    the default ``auto``), ``producer`` where asked for."""
    parts = []
    if args.cache:
        parts.append(f"cache-{args.cache}")
    elif args.layers != ["auto"]:
        parts.append("L" + "-".join(args.layers))
    if args.producer and (args.cache or args.anchors_only):
        parts.append("producer")
    return "_".join(parts)


def result_base(stamp: dict[str, str], out: Path, tag: str, kind: str = "bench_router") -> Path:
    """``out/<kind>_<device>_<date>[_<tag>]`` (no suffix)."""
    date = stamp.get("date", "undated")[:10]
    name = f"{kind}_{device_slug(stamp)}_{date}".replace(" ", "_")
    return out / (name + (f"_{tag}" if tag else ""))


def _fmt(value: float) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"


def _present(rows: list[dict], names) -> list[str]:
    """Those of ``names`` whose ``<name>_us`` column the rows have."""
    return [p for p in names if any(f"{p}_us" in r for r in rows)]


def _ratio(num: float | None, den: float | None) -> str:
    if num is None or den is None or num != num or den != den or not den:
        return "-"
    return f"{num / den:.2f}x"


def table_lines(rows: list[dict], layers: int) -> list[str]:
    """The markdown table of one layer count: every piece, the two ratios (and chain
    ll_bf16 / fused where the rows have it), the check."""
    mine = sorted((r for r in rows if r["layers"] == layers), key=lambda r: r["T"])
    shown = _present(mine, PIECES + OPERAND_PIECES + LL_PIECES)
    with_ll = "chain_ll" in shown
    head = ["T", *(HEADERS[p] for p in shown), "chain vLLM / fused", "chain ours / fused"]
    head += ["chain ll_bf16 / fused"] if with_ll else []
    cells = [
        [r["T"], *(_fmt(r.get(f"{p}_us")) for p in shown)]
        + [f"{r['vllm_over_fused']:.2f}x", f"{r['ours_over_fused']:.2f}x"]
        + ([_ratio(r.get("chain_ll_us"), r["fused_us"])] if with_ll else [])
        + [r["check"]]
        for r in mine
    ]
    align = ["right"] * len(head) + ["left"]
    return markdown_table([*head, "check"], cells, align).splitlines()


def serving_table_lines(rows: list[dict], layers: int) -> list[str]:
    """The serving-equivalent table of one layer count (rows with ``serving_equiv_us``),
    :data:`SERVING_FORMULA` above it; ``[]`` where no row has it."""
    mine = sorted(
        (r for r in rows if r["layers"] == layers and "serving_equiv_us" in r), key=lambda r: r["T"]
    )
    if not mine:
        return []
    head = [
        "T",
        "layer tail",
        "tail + router norm",
        "router norm, marginal",
        "GEMM tier",
        "gate GEMM (tier)",
        "routing vLLM",
        "serving-equivalent",
        "routing ours",
        "plugin-equivalent",
        "fused",
        "serving-equiv / fused",
        "plugin-equiv / fused",
    ]
    split = any("split_equiv_us" in r for r in mine)
    if split:
        head += ["split (branch)", "plugin-equiv / split"]
    cells = []
    for r in mine:
        tier = r.get("gemm_tier", "cuBLAS")
        gemm = r.get("gemm_ll_us") if tier == "ll_bf16" else r["gemm_us"]
        cells.append(
            [
                r["T"],
                _fmt(r["tail_us"]),
                _fmt(r["tail_router_us"]),
                _fmt(r["norm_marginal_us"]),
                tier,
                _fmt(gemm),
                _fmt(r["route_vllm_us"]),
                _fmt(r["serving_equiv_us"]),
                _fmt(r.get("route_ours_us", float("nan"))),
                _fmt(r.get("plugin_equiv_us", float("nan"))),
                _fmt(r["fused_us"]),
                _ratio(r["serving_equiv_us"], r["fused_us"]),
                _ratio(r.get("plugin_equiv_us", float("nan")), r["fused_us"]),
            ]
        )
        if split:
            cells[-1] += [
                f"{_fmt(r['split_equiv_us'])} ({r['split_branch']})",
                _ratio(r["plugin_equiv_us"], r["split_equiv_us"]),
            ]
    align = ["right"] * 4 + ["left"] + ["right"] * (10 if split else 8)
    return [SERVING_FORMULA + ".", "", *markdown_table(head, cells, align).splitlines()]


def anchor_table_lines(rows: list[dict]) -> list[str]:
    """``--anchors-only``: per layer count, T | cuBLAS | ll_bf16 | fused | ll / cuBLAS | check."""
    lines = []
    for layers in sorted({r["layers"] for r in rows}, reverse=True):
        mine = sorted((r for r in rows if r["layers"] == layers), key=lambda r: r["T"])
        lines += [
            "",
            f"L={layers} weight sets ({mine[0]['weights_from']}), median us per call:",
            "",
        ]
        head = ["T", "gate GEMM cuBLAS", "gate GEMM ll_bf16", "fused", "ll_bf16 / cuBLAS", "check"]
        cells = [
            [
                r["T"],
                _fmt(r.get("gemm_us")),
                _fmt(r.get("gemm_ll_us")),
                _fmt(r.get("fused_us")),
                _ratio(r.get("gemm_ll_us"), r.get("gemm_us")),
                r["check"],
            ]
            for r in mine
        ]
        lines += markdown_table(head, cells, ["right"] * 5 + ["left"]).splitlines()
    return lines


def ll_note(stamp: dict[str, str]) -> str | None:
    """The md's one line on ``gemm_ll``: where it came from and where it is ``-``."""
    if "impl_gemm_ll" not in stamp:
        return None
    return (
        f"gate GEMM ll_bf16 / chain ll_bf16: {stamp['impl_gemm_ll']}, called as GateLinear "
        "calls it (ll_bf16_gemm(x, weight), x the norm's contiguous bf16 output), chain = "
        f"norm + it + routing vLLM; `-` where: {stamp.get('gemm_ll_skipped', '?')}."
    )


SHORT_COLUMNS = (
    ("gemm_us", "cuBLAS"),
    ("gemm_ll_us", "ll_bf16"),
    ("chain_vllm_us", "chain cuBLAS"),
    ("chain_ll_us", "chain ll"),
    ("serving_equiv_us", "serving-eq"),
    ("plugin_equiv_us", "plugin-eq"),
    ("fused_us", "fused"),
    ("fused_operand_us", "fused operand"),
    ("split_equiv_us", "split"),
)


def read_csv_rows(path: str | Path) -> list[dict]:
    """A stamped CSV of this bench back as rows (numbers as int/float, the rest str)."""
    import csv

    lines = [line for line in Path(path).read_text().splitlines() if not line.startswith("#")]
    rows = []
    for raw in csv.DictReader(lines):
        row = {}
        for key, value in raw.items():
            try:
                row[key] = int(value)
            except ValueError:
                try:
                    row[key] = float(value)
                except ValueError:
                    row[key] = value
        rows.append(row)
    return rows


def short_table_lines(rows: list[dict]) -> list[str]:
    """The device call's last lines: per row T, L, where the weights were, the GEMMs,
    the chains, serving-equivalent and fused (those columns the rows have), check."""
    shown = [(key, name) for key, name in SHORT_COLUMNS if any(key in r for r in rows)]
    head = ["T", "L", "weights", *(name for _, name in shown), "check"]
    cells = [
        [r["T"], r["layers"], r["weights_from"], *(_fmt(r.get(key)) for key, _ in shown)]
        + [str(r.get("check", ""))[:40]]
        for r in sorted(rows, key=lambda r: (-r["layers"], r["T"]))
    ]
    align = ["right", "right", "left"] + ["right"] * len(shown) + ["left"]
    return markdown_table(head, cells, align).splitlines()


def real_step_line(rows: list[dict], layers: int, model_layers: int) -> str | None:
    """``(chain vLLM - fused) x model_layers`` per decode step at T=16 and T=64."""
    by_t = {r["T"]: r for r in rows if r["layers"] == layers}
    parts = [
        f"T={t}: {(by_t[t]['chain_vllm_us'] - by_t[t]['fused_us']) * model_layers:.1f} us"
        for t in (16, 64)
        if t in by_t
    ]
    if not parts:
        return None
    return (
        f"Real-step estimate, L={layers}: (chain vLLM - fused) x {model_layers} router "
        f"layers per decode step: {'; '.join(parts)}."
    )


def summary_lines(rows: list[dict], model_layers: int | None) -> list[str]:
    """What ``main`` prints last: per layer count its table (us per layer), the
    geomean ratios and the real-step estimate (if asked for)."""
    lines = []
    for layers in sorted({r["layers"] for r in rows}, reverse=True):
        mine = [r for r in rows if r["layers"] == layers]
        where = mine[0]["weights_from"]
        lines += ["", f"L={layers} weight sets ({where}), median us per layer:", ""]
        lines += table_lines(rows, layers)
        serving = serving_table_lines(rows, layers)
        lines += ["", *serving] if serving else []
        lines.append(
            f"geomean chain vLLM / fused {geomean(r['vllm_over_fused'] for r in mine):.2f}x, "
            f"chain ours / fused {geomean(r['ours_over_fused'] for r in mine):.2f}x"
        )
        if model_layers:
            line = real_step_line(rows, layers, model_layers)
            if line:
                lines.append(line)
    return lines


def write_results(
    rows: list[dict], stamp: dict[str, str], out: Path, tag: str, model_layers: int | None
) -> Path:
    """CSV (stamped), markdown and PNG at :func:`result_base`; returns that base."""
    out.mkdir(parents=True, exist_ok=True)
    base = result_base(stamp, out, tag)
    write_stamped_csv(f"{base}.csv", stamp, rows)
    l2 = int(stamp.get("L2_bytes", 0) or 0)
    lines = [
        f"# Gemma 4 router per layer: vLLM's unfused chain vs the fused op ({device_name(stamp)})",
        "",
        ", ".join(f"{k}={v}" for k, v in stamp.items()),
        "",
        f"Shape {stamp.get('shape', '?')}. Pieces as vLLM 0.24 runs them: norm+scale "
        f"({stamp.get('impl_norm', '?')}: weightless RMSNorm, * H**-0.5, * scale), "
        f"gate GEMM ({stamp.get('impl_gemm', '?')}), routing vLLM "
        f"({stamp.get('impl_route_vllm', '?')}) and ours; chain = the three one after "
        f"the other; fused = {stamp.get('impl_fused', '?')} (what the op runs); empty launch = "
        "an empty Triton kernel. Times: median us per call over "
        f"{stamp.get('graph', '?')}: one CUDA graph of calls cycling through L layers' "
        "router weights (gate weight, scale, per_expert_scale), the hidden states one "
        "L2-hot tensor. norm/GEMM/routing alone read layer 0's upstream output; their "
        "small per-layer tensors (scale [H], per_expert_scale [E]) stay in L2 "
        "even at large L, unlike in the chain, where the gate weights push them out.",
        "",
        f"Check (layer 0, before timing): fused ids == our routing of the fused logits "
        f"(exact, weights to 1e-5); fused logits within {stamp.get('logit_rtol', '?')} "
        "of the row's largest |logit| of the chain's (the chain rounds the normed input "
        "to bf16 up to three times, the fused op rounds h * scale once). `ids_vs_chain` "
        "in the CSV: tokens whose expert set equals the chain's (near-ties differ). "
        f"Copy floor {stamp.get('copy_floor_GBps', '?')} GB/s; L2 {l2 / 2**20:.0f} MiB; "
        f"{int(stamp.get('layer_bytes', 0) or 0) / 1e3:.0f} KB of router weights per layer.",
    ]
    note = ll_note(stamp)
    if note:
        lines += ["", note]
    if any("serving_equiv_us" in r for r in rows):
        lines += [
            "",
            f"Layer tail ({stamp.get('impl_tail', '?')}): Gemma4DecoderLayer.forward between "
            "the attention and the MLP/MoE GEMMs, written here, timed without the producer; "
            "its router-norm variant adds router(residual)'s norm as one more consumer. "
            + SERVING_FORMULA
            + ".",
        ]
    for layers in sorted({r["layers"] for r in rows}, reverse=True):
        mine = [r for r in rows if r["layers"] == layers]
        lines += [
            "",
            f"## L={layers} layer weight sets ({mine[0]['weights_from']}: "
            f"{mine[0]['weights_MB']} MB per pass)",
            "",
        ]
        lines += table_lines(rows, layers)
        serving = serving_table_lines(rows, layers)
        if serving:
            lines += ["", f"### Serving-equivalent, L={layers}", "", *serving]
        lines += [
            "",
            f"Geomean over T: chain vLLM / fused "
            f"{geomean(r['vllm_over_fused'] for r in mine):.2f}x "
            f"(min {min(r['vllm_over_fused'] for r in mine):.2f}x), chain ours / fused "
            f"{geomean(r['ours_over_fused'] for r in mine):.2f}x "
            f"(min {min(r['ours_over_fused'] for r in mine):.2f}x).",
        ]
        if model_layers:
            line = real_step_line(rows, layers, model_layers)
            if line:
                lines += ["", line]
    Path(f"{base}.md").write_text("\n".join(lines) + "\n")
    _plot(rows, stamp, base)
    return base


def write_anchor_results(rows: list[dict], stamp: dict[str, str], out: Path, tag: str) -> Path:
    """``--anchors-only``: CSV (stamped) and md at ``bench_router_anchors_<device>_<date>
    [_<tag>]``; returns that base."""
    out.mkdir(parents=True, exist_ok=True)
    base = result_base(stamp, out, tag, kind="bench_router_anchors")
    write_stamped_csv(f"{base}.csv", stamp, rows)
    lines = [
        f"# Gemma 4 router GEMM: vLLM's ll_bf16_gemm with cuBLAS and the fused op as anchors "
        f"({device_name(stamp)})",
        "",
        ", ".join(f"{k}={v}" for k, v in stamp.items()),
        "",
        f"Shape {stamp.get('shape', '?')}. gate GEMM cuBLAS: {stamp.get('impl_gemm', '?')}; "
        f"gate GEMM ll_bf16: {stamp.get('impl_gemm_ll', '?')} (`-` where: "
        f"{stamp.get('gemm_ll_skipped', '?')}); fused: {stamp.get('impl_fused', '?')}. Each on "
        "the same normed input / hidden states as bench_router, median us per call over "
        f"{stamp.get('graph', '?')}. cuBLAS and fused are the anchors: another process's "
        "file (another nvidia-cutlass-dsl, another vLLM's ll_bf16) compares with this one "
        "through them (benchmarks/kernel/compare_anchors.py).",
        *anchor_table_lines(rows),
    ]
    Path(f"{base}.md").write_text("\n".join(lines) + "\n")
    return base


def _plot(rows: list[dict], stamp: dict[str, str], base: Path) -> None:
    """Time per layer vs T (chains and fused), and the two ratios; one line style per L."""
    plt = pyplot()
    if plt is None:
        return
    fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(11, 4.5))
    styles = ("-", "--", ":", "-.")
    for n, layers in enumerate(sorted({r["layers"] for r in rows}, reverse=True)):
        mine = sorted((r for r in rows if r["layers"] == layers), key=lambda r: r["T"])
        ts = [r["T"] for r in mine]
        style = styles[n % len(styles)]
        where = f"L={layers} ({mine[0]['weights_from']})"
        for ax, key, name, color in (
            (ax_t, "chain_vllm_us", "chain vLLM", "tab:red"),
            (ax_t, "chain_ours_us", "chain ours", "tab:orange"),
            (ax_t, "fused_us", "fused", "tab:blue"),
            (ax_t, "empty_us", "empty launch", "tab:gray"),
            (ax_t, "chain_ll_us", "chain ll_bf16", "tab:purple"),
            (ax_t, "serving_equiv_us", "serving-equivalent", "tab:green"),
            (ax_r, "vllm_over_fused", "chain vLLM / fused", "tab:red"),
            (ax_r, "ours_over_fused", "chain ours / fused", "tab:orange"),
        ):
            values = [r.get(key, float("nan")) for r in mine]
            if all(v != v for v in values):  # not in these rows
                continue
            ax.plot(ts, values, style, marker=".", color=color, label=f"{name}, {where}")
    for ax in (ax_t, ax_r):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens T")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax_t.set_yscale("log")
    ax_t.set_ylabel("median us per layer")
    ax_r.axhline(1.0, color="black", linewidth=0.8)
    ax_r.set_ylabel("speed-up of the fused op")
    fig.suptitle(
        f"Gemma 4 router ({stamp.get('shape', '')}) on {device_name(stamp)}"
        f" - torch {stamp.get('torch', '?')}, triton {stamp.get('triton', '?')}, "
        f"{stamp.get('date', '')}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(f"{base}.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
