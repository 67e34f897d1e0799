"""Time the fused router's CUDA C++ decode builds (``fused_router.cuda_decode``, driven by
``benchmarks/kernel/cuda_decode``) against its Triton fused kernel (the table's launch for
that T, called directly: the op itself routes some T through a CUDA build).

Run on an NVIDIA GPU as ``python -m benchmarks.kernel.bench_cuda_decode``. For each T and
each ``--builds`` build (warps x experts per block), layer 0 is checked first
(``sweep_fused_router.check_outputs``:
ids exactly the reference routing of the prototype's own logits, weights to 1e-5,
logits within ``--logit-rtol`` of the row max of the Triton kernel's); then each is timed
as ``bench_router`` times the fused op: one CUDA graph cycling through L layers' router
weights, L = 3x the L2 (``cold``: the gate weights come from HBM) and L = 8 (``hot``).
``--producer``: a kernel writing the hidden states before every call, its time
subtracted. ``--operand``: each tensor-core build is timed a second time on the gate's
operand (the hidden states normed and scaled as vLLM's router does, for layer 0's
scale; ``prenormed``), checked against that operand's fp32 GEMM. Writes
``bench_cuda_decode_<device>_<date>[_<tag>].{csv,md}`` under ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

from benchmarks.common.tables import markdown_table
from benchmarks.common.timing import (
    bench_rotated,
    environment_stamp,
    l2_bytes,
    producer_of,
    rotation_sets,
    write_stamped_csv,
)
from benchmarks.kernel.bench_router import (
    add_router_shape_args,
    layer_bytes,
    make_layer_sets,
    router_norm,
)
from benchmarks.kernel.cuda_decode import parse_build, route_decode
from benchmarks.tuning.sweep_fused_router import Problem, check_outputs

HOT_LAYERS = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_router_shape_args(parser)
    parser.set_defaults(tokens="1,2,4,8,16")
    parser.add_argument(
        "--builds",
        default="4x1,8x1,4x2,8x2,8x4",
        help="prototype builds as WARPSxEXPERTS_PER_BLOCK[c][p][t], comma-separated; "
        "experts per block 8 or 16: tensor cores; c: the grid as one cluster, DSMEM "
        "hand-off; p: expert scales in shared memory; t[N]: with c, one cluster per N "
        "tokens (t: 32)",
    )
    parser.add_argument(
        "--pdl",
        choices=("off", "on", "both"),
        default="both",
        help="launch the prototype with programmatic dependent launch",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="also time each build stopped after each stage (router_decode.cu's STAGE), "
        "unchecked: launch, gate rows, logits, hand-off",
    )
    parser.add_argument(
        "--operand",
        action="store_true",
        help="also time each tensor-core build on the gate's operand (prenormed)",
    )
    parser.add_argument("--replays", type=int, default=15)
    parser.add_argument("--logit-rtol", type=float, default=1e-3)
    parser.add_argument("--producer", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    args.tokens = [int(t) for t in args.tokens.split(",") if t]
    args.builds = [parse_build(b) for b in args.builds.split(",") if b]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda_decode times CUDA graphs: it needs an NVIDIA GPU")
    from vllm_gemma4_router.fused_router.handover import new_packed, unpack
    from vllm_gemma4_router.fused_router.launch_table import fused_launch_config
    from vllm_gemma4_router.fused_router.launcher import launch_with_config

    dtype = getattr(torch, args.dtype)
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    per_layer = layer_bytes(args.hidden, args.experts, dtype.itemsize)
    cold = rotation_sets(per_layer, l2_bytes())
    weights, scales, expert_scales = make_layer_sets(
        cold, args.hidden, args.experts, dtype, device, gen
    )
    expert_scales32 = [s.float() for s in expert_scales]
    problem = Problem(weights, scales, expert_scales, args.eps, args.topk)
    stamp = environment_stamp()
    rows = []
    for num_tokens in args.tokens:
        h = torch.randn(num_tokens, args.hidden, generator=gen, device=device).to(dtype)
        out = unpack(new_packed(num_tokens, args.experts, args.topk, device), num_tokens,
                     args.experts, args.topk)  # fmt: skip

        # the Triton kernel itself: the op routes some of these T through the CUDA build
        config = fused_launch_config(num_tokens, args.hidden, args.experts, device)

        def fused(layer, h=h, out=out, config=config):
            launch_with_config(config, h, scales[layer], weights[layer], expert_scales[layer],
                               args.eps, args.topk, out)  # fmt: skip

        fused(0)
        fused_logits = out[0].clone()
        # vLLM's router operand for layer 0 (norm, * H**-0.5, * scale; bf16 between) and
        # what its gate makes of it
        root_size = torch.tensor(args.hidden**-0.5, device=device).to(dtype)
        x_gate = router_norm(h, root_size, scales[0], args.eps)
        gate_logits = x_gate.float() @ weights[0].float().t()
        arms = {"triton fused kernel": fused}
        checks = {"triton fused kernel": "ok"}
        pdl_modes = {"off": [False], "on": [True], "both": [False, True]}[args.pdl]
        inputs = [False, True] if args.operand else [False]
        for (warps, per_block, flags), pdl, operand in itertools.product(
            args.builds, pdl_modes, inputs
        ):
            if operand and per_block < 8:
                continue  # prenormed: tensor-core builds only
            mine = tuple(t.clone() for t in out)
            x = x_gate if operand else h

            def build_arm(stage, x=x, mine=mine, build=(warps, per_block, flags), pdl=pdl,
                          operand=operand):  # fmt: skip
                def arm(layer):
                    route_decode(x, scales[layer], weights[layer], expert_scales32[layer],
                                 args.eps, args.topk, mine, warps=build[0],
                                 experts_per_block=build[1], pdl=pdl, stage=stage,
                                 prenormed=operand, **build[2])  # fmt: skip

                return arm

            named = [label for label, on in (("cluster", flags["cluster"]),
                     ("pes in smem", flags["pes_shared"]),
                     (f"tiles of {flags['token_tiles']} tokens", flags["token_tiles"]),
                     ("PDL", pdl), ("gate operand", operand)) if on]  # fmt: skip
            name = ", ".join([f"cuda, {warps} warps x {per_block} experts", *named])
            proto = arms[name] = build_arm(4)
            try:
                proto(0)
                torch.cuda.synchronize()
                expected = gate_logits if operand else fused_logits
                reason, _ = check_outputs(mine, expected, problem, args.logit_rtol)
                checks[name] = f"FAIL: {reason}" if reason else "ok"
            except (RuntimeError, ValueError, TypeError) as exc:
                checks[name] = f"FAIL: {type(exc).__name__}: {str(exc)[:120]}"
            for stage in range(4) if args.stages and not pdl else ():
                arms[f"{name}, stage {stage}"] = build_arm(stage)
                checks[f"{name}, stage {stage}"] = "unchecked"
        produce, preceded = producer_of(h) if args.producer else (None, None)
        producer_us = {}
        for label, sets in (("cold", cold), ("hot", HOT_LAYERS)):
            if produce is not None:
                producer_us[label] = bench_rotated(
                    lambda _layer, produce=produce: produce(), sets, args.replays
                )
            for name, fn in arms.items():
                if checks[name] not in ("ok", "unchecked"):
                    continue
                timed = preceded(fn) if preceded else fn
                us = bench_rotated(timed, sets, args.replays) - producer_us.get(label, 0.0)
                rows.append(dict(T=num_tokens, arm=name, weights=label, layers=sets,
                                 us=round(us, 3), check=checks[name]))  # fmt: skip
        rows += [dict(T=num_tokens, arm=n, weights="-", layers=0, us="", check=c)
                 for n, c in checks.items() if c not in ("ok", "unchecked")]  # fmt: skip
        print(f"T={num_tokens}: " + ", ".join(f"{r['arm']} {r['weights']} {r['us']}"
                                              for r in rows if r["T"] == num_tokens))  # fmt: skip
    given = sys.argv[1:] if argv is None else argv
    stamp["argv"] = " ".join(["python -m benchmarks.kernel.bench_cuda_decode", *given])
    stamp["producer"] = "hidden-states copy, subtracted" if args.producer else "none"
    device_name = stamp.get("gpu", "gpu").replace(" ", "_")
    base = Path(args.out) / "_".join(
        filter(None, ["bench_cuda_decode", device_name, stamp.get("date", "")[:10], args.tag])
    )
    base.parent.mkdir(parents=True, exist_ok=True)
    write_stamped_csv(f"{base}.csv", stamp, rows)
    table = markdown_table(
        ["T", "arm", "weights", "layers", "us", "check"],
        [[str(r[k]) for k in ("T", "arm", "weights", "layers", "us", "check")] for r in rows],
    )
    header = ", ".join(f"{k}={v}" for k, v in stamp.items())
    Path(f"{base}.md").write_text(
        f"# CUDA decode builds vs the Triton fused kernel\n\n{header}\n\n{table}\n"
    )
    print(table)


if __name__ == "__main__":
    main()
