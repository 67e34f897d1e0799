"""Record the kernels' compiled code offline and compare two recordings (a refactor's proof).

``python ci/compare_compiled.py record DIR`` compiles, for sm_90 and gfx942, every
distinct launch the tables make: the routing kernel at every point of
``offline_compile.matrix_points`` of ``ROUTING_POINTS`` with and without a padding
mask, and the fused router's table rows (``offline_compile_fused``) with and without
one, the T <= 16 row with each ``ROUTING_VARIANTS`` routing (whose checked rounds
the table rows do not take), and the GEMM path's epilogue kernel (also with checked
and ``after`` routings), with and without a padding mask. It writes
``DIR/jobs.json`` (per compile: what was compiled, registers, spills, a hash of
the code) and the code itself,
normalised, under ``DIR/code/``: SASS from ``cuobjdump -sass`` (instructions only),
AMDGCN with debug-line directives, comments and the kernel-argument metadata
dropped, so that only what the hardware runs is compared.

``python ci/compare_compiled.py compare BEFORE AFTER --csv F --markdown F`` joins two
recordings on the compile (target, kernel, signature, constexprs, warps) and
reports registers and spills before/after and whether the code is identical.
Exit status 1 if any compile got more registers or spills, or failed.

The package compiled is the one ``PYTHONPATH`` imports (so a copy of the old
source can be recorded beside the new one).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import os
import re
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, not interpreted ones
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
sys.path.insert(1, str(Path(__file__).resolve().parent))

TARGET_NAMES = ("sm_90", "gfx942")


#: The routing points compiled: each table row (its BLOCK_E) for 16-bit and fp32 logits
#: at K=8 (fp16's code is bf16's but for the key conversion; E=96 is E=128's BLOCK_E).
ROUTING_POINTS = dict(dtypes=("float32", "bfloat16"), experts=(64, 128, 256), topks=(8,))


def _routing_jobs() -> list[dict[str, Any]]:
    import offline_compile as oc

    jobs: dict[str, dict[str, Any]] = {}
    for target in TARGET_NAMES:
        for point in oc.matrix_points(**ROUTING_POINTS):
            for padding in (False, True):
                point = oc.MatrixPoint(
                    point.dtype, point.num_experts, point.topk, point.bucket, padding
                )
                job = oc.job_for(point, oc.TARGETS[target])
                spec = {
                    "kernel": "gemma4_routing_kernel",
                    "target": target,
                    "signature": list(job.signature),
                    "constants": list(job.constants),
                    "divisible": list(job.divisible),
                    "options": {"num_warps": job.num_warps},
                }
                entry = jobs.setdefault(_key(spec), {**spec, "labels": []})
                entry["labels"].append(point.label())
    return list(jobs.values())


def _fused_jobs() -> list[dict[str, Any]]:
    import offline_compile_fused as ocf
    from offline_compile import REPO, launcher_specialisation

    if importlib.util.find_spec("benchmarks") is None:  # a tree copy on PYTHONPATH
        sys.path.append(str(REPO))
    from benchmarks.tuning.candidates import ROUTING_VARIANTS
    from vllm_gemma4_router.fused_router.launch_table import is_split

    rows, gemm_configs = ocf._table_work()
    variants = [rows[0]._replace(select=a, scale_pick=b) for a, b in ROUTING_VARIANTS]
    gemm_configs += [
        gemm_configs[0]._replace(finish_select=a, finish_scale_pick=b)
        for a, b in (("checked", "in_row"), ("exact", "after"), ("checked", "per_pick"))
    ]
    kernels = _kernels()
    jobs: dict[str, dict[str, Any]] = {}

    def add(kernel: str, target: str, constants: dict, num_tokens: int, options: dict, label):
        fn = kernels[kernel]
        arg_types = {arg: ocf._POINTERS.get(arg, "i32") for arg in fn.arg_names}
        signature, constants, divisible = launcher_specialisation(
            fn.arg_names, arg_types, ocf._typical_ints(num_tokens), constants
        )
        spec = {
            "kernel": kernel,
            "target": target,
            "signature": signature,
            "constants": sorted(constants.items()),
            "divisible": divisible,
            "options": options,
        }
        entry = jobs.setdefault(_key(spec), {**spec, "labels": []})
        entry["labels"].append(label)

    for target in TARGET_NAMES:
        for padding in (False, True):
            for config in rows + ([] if padding else variants):
                if config.pdl and target != "sm_90":
                    continue
                split = is_split(config, ocf.HIDDEN, ocf.EXPERTS)
                add(
                    "gemma4_fused_router_kernel",
                    target,
                    ocf._kernel_constants(config, padding),
                    16 if split else 4096,
                    {"num_warps": config.num_warps, "num_stages": config.num_stages},
                    f"{tuple(config)} padding={padding}",
                )
            for config in gemm_configs:
                for fn, constants, warps in ocf._gemm_path_kernels(config, padding):
                    if fn.__name__ == "gemma4_router_operand_kernel":
                        continue  # calls no device function of the routing
                    add(
                        fn.__name__,
                        target,
                        constants,
                        1024,
                        {"num_warps": warps},
                        f"{tuple(config)} padding={padding}",
                    )
    return list(jobs.values())


def _kernels() -> dict[str, Any]:
    from vllm_gemma4_router.fused_router.gemm_path import (
        gemma4_router_finish_kernel,
        gemma4_router_operand_kernel,
    )
    from vllm_gemma4_router.fused_router.kernels.entry import gemma4_fused_router_kernel
    from vllm_gemma4_router.routing.kernels.entry import gemma4_routing_kernel

    return {
        fn.__name__: fn
        for fn in (
            gemma4_routing_kernel,
            gemma4_fused_router_kernel,
            gemma4_router_finish_kernel,
            gemma4_router_operand_kernel,
        )
    }


def _key(spec: dict[str, Any]) -> str:
    text = json.dumps(
        [spec[k] for k in ("kernel", "target", "signature", "constants", "divisible", "options")],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def normalised_sass(cubin: bytes) -> str:
    """The instructions of ``cuobjdump -sass`` (``offline_compile.sass_lines``)."""
    import offline_compile as oc

    return "\n".join(oc.sass_lines(cubin)) + "\n"


def normalised_amdgcn(asm: str) -> str:
    """The kernel body of the amdgcn text: from the entry label to ``.Lfunc_end``, with
    source-line directives, debug labels and comments dropped (they move with the Python
    source); the ``amdhsa.kernels`` argument metadata lies after it and is left out."""
    body = asm.split(".Lfunc_end", 1)[0]
    start = re.search(r"^\w+:\s*(?:;.*)?$", body, re.MULTILINE)
    body = body[start.start() :] if start else body
    lines = []
    for line in body.splitlines():
        line = line.split(";", 1)[0].rstrip()
        stripped = line.strip()
        if not stripped or stripped.startswith((".loc", ".file", ".cfi_")):
            continue
        if re.fullmatch(r"\.Ltmp\d+:", stripped) or re.fullmatch(r"\.Lfunc_begin\d+:", stripped):
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"


def _compile(job: dict[str, Any]) -> dict[str, Any]:
    import triton
    from offline_compile import TARGETS, _resources
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    fn = _kernels()[job["kernel"]]
    target = TARGETS[job["target"]]
    gpu_target = GPUTarget(target.backend, target.arch, target.warp_size)
    backend = make_backend(gpu_target)
    attrs = {(fn.arg_names.index(name),): backend.parse_attr("D") for name in job["divisible"]}
    constants = {k: v for k, v in job["constants"]}
    signature = {k: v for k, v in job["signature"]}
    result = {k: job[k] for k in ("kernel", "target", "labels")}
    try:
        compiled = triton.compile(
            ASTSource(fn, signature, constants, attrs),
            target=gpu_target,
            options=job["options"],
        )
        if target.backend == "hip":
            code = normalised_amdgcn(compiled.asm["amdgcn"])
        else:
            code = normalised_sass(compiled.asm["cubin"])
        result.update(ok=True, resources=_resources(target, compiled), code=code)
    except Exception as exc:  # one failure must not hide the others
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}"[-2000:])
    return result


def record(out_dir: Path, workers: int) -> None:
    import vllm_gemma4_router  # first: offline_compile_fused puts this checkout on sys.path

    jobs = _routing_jobs() + _fused_jobs()
    code_dir = out_dir / "code"
    code_dir.mkdir(parents=True, exist_ok=True)
    done_dir = out_dir / "results"  # one file per finished compile: a cut run resumes
    done_dir.mkdir(exist_ok=True)
    todo = [job for job in jobs if not (done_dir / f"{_key(job)}.json").is_file()]
    package = Path(vllm_gemma4_router.__file__).parent
    print(f"{len(jobs)} compiles of {package}, {len(todo)} to do", flush=True)
    with tempfile.TemporaryDirectory(prefix="compare-compiled-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # nothing reused from an earlier source
        with ProcessPoolExecutor(workers) as pool:
            futures = {pool.submit(_compile, job): job for job in todo}
            for index, future in enumerate(as_completed(futures)):
                key = _key(futures[future])
                result = future.result()
                code = result.pop("code", None)
                if code is not None:
                    (code_dir / f"{key}.txt").write_text(code)
                    result["code_sha256"] = hashlib.sha256(code.encode()).hexdigest()
                    result["code_lines"] = code.count("\n")
                (done_dir / f"{key}.json").write_text(json.dumps(result, sort_keys=True))
                if index % 10 == 0:
                    print(f"{index + 1}/{len(todo)}", flush=True)
    summary = {_key(job): json.loads((done_dir / f"{_key(job)}.json").read_text()) for job in jobs}
    (out_dir / "jobs.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    failed = sum(not r["ok"] for r in summary.values())
    print(f"recorded {len(summary)} compiles in {out_dir} ({failed} failed)")


def _registers(result: dict[str, Any]) -> tuple[int, int]:
    """(registers, spills): sm_90 REG and local bytes; gfx942 VGPRs (+AGPRs) and spills."""
    res = result["resources"]
    if result["target"].startswith("gfx"):
        return res["vgprs"] + res["agprs"], res["vgpr_spills"] + res["sgpr_spills"] + res["scratch"]
    return res["registers"], res["local"] + res["stack"]


def compare(before_dir: Path, after_dir: Path, csv_path: Path | None, md_path: Path | None) -> int:
    before = json.loads((before_dir / "jobs.json").read_text())
    after = json.loads((after_dir / "jobs.json").read_text())
    rows = []
    for key in sorted(before, key=lambda k: (before[k]["target"], before[k]["kernel"], k)):
        old, new = before[key], after.get(key)
        row = {
            "target": old["target"],
            "kernel": old["kernel"],
            "compile": key,
            "launches": len(old["labels"]),
            "example": old["labels"][0],
        }
        if new is None or not (old["ok"] and new["ok"]):
            row["status"] = "missing" if new is None else "failed"
            rows.append(row)
            continue
        (reg_b, spill_b), (reg_a, spill_a) = _registers(old), _registers(new)
        same = old["code_sha256"] == new["code_sha256"]
        row.update(
            registers_before=reg_b,
            registers_after=reg_a,
            spills_before=spill_b,
            spills_after=spill_a,
            code="identical" if same else "differs",
            code_lines_before=old["code_lines"],
            code_lines_after=new["code_lines"],
            status="ok" if reg_a <= reg_b and spill_a <= spill_b else "worse",
        )
        if not same:
            row["changed_lines"] = _changed_lines(
                before_dir / "code" / f"{key}.txt", after_dir / "code" / f"{key}.txt"
            )
        rows.append(row)
    fields = [
        "target",
        "kernel",
        "compile",
        "launches",
        "example",
        "registers_before",
        "registers_after",
        "spills_before",
        "spills_after",
        "code",
        "code_lines_before",
        "code_lines_after",
        "changed_lines",
        "status",
    ]
    if csv_path:
        with csv_path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fields)
            writer.writeheader()
            writer.writerows(rows)
    text = _summary(rows)
    print(text)
    if md_path:
        md_path.write_text(text)
    bad = [r for r in rows if r["status"] != "ok"] + [{} for k in after if k not in before]
    return int(bool(bad))


def _changed_lines(a: Path, b: Path) -> int:
    import difflib

    diff = difflib.unified_diff(a.read_text().splitlines(), b.read_text().splitlines(), n=0)
    return sum(1 for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---"))


def _summary(rows: list[dict[str, Any]]) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["target"], row["kernel"]), []).append(row)
    unit = {"sm_90": "REG / local+stack B", "gfx942": "VGPR+AGPR / spills+scratch"}
    lines = [
        "| target | kernel | compiles (launches) | code identical | registers before -> after"
        " (max) | spills before -> after (max) | worse / failed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (target, kernel), group in sorted(groups.items()):
        done = [r for r in group if r["status"] in ("ok", "worse")]
        same = sum(r.get("code") == "identical" for r in done)
        reg_b = max((r["registers_before"] for r in done), default=0)
        reg_a = max((r["registers_after"] for r in done), default=0)
        sp_b = max((r["spills_before"] for r in done), default=0)
        sp_a = max((r["spills_after"] for r in done), default=0)
        worse = sum(r["status"] == "worse" for r in group)
        failed = sum(r["status"] in ("failed", "missing") for r in group)
        launches = sum(r["launches"] for r in group)
        lines.append(
            f"| {target} ({unit[target]}) | {kernel} | {len(group)} ({launches}) | "
            f"{same}/{len(done)} | {reg_b} -> {reg_a} | {sp_b} -> {sp_a} | {worse} / {failed} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out_dir", type=Path)
    rec.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("before", type=Path)
    cmp_.add_argument("after", type=Path)
    cmp_.add_argument("--csv", type=Path)
    cmp_.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.out_dir, args.workers)
        return 0
    return compare(args.before, args.after, args.csv, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
