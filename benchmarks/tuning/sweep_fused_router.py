"""Offline sweep of the fused router's launch configs, to choose its launch table.

Run on a GPU as ``python -m benchmarks.tuning.sweep_fused_router``. For gemma-4-26B-A4B's
router (H=2816, E=128, K=8, bfloat16) and each token count T, every config of
``benchmarks.tuning.candidates.candidate_configs`` is launched once
(``launch_with_config``) and checked: the ids exactly the torch reference
routing of the config's own logits, the weights to 1e-5, the logits within
``--logit-rtol`` of the row's largest |logit| of ``gemma4_fused_router_reference``
(the same single bf16 rounding, so only the fp32 sum order differs). Where the op
takes its GEMM path (``GEMM_PATH_TOKENS``), the GEMM path's configs
(``candidates.gemm_path_candidates``: prologue and epilogue launches) are
candidates too. A config that fails to launch or to check is recorded with the
reason and not timed. The others, and what the op itself runs at that T (``table``:
``fused_router_op.fused_router_into``, its table row or its GEMM path), are
timed as ``benchmarks.kernel.bench_router`` times the fused op: ``common.bench_rotated``
over L layers' weight sets (by default 3x the L2, so the gate weights come from
HBM), the hidden states one L2-hot tensor. ``--producer``: as ``bench_router
--producer``, a kernel writing the hidden states runs before every call and its
own time is subtracted (the set-up in which programmatic dependent launch can
pay: the kernel ahead is not the router).

Writes benchmarks/results/sweep_fused_router_<device>_<date>[_<tag>].{csv,md}
after every T (a cut-off run keeps what it has): every config's time, the best
config per T and its margin to the second best; prints a Python snippet of the
best table last. ``--write-table PATH`` also writes a fused table file (the schema of
``vllm_gemma4_router/fused_router/tables/fused.json``): the rows of ``PATH`` (or of
the packaged table) with each bucket the run covered replaced by its kernel config
of smallest geometric mean of time over the best time across the bucket's T, the
GEMM path's config likewise over the T where it was timed, and a provenance entry
for the run (command line, device, versions, date, the CSV and markdown); copy it
over the packaged file to ship it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common.timing import (
    bench_rotated,
    environment_stamp,
    l2_bytes,
    producer_of,
    rotation_calls,
    rotation_sets,
    write_stamped_csv,
)
from benchmarks.kernel.bench_router import (
    add_router_shape_args,
    layer_bytes,
    logit_error,
    make_layer_sets,
    weights_location,
)
from benchmarks.tuning import table_writer
from benchmarks.tuning.candidates import candidate_configs, gemm_path_candidates
from vllm_gemma4_router import gemma4_routing_reference
from vllm_gemma4_router.fused_router import launch_table
from vllm_gemma4_router.fused_router.reference import gemma4_fused_router_reference


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_router_shape_args(parser)
    parser.add_argument(
        "--layers", default="auto", help="weight sets rotated: 'auto' (3x the L2) or a number"
    )
    parser.add_argument("--min-layers", type=int, default=30)
    parser.add_argument("--min-calls", type=int, default=32)
    parser.add_argument("--replays", type=int, default=10)
    parser.add_argument(
        "--logit-rtol",
        type=float,
        default=1e-3,
        help="logits vs the fp32 reference, relative to the row's largest |logit|",
    )
    parser.add_argument(
        "--producer",
        action="store_true",
        help="a kernel writing the hidden states before every call, its time subtracted",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="")
    parser.add_argument(
        "--write-table",
        type=Path,
        help="also write a fused table file (fused.json schema) with this run's choices",
    )
    args = parser.parse_args(argv)
    args.tokens = [int(t) for t in args.tokens.split(",") if t]
    if args.layers != "auto" and not (args.layers.isdigit() and int(args.layers) >= 1):
        parser.error(f"--layers takes 'auto' or a positive number, got {args.layers!r}")
    return args


def config_text(config) -> str:
    """``field=value, ...`` of a NamedTuple config, in its field order."""
    return ", ".join(f"{k}={v!r}" for k, v in config._asdict().items())


@dataclass
class Problem:
    """One router's L layers of weights (``bench_router.make_layer_sets``), eps and K."""

    weights: list[torch.Tensor]
    scales: list[torch.Tensor]
    expert_scales: list[torch.Tensor]
    eps: float
    topk: int


