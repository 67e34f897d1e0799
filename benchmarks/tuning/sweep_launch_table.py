"""Offline sweep that chooses the launch table (every LaunchConfig knob).

Run on the GPU (``python -m benchmarks.tuning.sweep_launch_table``); writes
benchmarks/results/launch_sweep_<gpu>[_<tag>].csv and prints the best
configuration per (dtype, family, E, K, T). ``--write-table PATH`` also writes a
launch table file (the schema of ``vllm_gemma4_router/routing/tables/*.json``): the
rows of ``PATH`` (or, without it, of the packaged table of this platform) with every
(dtype, BLOCK_E, token bucket) the run covered replaced by its choice, the config
with the smallest geometric mean, over the bucket's swept points, of time over the
best time at that point, and a provenance entry for this run (command line, device,
versions, date, the CSV); copy it over the packaged file to ship it. Timing is
L2-hot by default (``common.bench_hot``: the input was just written, as after the
router GEMM); ``--cold`` rotates inputs through HBM.
With ``--peers`` vLLM's and SGLang's kernels are timed on the same inputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from pathlib import Path

import torch

from benchmarks.common.timing import (
    bench_graph,
    bench_hot,
    environment_stamp,
    make_logits,
    rotating,
    write_stamped_csv,
)
from benchmarks.tuning import table_writer
from vllm_gemma4_router import gemma4_routing_reference
from vllm_gemma4_router.routing.launch_table import (
    TABLE_WIDTHS,
    LaunchConfig,
    check_launch_config,
    load_launch_table,
    table_file,
    token_bucket,
)
from vllm_gemma4_router.routing.launcher import launch


def _timer(logits_sets, cold: bool, rep_ms: int):
    """fn(call) -> us: call(logits) timed hot on the first set, or cold over all."""
    if not cold:
        return lambda call: bench_hot(lambda: call(logits_sets[0]))
    state = {"i": 0}

    def next_logits():
        state["i"] = (state["i"] + 1) % len(logits_sets)
        return logits_sets[state["i"]]

    return lambda call: bench_graph(lambda: call(next_logits()), rep_ms)


def _candidates(args, dtype, block_e, topk, num_tokens):
    fp32 = dtype == torch.float32
    for tpp, warps, groups, picks, select, scale_pick, values in itertools.product(
        _ints(args.tokens_per_program),
        _ints(args.warps),
        _ints(args.row_groups),
        args.picks.split(","),
        args.fp32_selects.split(",") if fp32 else ["checked"],
        args.scale_picks.split(","),
        args.values.split(",") if fp32 else ["gather"],
    ):
        if tpp * block_e > args.max_tile or tpp > max(1, num_tokens):
            continue
        registers = picks == "registers"
        if not registers and (scale_pick != "after" or values != "gather"):
            continue  # the memory path ignores these knobs: no duplicates
        if select == "exact" and values != "gather":
            continue
        config = LaunchConfig(
            tpp, warps, registers, groups, select, scale_pick, values == "reduction"
        )
        try:
            check_launch_config(config, block_e, dtype.itemsize, topk)
        except ValueError:
            continue
        yield config


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def sweep_point(args, dtype, family, num_experts, topk, num_tokens, peers) -> list[dict]:
    block_e = 1 << (num_experts - 1).bit_length()
    scale = torch.rand(num_experts, device="cuda") + 0.5
    elt = dtype.itemsize
    if args.cold:
        sets = rotating(
            lambda: (make_logits(family, num_tokens, num_experts, dtype),),
            num_tokens * num_experts * elt,
        )
        logits_sets = [sets()[0] for _ in range(64)]
    else:
        logits_sets = [make_logits(family, num_tokens, num_experts, dtype)]
    timer = _timer(logits_sets, args.cold, args.rep_ms)
    check = logits_sets[0]
    ref_w, ref_ids = gemma4_routing_reference(check, topk, scale)
    out_w = torch.empty(num_tokens, topk, device="cuda")
    out_ids = torch.empty(num_tokens, topk, device="cuda", dtype=torch.int32)
    base = dict(
        dtype=str(dtype).removeprefix("torch."),
        family=family,
        E=num_experts,
        K=topk,
        T=num_tokens,
        mode="cold" if args.cold else "hot",
    )
    rows = []
    for config in _candidates(args, dtype, block_e, topk, num_tokens):
        out_w.fill_(float("nan"))
        launch(check, topk, scale, out_w, out_ids, config)
        ok = bool(torch.equal(out_ids, ref_ids)) and bool(
            torch.allclose(out_w, ref_w, rtol=2e-6, atol=1e-7)
        )
        us = timer(lambda x, c=config: launch(x, topk, scale, out_w, out_ids, c))
        rows.append({**base, "method": "ours", **config.__dict__, "us": round(us, 3), "ok": ok})
    for name, router in peers.items():
        us = timer(lambda x, r=router: r(x, topk, scale))
        rows.append({**base, "method": name, "us": round(us, 3), "ok": ""})
    return rows


def choose_rows(rows: list[dict]) -> dict[tuple[bool, int, int], LaunchConfig]:
    """``{(fp32 logits?, BLOCK_E, token bucket): config}`` from a sweep's rows: per bucket,
    the checked config with the smallest geometric mean of time over the best time at
    each (dtype, family, E, K, T) point of the bucket (``table_writer.choose``)."""
    groups: dict[tuple[bool, int, int], dict[LaunchConfig, dict[tuple, float]]] = {}
    for row in rows:
        if row["method"] != "ours" or not row["ok"]:
            continue
        num_experts, num_tokens = int(row["E"]), int(row["T"])
        block_e = 1 << (num_experts - 1).bit_length()
        key = (row["dtype"] == "float32", block_e, token_bucket(num_tokens))
        config = LaunchConfig(**{f.name: row[f.name] for f in dataclasses.fields(LaunchConfig)})
        point = (row["dtype"], row["family"], num_experts, row["K"], num_tokens)
        groups.setdefault(key, {}).setdefault(config, {})[point] = float(row["us"])
    return {key: table_writer.choose(timings) for key, timings in sorted(groups.items())}


def write_table(
    path: Path, rows: list[dict], stamp: dict[str, str], results: list, platform: str, tag: str
) -> list[tuple[bool, int, int]]:
    """Write the launch table file ``path``: its rows (or the packaged ``platform`` table's)
    with the buckets this sweep covered replaced (:func:`choose_rows`), pointing at a
    new provenance entry for the run; returns the keys it could not place (widths the
    table has no rows for). Read back with the runtime's loader."""
    data = table_writer.base_table(path, table_file(platform).read_text)
    notes = (
        "Rows written by benchmarks.tuning.sweep_launch_table --write-table: per bucket, the "
        "smallest geometric mean, over the bucket's swept points, of time over the best time."
    )
    sweep_id = table_writer.add_sweep(data, table_writer.sweep_entry(stamp, tag, results, notes))
    cells = {(r["fp32_logits"], r["block_e"], r["bucket"]): r for r in data["rows"]}
    skipped = []
    for key, config in choose_rows(rows).items():
        if key[1] not in TABLE_WIDTHS:
            skipped.append(key)
            continue
        row = cells[key]
        row.pop("notes", None)
        row.update(config=dataclasses.asdict(config), provenance=sweep_id)
    table_writer.write_table(path, data, load_launch_table)
    return skipped


def _load_peers(wanted: bool) -> dict:
    if not wanted:
        return {}
    from benchmarks.common.peer_kernels import load_sglang_router, load_vllm_router

    return {"vllm": load_vllm_router()[1], "sglang": load_sglang_router()[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shapes", default="128x8")
    parser.add_argument("--tokens", default="1,16,256,512,1024,4096,16384,65536,262144")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument(
        "--families",
        default="randn,gemm_fp32,gemm_bf16",
        help="fp32 logit families (common.make_logits); 16-bit dtypes use randn",
    )
    parser.add_argument("--tokens-per-program", default="1,2,4,8")
    parser.add_argument("--warps", default="1,2")
    parser.add_argument("--row-groups", default="1")
    parser.add_argument("--picks", default="registers", help="registers and/or memory")
    parser.add_argument("--fp32-selects", default="checked,exact")
    parser.add_argument("--scale-picks", default="after")
    parser.add_argument("--values", default="gather", help="gather and/or reduction")
    parser.add_argument("--max-tile", type=int, default=8192, help="max logits per program")
    parser.add_argument("--rep-ms", type=int, default=25)
    parser.add_argument("--cold", action="store_true", help="rotate inputs through HBM")
    parser.add_argument("--peers", action="store_true", help="also time vLLM's and SGLang's")
    parser.add_argument("--tag", default="", help="suffix of the CSV name")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--write-table",
        type=Path,
        help="also write a launch table file (tables/*.json schema) with this run's choices",
    )
    args = parser.parse_args()

    stamp = environment_stamp()
    peers = _load_peers(args.peers)
    rows = []
    for shape in args.shapes.split(","):
        num_experts, topk = (int(v) for v in shape.split("x"))
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            families = args.families.split(",") if dtype == torch.float32 else ["randn"]
            for family in families:
                for num_tokens in _ints(args.tokens):
                    point = sweep_point(args, dtype, family, num_experts, topk, num_tokens, peers)
                    rows += point
                    ours = [r for r in point if r["method"] == "ours" and r["ok"]]
                    best = min(ours, key=lambda r: r["us"])
                    others = "  ".join(
                        f"{r['method']} {r['us']:.2f}" for r in point if r["method"] != "ours"
                    )
                    knobs = {k: best[k] for k in LaunchConfig.__dataclass_fields__}
                    print(
                        f"{dtype_name} {family} {shape} T={num_tokens}: {best['us']:.2f} us "
                        f"{knobs}  {others}",
                        flush=True,
                    )
                    bad = [r for r in point if r["method"] == "ours" and not r["ok"]]
                    if bad:
                        print(f"  WRONG RESULTS: {len(bad)} configs", flush=True)
    name = "launch_sweep_" + stamp.get("gpu", "cpu").replace(" ", "_")
    path = Path(args.out) / (name + (f"_{args.tag}" if args.tag else "") + ".csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {k: "" for r in rows for k in r}
    write_stamped_csv(path, stamp, [{**fields, **r} for r in rows])
    print(f"wrote {path}")
    if args.write_table:
        platform = "hip" if torch.version.hip is not None else "cuda"
        skipped = write_table(args.write_table, rows, stamp, [path], platform, args.tag)
        print(f"wrote {args.write_table}" + (f" (no table rows for {skipped})" if skipped else ""))


if __name__ == "__main__":
    main()
