"""Write the offline-compile resource table: registers, shared memory/LDS, spills, scratch.

For every launch the table hands out (logit dtype x E in {64, 100, 128, 256} x
K in {1, 6, 8} x token bucket) and every target in ``ci/offline_compile.py``
(sm_80, sm_90, sm_100, gfx90a, gfx942, gfx950), compiled on this machine
without a GPU::

    PYTHONPATH=. .venv/bin/python benchmarks/compile_resources.py

writes ``benchmarks/results/compile_resources_triton<version>.csv`` (every
compile) and ``.md`` (summary per target, then the K=8 rows), stamped with the
Triton version, the date and the kernel's source hash. Shares the compile cache
with ``tests/test_compile_matrix.py`` (.cache/compile_matrix/).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "ci"))

import offline_compile as oc  # noqa: E402

_NVIDIA_KEYS = ("registers", "stack", "local", "static_shared")
_AMD_KEYS = ("vgprs", "agprs", "sgprs", "vgpr_spills", "sgpr_spills", "scratch", "occupancy")
COLUMNS = (
    ("triton", "date", "kernel_hash", "target", "dtype", "E", "K", "buckets")
    + ("tokens_per_program", "num_warps", "row_groups", "register_picks", "ok", "shared")
    + _NVIDIA_KEYS
    + _AMD_KEYS
    + ("ds_permutes", "size_per_thread", "threads_per_warp", "warps_per_cta", "lanes_per_row")
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


def collect(targets: Sequence[str], workers: int | None) -> list[dict[str, object]]:
    """One row per distinct compile (buckets with the same compile merged), all targets."""
    points = oc.matrix_points()
    plan: dict[tuple[str, oc.CompileJob], list[oc.MatrixPoint]] = {}
    for name in targets:
        for point in points:
            plan.setdefault((name, oc.job_for(point, oc.TARGETS[name])), []).append(point)
    results = oc.compile_all([job for _, job in plan], workers=workers)
    stamp = {
        "triton": oc.installed_triton_version(),
        "date": datetime.date.today().isoformat(),
        "kernel_hash": oc.kernel_source_hash(),
    }
    rows = []
    for (name, job), covered in plan.items():
        result, first, constants = results[job], covered[0], dict(job.constants)
        row: dict[str, object] = dict.fromkeys(COLUMNS, "")
        row.update(stamp)
        row.update(
            target=name,
            dtype=first.dtype,
            E=first.num_experts,
            K=first.topk,
            buckets=_buckets(covered),
            tokens_per_program=constants.get("TOKENS_PER_PROGRAM", ""),
            num_warps=job.num_warps,
            row_groups=constants.get("ROW_GROUPS", ""),
            register_picks=constants.get("REGISTER_PICKS", ""),
            ok=result["ok"],
            compile_s=result["seconds"],
        )
        if result["ok"]:
            row.update(result["resources"])
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


def markdown(rows: Sequence[dict[str, object]], targets: Sequence[str]) -> str:
    """The summary per target and the K=8 rows (the CSV also has K=1 and K=6)."""
    first = rows[0]
    lines = [
        f"# Offline compile resources, triton {first['triton']}",
        "",
        f"Generated {first['date']} by `benchmarks/compile_resources.py` (kernel source hash "
        f"`{first['kernel_hash']}`, commit `{_git_commit()}`), on a CPU-only machine: "
        "`triton.compile` to cubin / hsaco, resources read from the artefacts (cuobjdump "
        "resource usage; amdgcn code-object metadata). NVIDIA targets run the CUDA rows of "
        "the launch table, AMD targets the hip rows. Logits and scale share the dtype; "
        "contiguous tensors (inner strides 1, E and row stride 16-divisible except E=100).",
        "",
        "Columns: `shared` = shared memory / LDS Triton allocates (bytes); NVIDIA `local` = "
        "local (spill) memory per thread, `stack` = stack frame; AMD `scratch` = private "
        "segment per lane, `occupancy` = waves per SIMD (LLVM), `ds_permutes` = LDS-crossbar "
        "lane permutes in the code; layout = the logits load's sizePerThread / threadsPerWarp "
        "/ warpsPerCTA, `lanes/row` = threads holding one token's row.",
        "",
        "## Summary",
        "",
        "| target | compiles | failed | max registers (NVIDIA) / VGPRs (AMD) | min occupancy "
        "| max shared/LDS B | spills or scratch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name in targets:
        mine = [r for r in rows if r["target"] == name]
        good = [r for r in mine if r["ok"]]
        amd = oc.TARGETS[name].backend == "hip"
        regs = max((int(r["vgprs"] if amd else r["registers"]) for r in good), default=0)
        occupancy = min((int(r["occupancy"]) for r in good), default=0) if amd else "-"
        spill_keys = ("vgpr_spills", "sgpr_spills", "scratch") if amd else ("local", "stack")
        spilled = [r for r in good if any(int(r[k]) for k in spill_keys)]
        lines.append(
            f"| {name} | {len(mine)} | {len(mine) - len(good)} | {regs} | {occupancy} "
            f"| {max((int(r['shared']) for r in good), default=0)} "
            f"| {len(spilled) or 'none'} |"
        )
    for name in targets:
        amd = oc.TARGETS[name].backend == "hip"
        regs = "VGPRs | SGPRs | occ | ds_permutes | scratch" if amd else "regs | stack | local"
        lines += [
            "",
            f"## {name} (K=8)",
            "",
            f"| dtype | E | buckets | tokens | warps | groups | reg picks | {regs} | shared "
            "| layout | lanes/row |",
            "| --- | ---: | --- | ---: | ---: | ---: | --- | "
            + "---: | " * (5 if amd else 3)
            + "---: | --- | ---: |",
        ]
        for r in rows:
            if r["target"] != name or r["K"] != 8:
                continue
            if not r["ok"]:
                lines.append(f"| {r['dtype']} | {r['E']} | {r['buckets']} | compile failed |")
                continue
            if amd:
                used = f"{r['vgprs']} | {r['sgprs']} | {r['occupancy']} | {r['ds_permutes']} "
                used += f"| {r['scratch']}"
            else:
                used = f"{r['registers']} | {r['stack']} | {r['local']}"
            layout = f"{r['size_per_thread']} / {r['threads_per_warp']} / {r['warps_per_cta']}"
            lines.append(
                f"| {r['dtype']} | {r['E']} | {r['buckets']} | {r['tokens_per_program']} "
                f"| {r['num_warps']} | {r['row_groups']} | {r['register_picks']} | {used} "
                f"| {r['shared']} | {layout} | {r['lanes_per_row']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default=",".join(oc.TARGETS), help="comma-separated")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--workers", type=int, default=None, help="compile processes")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(oc.TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(oc.TARGETS)}")
    rows = collect(targets, args.workers)
    # The version has dots: no Path.with_suffix here.
    stem = f"compile_resources_triton{rows[0]['triton']}"
    write_csv(rows, args.out_dir / f"{stem}.csv")
    (args.out_dir / f"{stem}.md").write_text(markdown(rows, targets))
    failed = sum(1 for r in rows if not r["ok"])
    print(f"wrote {args.out_dir / stem}.csv/.md: {len(rows)} compiles, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