def check_outputs(out, ref_logits, problem: Problem, logit_rtol: float) -> tuple[str, float]:
    """``(reason, logit_err)``: reason ``''`` when ``out = (logits, weights, ids)`` is right
    for layer 0: routing exactly the reference's of its own logits, logits near ``ref_logits``."""
    logits, weights, ids = out
    ref_w, ref_ids = gemma4_routing_reference(logits, problem.topk, problem.expert_scales[0])
    err = logit_error(logits, ref_logits)
    if not torch.equal(ids.to(torch.int32), ref_ids):
        return "ids != reference routing of its logits", err
    if not torch.allclose(weights, ref_w, rtol=1e-5, atol=1e-6):
        return "weights != reference routing of its logits", err
    if not err <= logit_rtol:  # NaN fails too
        return f"logits {err:.3g} > {logit_rtol:g} of row max", err
    return "", err


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def sweep_point(
    problem: Problem,
    num_tokens: int,
    layers: int,
    candidates: Sequence,
    launch: Callable,
    table: Callable,
    timer: Callable[[Callable[[int], object], int], float],
    logit_rtol: float,
    dtype: torch.dtype,
    device,
    generator=None,
    producer: bool = False,
) -> list[dict]:
    """Rows for one T: each candidate (``method='config'``), then the table's own choice
    (``method='table'``). ``launch(config, h, scale, w, pes, eps, topk, out)`` and
    ``table(h, scale, w, pes, eps, topk, out=out)`` write into ``out``; ``timer(fn,
    layers)`` times ``fn(layer)`` (``common.bench_rotated``). ``producer``: every
    timed call is preceded by a copy into the hidden states, whose time alone
    (``producer_us`` of every row) is subtracted."""
    p, k = problem, problem.topk
    hidden = p.weights[0].shape[1]
    experts = p.weights[0].shape[0]
    h = torch.randn(num_tokens, hidden, generator=generator, device=device).to(dtype)
    ref_logits, _, _ = gemma4_fused_router_reference(
        h, p.scales[0], p.weights[0], p.expert_scales[0], p.eps, k
    )
    out = (
        torch.empty(num_tokens, experts, dtype=torch.float32, device=device),
        torch.empty(num_tokens, k, dtype=torch.float32, device=device),
        torch.empty(num_tokens, k, dtype=torch.int32, device=device),
    )
    produce, preceded = producer_of(h)
    producer_us = round(timer(lambda i: produce(), layers), 3) if producer else 0.0

    def timed(call):
        if not producer:
            return timer(call, layers)
        return timer(preceded(call), layers) - producer_us

    def run(method, config, call):
        """Check ``call(layer)`` at layer 0 on poisoned outputs, then time it."""
        row = dict(
            T=num_tokens,
            layers=layers,
            method=method,
            config_type=type(config).__name__ if config is not None else "",
            config=config_text(config) if config is not None else "",
            us=float("nan"),
            producer_us=producer_us,
            ok=False,
            reason="",
            logit_err=float("nan"),
        )
        out[0].fill_(float("nan"))
        out[1].fill_(float("nan"))
        out[2].fill_(-1)
        try:
            call(0)
            if out[0].is_cuda:
                torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - a config may not compile or launch
            row["reason"] = "launch: " + _first_line(exc)
            return row
        reason, err = check_outputs(out, ref_logits, p, logit_rtol)
        row.update(reason=reason, logit_err=round(err, 7))
        if reason:
            return row
        try:
            row["us"] = round(timed(call), 3)
        except Exception as exc:  # noqa: BLE001 - e.g. capture fails
            row["reason"] = "timing: " + _first_line(exc)
            return row
        row["ok"] = True
        return row

    def args_of(i):
        return h, p.scales[i], p.weights[i], p.expert_scales[i], p.eps, k

    rows = [run("config", c, lambda i, c=c: launch(c, *args_of(i), out)) for c in candidates]
    rows.append(run("table", None, lambda i: table(*args_of(i), out=out)))
    return rows


