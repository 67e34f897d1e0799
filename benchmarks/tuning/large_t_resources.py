"""Offline resources of routing launch candidates for one shape and bucket (no GPU).

Issue #38 asks why fp32 routing at T >= 65536 got slower when the fp32 selection was
reworked, although the table's row for that bucket kept its shape. This compiles
every candidate launch shape of a bucket for a target, as the launcher would compile
it, and writes registers, stack (spills) and shared memory per candidate, so that
the device sweep can start from the shapes that fit the register file. On CUDA
targets it also counts each candidate's SASS instructions: per token, and as the
time the H200 takes to issue them at ``--bound-tokens`` beside the memory floor
there, which says whether a launch shape can reach the floor at all::

    PYTHONPATH=. .venv/bin/python -m benchmarks.tuning.large_t_resources \\
        --dtype float32 --bucket 5 --out benchmarks/results/routing_large_t

Run it under the Python whose Triton the GPU runs (the compile cache keys on the
Triton version; the resources differ between versions), e.g. a venv with
``triton==3.6.0`` for the device's torch 2.11.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from dataclasses import asdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "ci"))

import offline_compile as oc  # noqa: E402

from benchmarks.common import stamp  # noqa: E402
from benchmarks.common.tables import markdown_table  # noqa: E402
from vllm_gemma4_router.routing.launch_table import (  # noqa: E402
    FP32_SELECTS,
    LaunchConfig,
    bucket_launch_config,
    check_launch_config,
)


def candidates(
    dtype: torch.dtype,
    block_e: int,
    topk: int,
    tokens: list[int],
    warps: list[int],
    groups: list[int],
    scale_picks: list[str],
) -> list[LaunchConfig]:
    """Every register-pick launch shape that ``check_launch_config`` accepts."""
    selects = FP32_SELECTS if dtype == torch.float32 else ("checked",)
    found = []
    for tpp, nw, rg, select, pick in itertools.product(tokens, warps, groups, selects, scale_picks):
        config = LaunchConfig(tpp, nw, True, rg, select, pick)
        try:
            check_launch_config(config, block_e, dtype.itemsize, topk)
        except ValueError:
            continue
        found.append(config)
    return found


def resources(configs: list[LaunchConfig], point: oc.MatrixPoint, target: oc.Target) -> list[dict]:
    """One row per config: its fields, ok, registers, stack, shared, SASS instructions
    (CUDA targets)."""
    jobs = {config: oc.job_for(point, target, config) for config in configs}
    results = oc.compile_all(list(jobs.values()))
    rows = []
    for config, job in jobs.items():
        result = results[job]
        res = result.get("resources", {})
        rows.append(
            {
                **asdict(config),
                "ok": result["ok"],
                "registers": res.get("registers"),
                "stack": res.get("stack"),
                "shared": res.get("shared"),
                "instructions": res.get("instructions"),
                "compile_s": result.get("seconds"),
            }
        )
    return rows


#: sm_90's per-SM limits that bound how many programs of one launch are resident: the
#: register file is four partitions of 16384 registers, each warp's registers come
#: from one partition in units of 8 per thread.
SM90_PARTITIONS, SM90_PARTITION_REGISTERS, SM90_BLOCKS, SM90_WARPS = 4, 16384, 32, 64


def resident_tokens(registers: int, num_warps: int, tokens_per_program: int) -> tuple[int, int]:
    """(warps, tokens) resident per SM on sm_90 when registers are the limit: what the
    memory system has in flight at large T (138 registers, one warp: 12, as Nsight
    Compute reported on the H200)."""
    per_warp = -(-registers // 8) * 8 * 32
    warps = min(SM90_PARTITIONS * (SM90_PARTITION_REGISTERS // per_warp), SM90_WARPS)
    blocks = min(warps // num_warps, SM90_BLOCKS)
    return blocks * num_warps, blocks * tokens_per_program


#: The H200's instruction issue (132 SMs, four schedulers of one warp instruction a
#: clock each, the 1.98 GHz boost clock) and its copy bandwidth (issue #38's 256 MiB
#: device-to-device copy, 4233 GB/s): a launch that issues ``n`` warp instructions
#: takes at least ``n / H200_ISSUE_PER_US`` us there, whatever its memory traffic.
H200_ISSUE_PER_US = 132 * 4 * 1.98e3
H200_COPY_GBS = 4233.0


def issue_bound(row: dict, dtype: str, tokens: int) -> dict[str, float]:
    """For ``tokens`` rows routed by the launch ``row`` (with its SASS instruction
    count): the time its instructions take at full issue on the H200 (straight-line
    code, every program runs each instruction once), the op's memory floor there
    (``compare_trees.floor_us``, no mask) and the floor's share of the former, the
    most of the floor that launch could reach."""
    from benchmarks.kernel.compare_trees import floor_us

    programs = -(-tokens // row["tokens_per_program"])
    issue_us = row["instructions"] * row["num_warps"] * programs / H200_ISSUE_PER_US
    floor = floor_us(tokens, dtype, "none", H200_COPY_GBS)
    return {
        f"issue_us_T{tokens}": round(issue_us, 2),
        f"floor_us_T{tokens}": round(floor, 2),
        f"best_of_floor_T{tokens}": round(min(1.0, floor / issue_us), 3),
    }


_SHAPE = ("tokens_per_program", "num_warps", "row_groups", "fp32_select", "scale_pick")


def join_sweep(rows: list[dict], sweep_csv: Path, tokens: list[int]) -> None:
    """Add to each row the L2-hot time ``sweep_launch_table`` measured for its shape
    (randn logits) at each of ``tokens`` and ``issue_share_T``: its issue bound over
    that time, the share of the peak issue rate the launch reached."""
    lines = [line for line in sweep_csv.read_text().splitlines() if not line.startswith("#")]
    measured = {
        (*(r[k] for k in _SHAPE), int(r["T"])): float(r["us"])
        for r in csv.DictReader(lines)
        if r["method"] == "ours" and r["mode"] == "hot" and r["family"] == "randn"
    }
    for row in rows:
        for tokens_ in tokens:
            us = measured.get((*(str(row[k]) for k in _SHAPE), tokens_))
            issue_us = row.get(f"issue_us_T{tokens_}")
            if us is None or issue_us is None:
                continue
            row[f"measured_us_T{tokens_}"] = us
            row[f"issue_share_T{tokens_}"] = round(issue_us / us, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--topk", type=int, default=8)
    parser.add_argument("--bucket", type=int, default=5)
    parser.add_argument("--target", default="sm_90", choices=sorted(oc.TARGETS))
    parser.add_argument("--tokens-per-program", default="2,4,8,16,32")
    parser.add_argument("--warps", default="1,2,4")
    parser.add_argument("--row-groups", default="1,2,4,8")
    parser.add_argument("--scale-picks", default="after,in_row")
    parser.add_argument(
        "--bound-tokens", default="65536,262144", help="T of the H200 issue-bound columns"
    )
    parser.add_argument(
        "--sweep", type=Path, help="a sweep_launch_table CSV: join its times at --bound-tokens"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)

    def ints(text: str) -> list[int]:
        return [int(v) for v in text.split(",")]

    dtype = getattr(torch, args.dtype)
    block_e = 1 << (args.experts - 1).bit_length()
    target = oc.TARGETS[args.target]
    point = oc.MatrixPoint(args.dtype, args.experts, args.topk, args.bucket)
    configs = candidates(
        dtype,
        block_e,
        args.topk,
        ints(args.tokens_per_program),
        ints(args.warps),
        ints(args.row_groups),
        args.scale_picks.split(","),
    )
    table_row = bucket_launch_config(
        args.bucket, block_e, target.platform, dtype == torch.float32, args.topk
    )
    rows = resources(configs, point, target)
    for row in rows:
        row["table_row"] = LaunchConfig(**{k: row[k] for k in asdict(table_row)}) == table_row
        if row["ok"] and target.backend == "cuda":
            row["warps_per_sm"], row["tokens_per_sm"] = resident_tokens(
                row["registers"], row["num_warps"], row["tokens_per_program"]
            )
            if row["instructions"]:
                per_token = row["instructions"] * row["num_warps"] / row["tokens_per_program"]
                row["warp_instructions_per_token"] = round(per_token, 1)
                for tokens in ints(args.bound_tokens):
                    row.update(issue_bound(row, args.dtype, tokens))
    if args.sweep:
        join_sweep(rows, args.sweep, ints(args.bound_tokens))
    rows.sort(key=lambda r: (r["stack"] is None, r["stack"] or 0, r["registers"] or 0))
    columns = list(dict.fromkeys(key for row in rows for key in row))
    triton_version = oc.installed_triton_version()
    header = (
        f"triton={triton_version}, target={args.target}, {args.dtype} E={args.experts} "
        f"K={args.topk} bucket {args.bucket}, kernel_hash={oc.kernel_source_hash()}, "
        f"date={stamp.utc_now()}; issue bound: H200, {H200_ISSUE_PER_US / 1e3:.0f} G warp "
        f"instructions/s; floor: {H200_COPY_GBS:.0f} GB/s, no mask"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    shape = f"{args.dtype}_E{args.experts}_b{args.bucket}"
    name = f"resources_{shape}_{args.target}_triton{triton_version}"
    with open(args.out / f"{name}.csv", "w", newline="") as handle:
        handle.write(f"# {header}\n")
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(columns, [[str(row.get(c, "")) for c in columns] for row in rows])
    (args.out / f"{name}.md").write_text(f"# Offline resources, {header}\n\n{table}\n")
    print(header)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
