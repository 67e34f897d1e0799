"""Compile the routing kernel offline (no GPU) for NVIDIA and AMD targets and read its resources.

``triton.compile`` takes the kernel from Triton source to a cubin (NVIDIA) or an
hsaco (AMD) on a machine without any GPU. This module compiles, for one
launch-table bucket, exactly what the launcher would launch (the constexprs and
``num_warps`` of ``benchmarks.tuning.compile_specs.compile_spec``) and reads from the compiled
artefact what the hardware will allocate: registers, shared memory / LDS,
spills and scratch (private) memory, plus the layout Triton chose for the
logits load (how many lanes hold one token's row, how many lanes duplicate
others).

The compiles run in worker processes (``python ci/offline_compile.py
--worker``): the test suite imports the kernel under ``TRITON_INTERPRET=1``,
where ``triton.jit`` gives an interpreted function that cannot be compiled.
Results are cached as JSON under ``.cache/compile_matrix/``, keyed on the
kernel's source, the Triton version, the target and the compiled
specialisation, so a second run only reads files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO / ".cache" / "compile_matrix"
#: bump when the result format or what is read from the artefacts changes
_SCHEMA = 3


@dataclass(frozen=True)
class Target:
    """One offline compile target: Triton's ``GPUTarget`` fields and the launch-table platform."""

    name: str
    backend: str  # "cuda", "hip" or "xpu"
    arch: int | str
    warp_size: int

    @property
    def platform(self) -> str:
        """The ``launch_table`` platform whose rows this target runs."""
        return self.backend

    @property
    def vendor(self) -> str:
        return {"cuda": "NVIDIA", "hip": "AMD", "xpu": "Intel"}[self.backend]


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("sm_80", "cuda", 80, 32),  # A100
        Target("sm_90", "cuda", 90, 32),  # H100 / H200
        Target("sm_100", "cuda", 100, 32),  # B200
        Target("gfx90a", "hip", "gfx90a", 64),  # MI200
        Target("gfx942", "hip", "gfx942", 64),  # MI300X / MI325X
        Target("gfx950", "hip", "gfx950", 64),  # MI350X / MI355X
        # Ponte Vecchio (Max 1550) through Intel's Triton and ocloc: ci/xpu_compile.py
        Target("pvc", "xpu", "pvc", 32),
    )
}

XPU_TOOLCHAIN = REPO / ".cache" / "xpu-toolchain"

_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class MatrixPoint:
    """One launch the package can make: logit dtype, E experts, top-K, launch-table bucket,
    with or without an ``is_padding`` mask (``HAS_PADDING``)."""

    dtype: str  # torch dtype name: float32, bfloat16, float16
    num_experts: int
    topk: int
    bucket: int
    has_padding: bool = False

    def label(self) -> str:
        padding = " padding" if self.has_padding else ""
        return f"{self.dtype} E={self.num_experts} K={self.topk} b{self.bucket}{padding}"


def matrix_points(
    dtypes: Iterable[str] = _DTYPES,
    experts: Iterable[int] = (64, 96, 128, 256),
    topks: Iterable[int] = (1, 6, 8),
    buckets: Iterable[int] | None = None,
) -> list[MatrixPoint]:
    """Every (dtype, E, K, bucket) combination; all buckets of the launch table by default.

    E=96 is the non-power-of-two case (padded to BLOCK_E 128, 32 masked columns).
    An E whose rows are not 16-byte aligned (E=100) compiles without vector loads
    and spills in the large buckets (see the resource table's notes): it is not a
    default, ``benchmarks/tuning/compile_resources.py --experts 100`` shows it."""
    if buckets is None:
        from vllm_gemma4_router.routing.launch_table import NUM_BUCKETS

        buckets = range(NUM_BUCKETS)
    buckets = tuple(buckets)
    return [
        MatrixPoint(d, e, k, b)
        for d in dtypes
        for e in experts
        for k in topks
        if k <= e
        for b in buckets
    ]


