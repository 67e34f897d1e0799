"""Compile a small CuTe-DSL kernel for sm_90a on a machine without a GPU and check the cubin.

Issue #36's first question: does the CuTe DSL (``nvidia-cutlass-dsl``) compile for
Hopper without a GPU or a CUDA driver? This script answers it for whichever pin is
installed: it compiles our own tiny kernel (a bf16 gate GEMV, x[T, 2816] . W[128, 2816]^T
-> fp32 logits, one warp per (token, expert), a warp butterfly reduction, PDL wait and
launch-dependents) through ``cute.compile`` with fake tensors and a fake stream, then
checks the artefacts: the PTX says ``.target sm_90a``, the cubin is a CUDA ELF for
SM 90, and nvdisasm's SASS says ``.target sm_90a`` and holds the 5 ``SHFL.BFLY`` of
the reduction, ``ACQBULK`` (griddepcontrol.wait) and ``PREEXIT``
(griddepcontrol.launch_dependents). Exit 0 when every check passes, 1 otherwise.

Nothing here runs a kernel, so nothing needs libcuda.so.1: the DSL probes for it,
treats its absence as "no driver", and compiles with its own bundled NVVM and ptxas.
The target comes from the compile option ``--gpu-arch`` (not from a device query).

It does NOT run in the project's ``.venv``. Make a venv with one CuTe-DSL pin, e.g.::

    python3.11 -m venv /tmp/cute46
    /tmp/cute46/bin/pip install --no-deps nvidia-cutlass-dsl==4.6.0 \\
        nvidia-cutlass-dsl-libs-base==4.6.0 nvidia-cutlass-dsl-libs-core==4.6.0 \\
        nvidia-cutlass-dsl-libs-cu13==4.6.0
    /tmp/cute46/bin/pip install numpy typing-extensions cuda-bindings==13.3.1 \\
        "protobuf>=6.30.2,<7" "nvidia-cuda-nvdisasm>=13.3,<14"
    /tmp/cute46/bin/python ci/cute_dsl_offline_compile.py

(4.8.0 the same with ``==4.8.0`` and ``protobuf>=4.21.12``; cp311 and cp312 wheels
exist for both. ``--no-deps`` skips ``nvidia-cutlass-dsl-libs-cu12``, which the
meta wheel requires unconditionally and which a compile does not need.)
See docs/design/cute-dsl-offline.md for what was tried and measured.
"""

# No `from __future__ import annotations`: the DSL evaluates the kernels' annotations
# (cute.Tensor) in the module globals, and cute is imported inside compile_gate.
import argparse
import ctypes
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

H, E, WARPS = 2816, 128, 4  # Gemma 4 26B-A4B router: hidden 2816, 128 experts
EM_CUDA = 190


def _driver() -> str:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "libcuda.so.1 absent"
    return "libcuda.so.1 present (not used: nothing is launched)"


def _nvdisasm() -> str | None:
    found = shutil.which("nvdisasm")
    if found:
        return found
    try:
        import nvidia  # namespace package of the nvidia-cuda-nvdisasm wheel
    except ImportError:
        return None
    for root in nvidia.__path__:
        for cand in sorted(Path(root).glob("*/bin/nvdisasm")):
            return str(cand)
    return None


