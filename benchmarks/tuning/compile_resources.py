"""Write the offline-compile resource table: registers, shared memory/LDS, spills, scratch.

For every launch the table hands out (logit dtype x E in {64, 100, 128, 256} x
K in {1, 6, 8} x token bucket) and every target in ``ci/offline_compile.py``
(sm_80, sm_90, sm_100, gfx90a, gfx942, gfx950), compiled on this machine
without a GPU::

    PYTHONPATH=. .venv/bin/python benchmarks/tuning/compile_resources.py

writes ``benchmarks/results/compile_resources_triton<version>.csv`` (every
compile) and ``.md`` (summary per target, then the K=8 rows), stamped with the
Triton version, the date and the kernel's source hash. Shares the compile cache
with ``tests/routing/test_compile_matrix.py`` (.cache/compile_matrix/).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "ci"))

import offline_compile as oc  # noqa: E402

_NVIDIA_KEYS = ("registers", "stack", "local", "static_shared", "instructions")
_AMD_KEYS = ("vgprs", "agprs", "sgprs", "vgpr_spills", "sgpr_spills", "scratch", "occupancy")
_AMD_KEYS += ("ds_permutes", "static_lds")
# Intel (ci/xpu_compile.py): the default 128-GRF build, and the large-GRF rebuild
# Intel's driver makes when the default one spills.
_XPU_KEYS = ("simd", "grf", "spill_fill", "private_memory", "log_spills")
_XPU_KEYS += tuple(f"large_grf_{key}" for key in ("grf", "spill_fill", "scratch", "log_spills"))
COLUMNS = (
    ("triton", "date", "kernel_hash", "target", "dtype", "E", "K", "buckets")
    + ("tokens_per_program", "num_warps", "row_groups", "register_picks", "select", "ok", "shared")
    + _NVIDIA_KEYS
    + _AMD_KEYS
    + _XPU_KEYS
    + ("size_per_thread", "threads_per_warp", "warps_per_cta", "lanes_per_row")
    + ("duplication", "compile_s")
)


def _buckets(points: Sequence[oc.MatrixPoint]) -> str:
    """Bucket indices as runs: 0-1,3."""
    runs: list[list[int]] = []
    for bucket in sorted({p.bucket for p in points}):
        if runs and bucket == runs[-1][-1] + 1:
            runs[-1].append(bucket)
        else:
            runs.append([bucket])
    return ",".join(f"{r[0]}" if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def collect(
    targets: Sequence[str],
    workers: int | None,
    experts: Sequence[int] = (64, 96, 128, 256),
    topks: Sequence[int] = (1, 6, 8),
) -> list[dict[str, object]]:
    """One row per distinct compile (buckets with the same compile merged), all targets."""
    points = oc.matrix_points(experts=experts, topks=topks)
    plan: dict[tuple[str, oc.CompileJob], list[oc.MatrixPoint]] = {}
    for name in targets:
        for point in points:
            plan.setdefault((name, oc.job_for(point, oc.TARGETS[name])), []).append(point)
    results = oc.compile_all([job for _, job in plan], workers=workers)
    stamp = {"date": datetime.date.today().isoformat(), "kernel_hash": oc.kernel_source_hash()}
    rows = []
    for (name, job), covered in plan.items():
        result, first, constants = results[job], covered[0], dict(job.constants)
        row: dict[str, object] = dict.fromkeys(COLUMNS, "")
        row.update(stamp)
        row.update(
            target=name,
            dtype=first.dtype,
            # Identical compiles merge: E=96 and E=128 differ only in runtime values.
            E=",".join(str(e) for e in sorted({p.num_experts for p in covered})),
            K=",".join(str(k) for k in sorted({p.topk for p in covered})),
            buckets=_buckets(covered),
            tokens_per_program=constants.get("TOKENS_PER_PROGRAM", ""),
            num_warps=job.num_warps,
            row_groups=constants.get("ROW_GROUPS", ""),
            register_picks=constants.get("REGISTER_PICKS", ""),
            select={0: "narrow", 1: "checked", 2: "exact", 3: "checked_rows"}.get(
                constants.get("SELECT"), ""
            ),
            ok=result["ok"],
            compile_s=result["seconds"],
            triton=result["triton"],  # Intel targets compile with Intel's own Triton
        )
        if result["ok"]:
            row.update({k: v for k, v in result["resources"].items() if k in COLUMNS})
            layout = result["layout"]
            row.update(
                size_per_thread="x".join(map(str, layout["sizePerThread"])),
                threads_per_warp="x".join(map(str, layout["threadsPerWarp"])),
                warps_per_cta="x".join(map(str, layout["warpsPerCTA"])),
                lanes_per_row=layout["lanes_per_row"],
                duplication=layout["duplication"],
            )
        rows.append(row)
    return rows


def write_csv(rows: Sequence[dict[str, object]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "?"


# Per backend: the register column, what counts as a spill, the detail columns.
_VIEWS = {
    "cuda": ("registers", ("local", "stack"), ("registers", "stack", "local")),
    "hip": (
        "vgprs",
        ("vgpr_spills", "sgpr_spills", "scratch"),
        ("vgprs", "sgprs", "occupancy", "ds_permutes", "vgpr_spills", "sgpr_spills", "scratch"),
    ),
    "xpu": (
        "grf",
        ("spill_fill", "scratch"),
        ("simd", "grf", "spill_fill", "scratch", "large_grf_spill_fill", "large_grf_scratch"),
    ),
}


def markdown(rows: Sequence[dict[str, object]], targets: Sequence[str], topk: int = 8) -> str:
    """The summary per target and the rows at the largest K (the CSV has every K)."""
    first = rows[0]
    versions = ", ".join(sorted({f"{r['triton']}" for r in rows}))
    lines = [
        f"# Offline compile resources, triton {versions}",
        "",
        f"Generated {first['date']} by `benchmarks/tuning/compile_resources.py` "
        "(kernel source hash "
        f"`{first['kernel_hash']}`, commit `{_git_commit()}`), on a CPU-only machine: "
        "`triton.compile` to cubin / hsaco / SPIR-V, resources read from the artefacts "
        "(cuobjdump resource usage; amdgcn code-object metadata; for Intel, ocloc's Ponte "
        "Vecchio binary, see `ci/xpu_compile.py`). NVIDIA and Intel targets run the CUDA "
        "rows of the launch table, AMD targets the hip rows. Logits and scale share the "
        "dtype; contiguous tensors (inner strides 1; E and the row stride 16-divisible "
        "unless E is not a multiple of 16). E=96 is the non-power-of-two case (BLOCK_E 128).",
        "",
        "Columns: `shared` = shared memory / LDS Triton allocates (bytes); NVIDIA `local` = "
        "local (spill) memory per thread, `stack` = stack frame; AMD `scratch` = private "
        "segment per lane, `occupancy` = waves per SIMD (LLVM), `ds_permutes` = LDS-crossbar "
        "lane permutes in the code; Intel `grf` = registers per thread (default 128-GRF "
        "build), `spill_fill` = stateless spill/fill used, `scratch` = per-thread scratch "
        "bytes, `large_grf_*` = the 256-GRF rebuild Intel's driver makes when the default "
        "build spills; layout = the logits load's sizePerThread / threadsPerWarp / "
        "warpsPerCTA, `lanes/row` = threads holding one token's row.",
        "",
        "## Summary",
        "",
        "| target | triton | compiles | failed | max registers (NVIDIA) / VGPRs (AMD) / GRFs "
        "(Intel) | max shared/LDS B | spills or scratch |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name in targets:
        register_key, spill_keys, _ = _VIEWS[oc.TARGETS[name].backend]
        mine = [r for r in rows if r["target"] == name]
        good = [r for r in mine if r["ok"]]
        spilled = [r for r in good if any(int(r[k] or 0) for k in spill_keys)]
        lines.append(
            f"| {name} | {mine[0]['triton'] if mine else '-'} | {len(mine)} "
            f"| {len(mine) - len(good)} | {max((int(r[register_key]) for r in good), default=0)} "
            f"| {max((int(r['shared']) for r in good), default=0)} "
            f"| {len(spilled) or 'none'} |"
        )
    for name in targets:
        _, _, columns = _VIEWS[oc.TARGETS[name].backend]
        lines += [
            "",
            f"## {name} (K={topk})",
            "",
            "| dtype | E | buckets | tokens | warps | groups | reg picks | "
            + " | ".join(columns)
            + " | shared | layout | lanes/row |",
            "| --- | ---: | --- | ---: | ---: | ---: | --- | "
            + "---: | " * len(columns)
            + "---: | --- | ---: |",
        ]
        for r in rows:
            if r["target"] != name or str(topk) not in str(r["K"]).split(","):
                continue
            head = f"| {r['dtype']} | {r['E']} | {r['buckets']} "
            if not r["ok"]:
                lines.append(head + "| compile failed |")
                continue
            layout = f"{r['size_per_thread']} / {r['threads_per_warp']} / {r['warps_per_cta']}"
            lines.append(
                head
                + f"| {r['tokens_per_program']} | {r['num_warps']} | {r['row_groups']} "
                + f"| {r['register_picks']} | "
                + " | ".join(str(r[c]) for c in columns)
                + f" | {r['shared']} | {layout} | {r['lanes_per_row']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--targets",
        default=",".join(name for name, t in oc.TARGETS.items() if t.backend != "xpu"),
        help="comma-separated; pvc (Intel) needs bash ci/setup_xpu_toolchain.sh first",
    )
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--workers", type=int, default=None, help="compile processes")
    parser.add_argument("--experts", default="64,96,128,256", help="E values, comma-separated")
    parser.add_argument("--topks", default="1,6,8", help="K values, comma-separated")
    parser.add_argument("--tag", default="", help="file-name suffix (a table off the defaults)")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    experts = [int(e) for e in args.experts.split(",") if e]
    topks = [int(k) for k in args.topks.split(",") if k]
    if not experts or not topks or min(topks) < 1 or max(topks) > min(experts):
        parser.error("--experts and --topks need 1 <= K <= E for every pair")
    unknown = set(targets) - set(oc.TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(oc.TARGETS)}")
    rows = collect(targets, args.workers, experts, topks)
    # The version has dots: no Path.with_suffix here.
    versions = "+".join(sorted({str(r["triton"]) for r in rows}))
    stem = f"compile_resources_triton{versions}" + (f"_{args.tag}" if args.tag else "")
    write_csv(rows, args.out_dir / f"{stem}.csv")
    (args.out_dir / f"{stem}.md").write_text(markdown(rows, targets, max(topks)))
    failed = sum(1 for r in rows if not r["ok"])
    print(f"wrote {args.out_dir / stem}.csv/.md: {len(rows)} compiles, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