@dataclass(frozen=True)
class CompileJob:
    """One distinct compile: everything ``triton.compile`` is given, hashable for dedupe."""

    target: str
    signature: tuple[tuple[str, str], ...]  # every kernel parameter in order -> type or constexpr
    constants: tuple[tuple[str, Any], ...]  # constexpr parameters (launch table + specialised 1s)
    divisible: tuple[str, ...]  # parameters Triton may assume 16-divisible (aligned pointers)
    num_warps: int

    def key(self, kernel_hash: str, triton_version: str) -> str:
        text = json.dumps(
            [_SCHEMA, kernel_hash, triton_version, self.target, self.signature]
            + [self.constants, self.divisible, self.num_warps],
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def _typical_ints(num_experts: int, topk: int) -> dict[str, int]:
    # The launch vLLM makes: contiguous [T, E] logits, [E] scale, [T, K] outputs.
    # Parameters not named here (T itself, or ones a kernel rewrite adds) stay
    # unspecialised, which is the most general kernel Triton would build.
    return {
        "num_experts": num_experts,
        "stride_logit_t": num_experts,
        "stride_logit_e": 1,
        "stride_scale": 1,
        "stride_weight_t": topk,
        "stride_weight_k": 1,
        "stride_id_t": topk,
        "stride_id_k": 1,
    }


def launcher_specialisation(
    arg_names: Sequence[str],
    arg_types: dict[str, str],
    typical: dict[str, int],
    constexprs: dict[str, Any],
) -> tuple[list[tuple[str, str]], dict[str, Any], list[str]]:
    """``(signature, constants, divisible)`` of a kernel launched with the ``typical`` int
    arguments, specialised as Triton's launcher specialises them: ints equal to 1
    become constexprs; tensor pointers and multiples of 16 are 16-divisible."""
    signature: list[tuple[str, str]] = []
    constants = dict(constexprs)
    divisible: list[str] = []
    for name in arg_names:
        if name in constexprs:
            signature.append((name, "constexpr"))
            continue
        arg_type = arg_types[name]
        value = typical.get(name)
        if arg_type.startswith("*"):
            divisible.append(name)  # torch allocations are at least 16-byte aligned
        elif value == 1:
            signature.append((name, "constexpr"))
            constants[name] = 1
            continue
        elif value is not None and value % 16 == 0:
            divisible.append(name)
        signature.append((name, arg_type))
    return signature, constants, divisible


def job_for(point: MatrixPoint, target: Target, config: Any = None) -> CompileJob:
    """The compile a launch at ``point`` makes on ``target``, specialised as Triton's launcher
    would specialise a contiguous launch (ints equal to 1 become constexprs, multiples of 16
    and tensor pointers are marked 16-divisible). ``config`` (a ``LaunchConfig``): compile
    that launch shape instead of the bucket's table row."""
    import importlib.util

    import torch

    if importlib.util.find_spec("benchmarks") is None:  # run from outside the checkout
        sys.path.append(str(REPO))
    from benchmarks.tuning.compile_specs import compile_spec
    from vllm_gemma4_router.routing.kernels.entry import gemma4_routing_kernel

    dtype = getattr(torch, point.dtype)
    spec = compile_spec(
        point.bucket,
        point.topk,
        point.num_experts,
        dtype,
        dtype,
        target.platform,
        has_padding=point.has_padding,
        config=config,
    )
    signature, constants, divisible = launcher_specialisation(
        gemma4_routing_kernel.arg_names,
        spec.arg_types,
        _typical_ints(point.num_experts, point.topk),
        spec.constexprs,
    )
    return CompileJob(
        target.name,
        tuple(signature),
        tuple(sorted(constants.items())),
        tuple(divisible),
        spec.num_warps,
    )


def _package_dir() -> Path:
    # The package this process imports (a worktree, or an installed copy): the
    # workers must compile that same kernel, and the cache key must hash it.
    import vllm_gemma4_router

    return Path(vllm_gemma4_router.__file__).resolve().parent


def kernel_source_hash() -> str:
    """Hash of every package module that defines Triton code (the compile cache's kernel key)."""
    package = _package_dir()
    digest = hashlib.sha256()
    # Recursive: the kernels live in subpackages (routing/kernels/, fused_router/).
    for path in sorted(package.rglob("*.py")):
        text = path.read_bytes()
        if b"triton.jit" in text:
            digest.update(path.relative_to(package).as_posix().encode() + b"\0" + text)
    return digest.hexdigest()[:16]


def installed_triton_version() -> str:
    """Triton's version without importing it (the test process runs it interpreted)."""
    from importlib.metadata import version

    return version("triton")


def compile_all(
    jobs: Sequence[CompileJob], workers: int | None = None, cache_dir: Path = CACHE_DIR
) -> dict[CompileJob, dict[str, Any]]:
    """Results for ``jobs`` (deduplicated), from the cache or compiled by worker processes.

    Each result has ``ok`` and, when ok, ``resources`` (registers, shared/LDS,
    spills, scratch), ``layout`` (the logits load) and ``seconds``; else ``error``."""
    kernel_hash = kernel_source_hash()
    unique = list(dict.fromkeys(jobs))
    versions = {
        backend: (xpu_toolchain_version() if backend == "xpu" else installed_triton_version())
        for backend in {TARGETS[job.target].backend for job in unique}
    }
    paths = {
        job: cache_dir / f"{job.key(kernel_hash, versions[TARGETS[job.target].backend])}.json"
        for job in unique
    }
    missing = [job for job in unique if not paths[job].is_file()]
    if missing:
        cache_dir.mkdir(parents=True, exist_ok=True)
        xpu = [job for job in missing if TARGETS[job.target].backend == "xpu"]
        _run_workers([job for job in missing if job not in xpu], paths, workers)
        _run_workers(xpu, paths, workers, xpu=True)
    results: dict[CompileJob, dict[str, Any]] = {}
    for job in unique:
        results[job] = json.loads(paths[job].read_text())
    return results


def xpu_toolchain_version() -> str:
    """Versions of the XPU toolchain (``ci/setup_xpu_toolchain.sh``): its Triton and ocloc."""
    stamp = XPU_TOOLCHAIN / ".ready"
    wheels = sorted(XPU_TOOLCHAIN.glob("venv/lib/python*/site-packages/triton_xpu-*.dist-info"))
    debs = sorted(p.name for p in (REPO / ".cache" / "debs").glob("intel-opencl-icd_*.deb"))
    if not stamp.is_file() or not wheels or not debs:
        raise RuntimeError(
            "the Intel XPU compile toolchain is missing: run bash ci/setup_xpu_toolchain.sh"
        )
    # The worker's own code decides what is read from the binaries: part of the key too.
    worker = hashlib.sha256((REPO / "ci" / "xpu_compile.py").read_bytes()).hexdigest()[:12]
    return f"{wheels[-1].name}+{debs[-1]}+{worker}"


def _run_workers(
    jobs: Sequence[CompileJob],
    paths: dict[CompileJob, Path],
    workers: int | None,
    xpu: bool = False,
) -> None:
    if not jobs:
        return
    if workers is None:
        workers = int(os.environ.get("COMPILE_MATRIX_WORKERS", min(4, os.cpu_count() or 1)))
    workers = max(1, min(workers, len(jobs)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    package_root = str(_package_dir().parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    # Triton 3.9 warns when this is unset; 1 is its default (what a launch gets).
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    command = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    if xpu:
        xpu_toolchain_version()  # a clear error when it is not set up
        # Intel's Triton builds its arch parser with $CC (C++ source) against libze_loader.
        lib = str(XPU_TOOLCHAIN / "root" / "usr" / "lib" / "x86_64-linux-gnu")
        env.update(CC="g++", LIBRARY_PATH=lib, LD_LIBRARY_PATH=lib)
        env["GEMMA4_PACKAGE_DIR"] = str(_package_dir())
        env.pop("PYTHONPATH")  # the worker loads the kernel modules alone (no torch there)
        # Kept: the arch parser Intel's Triton compiles first (SYCL headers) takes ~20 s.
        env["TRITON_CACHE_DIR"] = str(XPU_TOOLCHAIN / "triton-cache")
        command = [
            str(XPU_TOOLCHAIN / "venv" / "bin" / "python"),
            str(REPO / "ci" / "xpu_compile.py"),
        ]
    procs = []
    with tempfile.TemporaryDirectory(prefix="gemma4-compile-") as triton_cache:
        env.setdefault("TRITON_CACHE_DIR", triton_cache)
        for index in range(workers):
            # Interleaved shares: neighbouring jobs (similar cost) go to different workers.
            share = [_job_payload(job, paths[job]) for job in jobs[index::workers]]
            proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=REPO,
                text=True,
            )
            procs.append((proc, json.dumps(share)))
        failures = []
        for proc, payload in procs:
            out, err = proc.communicate(payload)
            if proc.returncode != 0:
                failures.append(f"worker exit {proc.returncode}:\n{out[-2000:]}\n{err[-4000:]}")
    if failures:
        raise RuntimeError("offline compile worker failed:\n" + "\n".join(failures))


def _job_payload(job: CompileJob, path: Path) -> dict[str, Any]:
    return {
        "target": job.target,
        "signature": list(job.signature),
        "constants": list(job.constants),
        "divisible": list(job.divisible),
        "num_warps": job.num_warps,
        "path": str(path),
    }


# ---------------------------------------------------------------- worker side


def _worker_main() -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    from vllm_gemma4_router.routing.kernels.entry import gemma4_routing_kernel as fn

    if not isinstance(fn, triton.runtime.JITFunction):
        raise SystemExit("worker: the kernel is not a JITFunction (TRITON_INTERPRET set?)")
    for payload in json.loads(sys.stdin.read()):
        target = TARGETS[payload["target"]]
        gpu_target = GPUTarget(target.backend, target.arch, target.warp_size)
        backend = make_backend(gpu_target)
        signature = dict(payload["signature"])
        constants = dict(payload["constants"])
        attrs = {
            (fn.arg_names.index(name),): backend.parse_attr("D") for name in payload["divisible"]
        }
        started = time.perf_counter()
        try:
            compiled = triton.compile(
                ASTSource(fn, signature, constants, attrs),
                target=gpu_target,
                options={"num_warps": payload["num_warps"]},
            )
            result = {
                "ok": True,
                "resources": _resources(target, compiled),
                "layout": logits_load_layout(compiled.asm["ttgir"]),
            }
        except Exception as exc:  # reported per job: one failure must not hide the others
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[-4000:]}
        result["seconds"] = round(time.perf_counter() - started, 3)
        result["triton"] = triton.__version__
        path = Path(payload["path"])
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(result, sort_keys=True))
        tmp.replace(path)


def _resources(target: Target, compiled: Any) -> dict[str, int]:
    shared = int(compiled.metadata.shared)
    if target.backend == "hip":
        return {**amdgcn_resources(compiled.asm["amdgcn"]), "shared": shared}
    cubin = compiled.asm["cubin"]
    return {**cubin_resources(cubin), "instructions": sass_instructions(cubin), "shared": shared}


_AMDGCN_FIELDS = {
    "vgpr_count": "vgprs",
    "agpr_count": "agprs",
    "sgpr_count": "sgprs",
    "vgpr_spill_count": "vgpr_spills",
    "sgpr_spill_count": "sgpr_spills",
    "private_segment_fixed_size": "scratch",
    "group_segment_fixed_size": "static_lds",
}


def amdgcn_resources(asm: str) -> dict[str, int]:
    """Registers, spills and scratch of the (one) kernel in amdgcn assembly text.

    Read from the code-object metadata note (``amdhsa.kernels``: ``.vgpr_count``,
    ``.sgpr_count``, ``.vgpr_spill_count``, ``.private_segment_fixed_size``, ...),
    LLVM's ``; Occupancy:`` comment (waves per SIMD) and the code itself
    (``ds_permutes``: LDS-crossbar lane permutes, the costly cross-lane op)."""
    found: dict[str, int] = {}
    for key, value in re.findall(r"^\s*(?:- )?\.([a-z_]+):\s+(\d+)\s*$", asm, re.MULTILINE):
        if key in _AMDGCN_FIELDS:
            found[_AMDGCN_FIELDS[key]] = int(value)
    missing = set(_AMDGCN_FIELDS.values()) - found.keys()
    occupancy = re.search(r"^; Occupancy: (\d+)", asm, re.MULTILINE)
    if missing or occupancy is None:
        raise ValueError(f"amdgcn metadata lacks {sorted(missing) or 'Occupancy'}")
    found["occupancy"] = int(occupancy.group(1))
    # Cross-lane traffic through the LDS crossbar (DPP and readlane stay in registers).
    code = asm.split(".Lfunc_end", 1)[0]
    found["ds_permutes"] = len(re.findall(r"^\s+ds_(?:bpermute|permute|swizzle)_b32\b", code, re.M))
    return found


def cuobjdump(cubin: bytes, option: str) -> str:
    """``cuobjdump OPTION`` of a cubin (the one shipped with Triton's NVIDIA backend)."""
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        return subprocess.run(
            [knobs.nvidia.cuobjdump.path, option, handle.name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout


def sass_lines(cubin: bytes) -> list[str]:
    """The cubin's SASS, one ``ADDRESS INSTRUCTION`` line per instruction (no headers,
    no encodings)."""
    lines = []
    for line in cuobjdump(cubin, "-sass").splitlines():
        found = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;?\s*/\*", line)
        if found:
            lines.append(f"{found.group(1)} {found.group(2).rstrip(' ;')}")
    return lines


def sass_instructions(cubin: bytes) -> int:
    """How many SASS instructions the cubin's kernel holds.

    A static count, not an executed one: a branch taken rarely (the fp32 repairs)
    counts in full, and straight-line code (the unrolled rounds of a 16-bit tile)
    counts once per program, as it runs."""
    return len(sass_lines(cubin))


def cubin_resources(cubin: bytes) -> dict[str, int]:
    """Registers, stack, local (spill) memory and static shared memory of the cubin's kernel,
    from ``cuobjdump --dump-resource-usage``."""
    text = cuobjdump(cubin, "--dump-resource-usage")
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    if set(fields) != {"REG", "STACK", "SHARED", "LOCAL"}:
        raise ValueError(f"unexpected cuobjdump output: {text!r}")
    return {
        "registers": int(fields["REG"]),
        "stack": int(fields["STACK"]),
        "local": int(fields["LOCAL"]),
        "static_shared": int(fields["SHARED"]),
    }


_LAYOUT = re.compile(r"^#(\w+) = #ttg\.blocked<\{(.*?)\}>", re.MULTILINE)
# tt.load types its pointer tensor; AMD's amdg.buffer_load ends with its result tensor.
_LOAD_LINE = re.compile(r"= (?:tt\.load|amdg\.buffer_load) .*$", re.MULTILINE)
_TENSOR = re.compile(r"tensor<([\dx]+)x(?:!tt\.ptr<(\w+)>|(\w+)), #(\w+)>")


def logits_load_layout(ttgir: str) -> dict[str, Any]:
    """How Triton spreads the logits load (the kernel's largest load) over lanes and warps.

    ``lanes_per_row``: threads that hold one token's row; ``duplication``: how many
    threads hold each element (> 1: the layout is larger than the tile and the
    extra lanes repeat others' work); ``per_thread``: elements each thread holds."""
    layouts = {}
    for name, body in _LAYOUT.findall(ttgir):
        fields = dict(re.findall(r"(\w+) = \[([\d, ]*)\]", body))
        layouts[name] = {k: [int(x) for x in v.split(",") if x.strip()] for k, v in fields.items()}
    loads = []
    for line in _LOAD_LINE.findall(ttgir):
        tensors = _TENSOR.findall(line)
        if tensors and tensors[-1][3] in layouts:
            shape, pointee, element, enc = tensors[-1]
            loads.append(([int(d) for d in shape.split("x")], pointee or element, enc))
    if not loads:
        raise ValueError("no blocked tt.load in the ttgir")
    shape, dtype, enc = max(loads, key=lambda load: _product(load[0]))
    layout = layouts[enc]
    per_thread, lanes, warps = (
        layout["sizePerThread"],
        layout["threadsPerWarp"],
        layout["warpsPerCTA"],
    )
    duplication = 1
    for size, spt, tpw, wpc in zip(shape, per_thread, lanes, warps, strict=True):
        duplication *= max(1, spt * tpw * wpc // size)
    threads = _product(lanes) * _product(warps)
    return {
        "shape": shape,
        "dtype": dtype,
        "sizePerThread": per_thread,
        "threadsPerWarp": lanes,
        "warpsPerCTA": warps,
        "lanes_per_row": _product(lanes[1:]) * _product(warps[1:]),
        "duplication": duplication,
        "per_thread": _product(shape) * duplication // threads,
    }


def _product(values: Iterable[int]) -> int:
    out = 1
    for value in values:
        out *= value
    return out


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker_main()