def best_per_t(rows: list[dict]) -> list[dict]:
    """Per T: the fastest checked config, the second's margin over it (percent), the
    table's time and its ratio to the best, and how many configs were timed / failed."""
    result = []
    for num_tokens in sorted({r["T"] for r in rows}):
        mine = [r for r in rows if r["T"] == num_tokens]
        timed = sorted(
            (r for r in mine if r["method"] == "config" and r["ok"] and r["us"] == r["us"]),
            key=lambda r: r["us"],
        )
        failed = [r for r in mine if r["method"] == "config" and not r["ok"]]
        table = next((r for r in mine if r["method"] == "table"), None)
        table_us = table["us"] if table is not None and table["ok"] else float("nan")
        best = timed[0] if timed else None
        second = timed[1] if len(timed) > 1 else None
        result.append(
            dict(
                T=num_tokens,
                layers=mine[0]["layers"],
                best_us=best["us"] if best else float("nan"),
                config=best["config"] if best else "",
                config_type=best["config_type"] if best else "",
                second_us=second["us"] if second else float("nan"),
                margin_pct=(
                    round(100 * (second["us"] - best["us"]) / best["us"], 2)
                    if best and second
                    else float("nan")
                ),
                table_us=table_us,
                table_over_best=round(table_us / best["us"], 3) if best else float("nan"),
                timed=len(timed),
                failed=len(failed),
            )
        )
    return result


def _num(value: float, spec: str) -> str:
    return "-" if value != value else format(value, spec)


def _percent(value: float) -> str:
    return "-" if value != value else f"+{value:.1f} %"


def result_base(stamp: dict[str, str], out: Path, tag: str) -> Path:
    device = stamp.get("gpu") or stamp.get("device", "unknown")
    date = stamp.get("date", "undated")[:10]
    name = f"sweep_fused_router_{device}_{date}".replace(" ", "_")
    return out / (name + (f"_{tag}" if tag else ""))


def snippet(best: list[dict], stamp: dict[str, str]) -> str:
    """The best table as Python: ``BEST_FUSED_CONFIGS = {T: Config(...), ...}``."""
    lines = [
        f"# benchmarks/tuning/sweep_fused_router.py on {stamp.get('gpu', stamp.get('device'))}, "
        f"{stamp.get('date', '')}, {stamp.get('layers_note', '')}".rstrip(", "),
        "BEST_FUSED_CONFIGS = {",
    ]
    for b in best:
        if not b["config"]:
            lines.append(f"    # {b['T']}: no config passed the check")
            continue
        margin = f", 2nd +{b['margin_pct']:.1f} %" if b["margin_pct"] == b["margin_pct"] else ""
        lines.append(
            f"    {b['T']}: {b['config_type']}({b['config']}),  # {b['best_us']:.3f} us{margin}"
        )
    lines.append("}")
    return "\n".join(lines)


