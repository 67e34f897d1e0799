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
* ``empty``: an empty Triton kernel, the floor of one graph-replayed launch.

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
Writes benchmarks/results/bench_router_<device>_<date>[_<tag>].{csv,md,png}.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common.gpu import device_name, device_slug
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

TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
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
}
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
    parser.add_argument(
        "--layers",
        default="auto",
        help="weight sets rotated: 'auto' (3x the L2, at least --min-layers) and/or "
        "numbers, comma-separated (e.g. 'auto,30'); one table each",
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
    args.tokens = [int(t) for t in args.tokens.split(",") if t]
    args.layers = [s.strip() for s in args.layers.split(",") if s.strip()]
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
    same_set = ids.long().sort(dim=1).values == chain_ids.long().sort(dim=1).values
    agree = float(same_set.all(dim=1).float().mean()) if ids.numel() else 1.0
    check = "ok" if not problems else "FAIL: " + "; ".join(problems)
    return dict(check=check, logit_err=round(err, 5), ids_vs_chain=round(agree, 4))


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
    return fns


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
) -> list[dict]:
    """One row per layer count at ``T = num_tokens``: the check, then every piece timed
    (``producer``: :func:`with_producer`, its time subtracted; ``producer_us`` the row's)."""
    hidden = router.weights[0].shape[1]
    h = torch.randn(num_tokens, hidden, generator=generator, device=device).to(dtype)
    check = check_point(router, h, logit_rtol)
    if check["check"] != "ok":
        print(f"\nWARNING T={num_tokens}: {check['check']}", flush=True)
    fns = pieces(router, h, empty)
    if producer:
        fns = with_producer(fns, h)
    rows = []
    for layers in layer_counts:
        us = {name: timer(fn, layers) for name, fn in fns.items()}
        base = us.pop("producer", 0.0)
        us = {name: us[name] - base if name in us else float("nan") for name in PIECES}
        rows.append(
            dict(
                T=num_tokens,
                layers=layers,
                weights_from=weights_location(layers, bytes_per_layer, l2),
                weights_MB=round(layers * bytes_per_layer / 1e6, 1),
                **{f"{name}_us": round(v, 3) for name, v in us.items()},
                **({"producer_us": round(base, 3)} if producer else {}),
                vllm_over_fused=round(us["chain_vllm"] / us["fused"], 3),
                ours_over_fused=round(us["chain_ours"] / us["fused"], 3),
                **check,
            )
        )
    return rows


def _empty_launcher() -> Callable[[], object]:
    import triton

    @triton.jit
    def _empty_kernel():
        pass

    return lambda: _empty_kernel[(1,)]()


def load_fused() -> tuple[Callable, Callable, Callable]:
    """What our fused router op runs (``FUSED_IMPL``: the kernel, or its GEMM path where
    the op takes that path), its GEMM path alone, and the op's split launch with
    programmatic dependent launch (``None`` where the op launches no split row),
    each as ``fn(h, s, w, pes, eps, topk) -> (logits, weights, ids)``; no
    fallback: a missing op fails the run."""
    from vllm_gemma4_router.fused_router.gemm_path import route_by_gemm
    from vllm_gemma4_router.fused_router.handover import new_packed, unpack
    from vllm_gemma4_router.fused_router.launch_table import (
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
    )
    labels = dict(
        impl_norm=norm_label,
        impl_gemm=gemm_label,
        impl_route_vllm=vllm_label,
        impl_route_ours="vllm_gemma4_router.gemma4_routing_triton",
        impl_fused=FUSED_IMPL,
    )
    return router, labels, counts


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
        )
    print(f"\r[{len(args.tokens)}/{len(args.tokens)}] done", flush=True)
    tag = args.tag or ("" if args.layers == ["auto"] else "L" + "-".join(args.layers))
    base = write_results(
        rows, stamp, Path(args.out), tag, args.model_layers if args.real_step_estimate else None
    )
    print(f"wrote {base}.csv/.md" + ("/.png" if Path(f"{base}.png").exists() else ""))
    print("\n".join(summary_lines(rows, args.model_layers if args.real_step_estimate else None)))


def result_base(stamp: dict[str, str], out: Path, tag: str) -> Path:
    """``out/bench_router_<device>_<date>[_<tag>]`` (no suffix)."""
    date = stamp.get("date", "undated")[:10]
    name = f"bench_router_{device_slug(stamp)}_{date}".replace(" ", "_")
    return out / (name + (f"_{tag}" if tag else ""))


def _fmt(value: float) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"


def table_lines(rows: list[dict], layers: int) -> list[str]:
    """The markdown table of one layer count: every piece, the two ratios, the check."""
    mine = sorted((r for r in rows if r["layers"] == layers), key=lambda r: r["T"])
    head = ["T", *(HEADERS[p] for p in PIECES), "chain vLLM / fused", "chain ours / fused"]
    cells = [
        [r["T"], *(_fmt(r[f"{p}_us"]) for p in PIECES)]
        + [f"{r['vllm_over_fused']:.2f}x", f"{r['ours_over_fused']:.2f}x", r["check"]]
        for r in mine
    ]
    align = ["right"] * len(head) + ["left"]
    return markdown_table([*head, "check"], cells, align).splitlines()


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
    for layers in sorted({r["layers"] for r in rows}, reverse=True):
        mine = [r for r in rows if r["layers"] == layers]
        lines += [
            "",
            f"## L={layers} layer weight sets ({mine[0]['weights_from']}: "
            f"{mine[0]['weights_MB']} MB per pass)",
            "",
        ]
        lines += table_lines(rows, layers)
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


def _plot(rows: list[dict], stamp: dict[str, str], base: Path) -> None:
    """Time per layer vs T (chains and fused), and the two ratios; one line style per L."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no PNG")
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
            (ax_r, "vllm_over_fused", "chain vLLM / fused", "tab:red"),
            (ax_r, "ours_over_fused", "chain ours / fused", "tab:orange"),
        ):
            values = [r[key] for r in mine]
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