def compile_gate(arch: str, dump_dir: Path) -> float:
    """Trace and compile the kernel for ``arch``; PTX and cubin land in ``dump_dir``."""
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_compact_tensor, make_fake_stream

    @cute.kernel
    def gate_kernel(x: cute.Tensor, w: cute.Tensor, out: cute.Tensor):
        lane = cute.arch.lane_idx()
        warp = cute.arch.warp_idx()
        tok, eblk, _ = cute.arch.block_idx()
        e = eblk * WARPS + warp
        cute.arch.griddepcontrol_wait()
        acc = cutlass.Float32(0.0)
        for k in cutlass.range(lane, H, 32):
            acc += x[tok, k].to(cutlass.Float32) * w[e, k].to(cutlass.Float32)
        for i in cutlass.range_constexpr(5):
            acc += cute.arch.shuffle_sync_bfly(acc, offset=16 >> i)
        if lane == 0:
            out[tok, e] = acc
        cute.arch.griddepcontrol_launch_dependents()

    @cute.jit
    def gate(x: cute.Tensor, w: cute.Tensor, out: cute.Tensor, stream):
        gate_kernel(x, w, out).launch(
            grid=[x.shape[0], E // WARPS, 1],
            block=[32 * WARPS, 1, 1],
            stream=stream,
            use_pdl=True,
        )

    tokens = cute.sym_int32()  # T stays symbolic: one compile serves every batch
    row = (1, 0)
    x = make_fake_compact_tensor(cutlass.BFloat16, (tokens, H), stride_order=row)
    w = make_fake_compact_tensor(cutlass.BFloat16, (E, H), stride_order=row)
    out = make_fake_compact_tensor(cutlass.Float32, (tokens, E), stride_order=row)
    opts = f"--gpu-arch {arch} --keep-ptx --keep-cubin --dump-dir {dump_dir}"
    start = time.perf_counter()
    cute.compile(gate, x, w, out, make_fake_stream(), options=opts)
    return time.perf_counter() - start


def _cubin_sm(data: bytes) -> int | None:
    """SM number from a CUDA ELF header (EF_CUDA_SM moved to bits 8-15 in ABI v8)."""
    if data[:4] != b"\x7fELF" or struct.unpack_from("<H", data, 18)[0] != EM_CUDA:
        return None
    flags = struct.unpack_from("<I", data, 0x30)[0]
    return (flags >> 8) & 0xFF if data[8] >= 8 else flags & 0xFF


def check(arch: str, dump_dir: Path) -> list[tuple[str, bool, str]]:
    checks: list[tuple[str, bool, str]] = []
    ptx = sorted(dump_dir.glob(f"*.{arch}.ptx"))
    cubin = sorted(dump_dir.glob(f"*.{arch}.cubin"))
    checks.append(("one PTX and one cubin", len(ptx) == 1 and len(cubin) == 1, dump_dir.name))
    if not (ptx and cubin):
        return checks
    target = re.search(r"^\.target\s+(\S+)", ptx[0].read_text(), re.M)
    got = target[1] if target else "none"
    checks.append(("PTX .target", got == arch, got))
    sm = _cubin_sm(cubin[0].read_bytes())
    want_sm = int(re.sub(r"\D", "", arch))
    checks.append(("cubin is a CUDA ELF for the SM", sm == want_sm, f"sm {sm}"))
    tool = _nvdisasm()
    if tool is None:
        checks.append(("nvdisasm found", False, "install nvidia-cuda-nvdisasm"))
        return checks
    sass = subprocess.run(
        [tool, "-c", str(cubin[0])], capture_output=True, text=True, check=False
    ).stdout
    target = re.search(r"^\s*\.target\s+(\S+)", sass, re.M)
    got = target[1] if target else "none"
    checks.append(("SASS .target", got == arch, got))
    for op, want in (("SHFL.BFLY", 5), ("ACQBULK", 1), ("PREEXIT", 1)):
        n = len(re.findall(rf"\b{re.escape(op)}\b", sass))
        checks.append((f"SASS {op} x{want}", n == want, str(n)))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--keep", type=Path, help="keep PTX/cubin in this folder")
    args = parser.parse_args(argv)
    # read when cutlass is imported: no file cache, so the compile really runs
    os.environ["CUTE_DSL_DISABLE_FILE_CACHING"] = "1"
    with tempfile.TemporaryDirectory(prefix="cute_dsl_offline_") as tmp:
        dump_dir = args.keep.resolve() if args.keep else Path(tmp)
        dump_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            from importlib.metadata import version

            dsl = version("nvidia-cutlass-dsl")
            import cutlass.cute  # noqa: F401
        except Exception:
            traceback.print_exc()
            print("FAIL: cutlass.cute does not import")
            return 1
        imported = time.perf_counter() - start
        print(f"nvidia-cutlass-dsl {dsl}, Python {sys.version.split()[0]}, {_driver()}")
        try:
            took = compile_gate(args.arch, dump_dir)
        except Exception:
            traceback.print_exc()
            print(f"FAIL: compiling for {args.arch}")
            return 1
        print(f"import {imported:.2f} s, compile for {args.arch} {took:.2f} s")
        results = check(args.arch, dump_dir)
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