def write_results(rows: list[dict], stamp: dict[str, str], out: Path, tag: str) -> Path:
    """Every row to the stamped CSV; the best per T, the failures and the snippet to
    the markdown, at :func:`result_base`; returns that base."""
    out.mkdir(parents=True, exist_ok=True)
    base = result_base(stamp, out, tag)
    fields = {k: "" for r in rows for k in r}
    write_stamped_csv(f"{base}.csv", stamp, [{**fields, **r} for r in rows])
    best = best_per_t(rows)
    lines = [
        f"# Fused router launch sweep ({stamp.get('gpu', stamp.get('device'))})",
        "",
        ", ".join(f"{k}={v}" for k, v in stamp.items()),
        "",
        f"Shape {stamp.get('shape', '?')}; {stamp.get('layers_note', '?')}. Each config is "
        "checked first (ids exactly the reference routing of its own logits, weights to "
        f"1e-5, logits within {stamp.get('logit_rtol', '?')} of the row max of the fp32 "
        "reference) and timed only if right: median us per call, a CUDA graph cycling "
        "through the layers' weight sets (common.bench_rotated). table = what the op "
        "runs (its table row or its GEMM path). margin = how much slower the second "
        "best config is. GemmPathConfig rows are the op's GEMM path with that prologue "
        "and epilogue.",
        "",
        "| T | best us | best config | 2nd us | margin | table us | table / best "
        "| timed | failed |",
        "|---" * 9 + "|",
    ]
    for b in best:
        lines.append(
            f"| {b['T']} | {_num(b['best_us'], '.3f')} | {b['config'] or '-'} | "
            f"{_num(b['second_us'], '.3f')} | {_percent(b['margin_pct'])} | "
            f"{_num(b['table_us'], '.3f')} | {_num(b['table_over_best'], '.2f')}x | "
            f"{b['timed']} | {b['failed']} |"
        )
    failed = [r for r in rows if not r["ok"]]
    if failed:
        lines += ["", "## Not timed (failed to launch or to check)", ""]
        lines += ["| T | method | config | reason |", "|---|---|---|---|"]
        lines += [
            f"| {r['T']} | {r['method']} | {r['config'] or '-'} | {r['reason']} |" for r in failed
        ]
    lines += ["", "## Best table", "", "```python", snippet(best, stamp), "```"]
    Path(f"{base}.md").write_text("\n".join(lines) + "\n")
    return base


def choose_rows(
    rows: list[dict], bounds: Sequence[int] | None = None
) -> tuple[dict[int, dict], dict | None]:
    """``({bucket: FusedLaunchConfig fields}, GemmPathConfig fields or None)`` from a
    sweep's rows: per bucket of a fused table with token ``bounds`` (default: the
    packaged table's), the checked kernel config with the smallest geometric mean of
    time over the best time across the bucket's T; the GEMM path's config likewise
    across every T it was timed at (``table_writer.choose``)."""
    kernel: dict[int, dict[str, dict[int, float]]] = {}
    gemm: dict[str, dict[int, float]] = {}
    for row in rows:
        if row["method"] != "config" or not row["ok"]:
            continue
        num_tokens = int(row["T"])
        if row["config_type"] == "GemmPathConfig":
            gemm.setdefault(row["config"], {})[num_tokens] = float(row["us"])
        elif row["config_type"] == "FusedLaunchConfig":
            bucket = launch_table.fused_bucket(num_tokens, bounds)
            kernel.setdefault(bucket, {}).setdefault(row["config"], {})[num_tokens] = float(
                row["us"]
            )
    chosen = {b: table_writer.parse_config(table_writer.choose(t)) for b, t in kernel.items()}
    best_gemm = table_writer.choose(gemm)
    return chosen, table_writer.parse_config(best_gemm) if best_gemm else None


def write_table(path: Path, rows: list[dict], stamp: dict[str, str], results: list, tag: str):
    """Write the fused table file ``path``: its rows (or the packaged table's) with the
    buckets and the GEMM path config this sweep covered replaced (:func:`choose_rows`),
    pointing at a new provenance entry for the run. Read back with the runtime's loader;
    returns the loaded ``FusedTable``."""
    data = table_writer.base_table(path, launch_table.fused_table_file().read_text)
    notes = (
        "Rows written by benchmarks.tuning.sweep_fused_router --write-table: per bucket, the "
        "kernel config with the smallest geometric mean, over the bucket's T, of time over "
        f"the best time; {stamp.get('shape', '')}, {stamp.get('layers_note', '')}."
    )
    sweep_id = table_writer.add_sweep(data, table_writer.sweep_entry(stamp, tag, results, notes))
    # The base file's buckets, which may differ from the packaged table's.
    kernel, gemm = choose_rows(rows, data["token_bucket_bounds"])
    for bucket, fields in kernel.items():
        row = data["rows"][bucket]
        row.pop("notes", None)
        config = launch_table.FusedLaunchConfig(**fields)
        row.update(config=config._asdict(), provenance=sweep_id)
    if gemm is not None:
        config = launch_table.GemmPathConfig(**gemm)
        data["gemm_path"].update(config=config._asdict(), provenance=sweep_id)
    table_writer.write_table(path, data, launch_table.load_fused_table)
    return launch_table.load_fused_table(path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("sweep_fused_router times CUDA graphs: it needs an NVIDIA GPU")
    from vllm_gemma4_router.fused_router.gemm_path import route_by_gemm
    from vllm_gemma4_router.fused_router.launcher import launch_with_config
    from vllm_gemma4_router.fused_router.torch_library import fused_router_into

    def launch(config, h, scale, w, pes, eps, topk, out):
        if isinstance(config, launch_table.GemmPathConfig):
            route_by_gemm(h, scale, w, pes, eps, topk, out, config)
        else:
            launch_with_config(config, h, scale, w, pes, eps, topk, out)

    def op_choice(h, scale, w, pes, eps, topk, *, out):
        fused_router_into(h, scale, w, pes, eps, topk, out)

    torch.manual_seed(args.seed)
    device = torch.device("cuda")
    dtype = getattr(torch, args.dtype)
    l2 = l2_bytes()
    bytes_per_layer = layer_bytes(args.hidden, args.experts, dtype.itemsize)
    layers = (
        rotation_sets(bytes_per_layer, l2, args.min_layers)
        if args.layers == "auto"
        else int(args.layers)
    )
    where = weights_location(layers, bytes_per_layer, l2)
    weights, scales, expert_scales = make_layer_sets(
        layers, args.hidden, args.experts, dtype, device
    )
    problem = Problem(weights, scales, expert_scales, args.eps, args.topk)
    stamp = environment_stamp()
    stamp.update(
        shape=f"H={args.hidden} E={args.experts} K={args.topk} {args.dtype} eps={args.eps:g}",
        layers_note=f"L={layers} weight sets ({where}, {layers * bytes_per_layer / 1e6:.0f} MB)",
        graph=f"{args.replays} replays of {rotation_calls(layers, args.min_calls)} calls",
        logit_rtol=f"{args.logit_rtol:g}",
        L2_bytes=str(l2),
        producer="hidden-states copy before every call, subtracted" if args.producer else "none",
    )
    print(stamp, flush=True)

    def timer(fn, num_sets):
        return bench_rotated(fn, num_sets, replays=args.replays, min_calls=args.min_calls)

    rows: list[dict] = []
    base = None
    for num_tokens in args.tokens:
        candidates = candidate_configs(num_tokens, args.hidden, args.experts, args.topk, dtype)
        if num_tokens in launch_table.GEMM_PATH_TOKENS:
            candidates += gemm_path_candidates(args.hidden)
        print(f"T={num_tokens}: {len(candidates)} configs ...", end="", flush=True)
        rows += sweep_point(
            problem,
            num_tokens,
            layers,
            candidates,
            launch,
            op_choice,
            timer,
            args.logit_rtol,
            dtype,
            device,
            producer=args.producer,
        )
        b = best_per_t([r for r in rows if r["T"] == num_tokens])[0]
        print(
            f" best {_num(b['best_us'], '.3f')} us [{b['config']}], 2nd "
            f"{_percent(b['margin_pct'])}, table {_num(b['table_us'], '.3f')} us, "
            f"{b['failed']} failed",
            flush=True,
        )
        base = write_results(rows, stamp, Path(args.out), args.tag)
    if base is not None:
        print(f"wrote {base}.csv/.md")
        print(snippet(best_per_t(rows), stamp))
        if args.write_table:
            results = [f"{base}.csv", f"{base}.md"]
            write_table(args.write_table, rows, stamp, results, args.tag)
            print(f"wrote {args.write_table}")


if __name__ == "__main__":
    main()
