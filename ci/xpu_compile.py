"""Offline compile worker for Intel XPU targets, run by ``offline_compile`` with the Python of
``.cache/xpu-toolchain/venv`` (``ci/setup_xpu_toolchain.sh``).

Triton's XPU backend stops at SPIR-V, which the driver compiles for the GPU at
load time; here Intel's offline compiler ``ocloc`` (IGC) compiles it for Ponte
Vecchio the same way, and the resources are read from its device binary: the
patch tokens that ``ocloc disasm`` decodes (SIMD width, GRF count, stateless
spill/fill, scratch and private memory) and the build log (IGC warns
"spilled" when it spills).

Payloads (stdin, JSON) have the format of ``offline_compile._job_payload``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

TOOLCHAIN = Path(__file__).resolve().parents[1] / ".cache" / "xpu-toolchain"
OCLOC = TOOLCHAIN / "root" / "usr" / "bin" / "ocloc"

# Offsets (uint32 words after the token header) in SPatchExecutionEnvironment.
_EXEC_ENV, _MEDIA_VFE_STATE, _PRIVATE_MEMORY = 23, 18, 38
_LARGEST_SIMD, _STATELESS_SPILL_FILL, _NUM_GRF = 3, 13, 20
_LARGE_GRF = "-cl-intel-256-GRF-per-thread"

# Launch-time properties of a Ponte Vecchio (Max 1550) as Triton's XPU driver reports them.
PVC_PROPERTIES = {
    "name": "Intel(R) Data Center GPU Max 1550",
    "max_work_group_size": 1024,
    "max_num_sub_groups": 64,
    "sub_group_sizes": [16, 32],
    "has_fp64": True,
    "has_subgroup_2d_block_io": True,
    "has_subgroup_matrix_multiply_accumulate": True,
    "has_bfloat16_conversions": True,
}


def _load_kernel(package_dir: Path):
    import triton.language as tl

    # The kernel names tl.topk (its sorted-selection branch, a constexpr-dead
    # branch in every table launch); triton-xpu 3.3 predates tl.topk, and
    # Triton resolves every attribute a jit function mentions before compiling.
    if not hasattr(tl, "topk"):
        tl.topk = None
    # The kernel modules import only triton and each other; the packages above them
    # import torch, which this toolchain's venv does not have: empty stand-ins for those.
    for name, path in (
        ("vllm_gemma4_router", package_dir),
        ("vllm_gemma4_router.routing", package_dir / "routing"),
    ):
        stand_in = types.ModuleType(name)
        stand_in.__path__ = [str(path)]
        sys.modules.setdefault(name, stand_in)
    return importlib.import_module("vllm_gemma4_router.routing.kernels.entry").gemma4_routing_kernel


def patch_tokens(ptm_text: str) -> dict[int, list[list[int]]]:
    """token number -> payloads (little-endian uint32 words) from ocloc's PTM.txt dump."""
    tokens: dict[int, list[list[int]]] = {}
    pattern = r"\t4 Token (\d+)\n\t4 Size \d+\n\tHex ([0-9a-f ]*)"
    for number, hex_bytes in re.findall(pattern, ptm_text):
        raw = bytes(int(b, 16) for b in hex_bytes.split())
        words = [int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw) - 3, 4)]
        tokens.setdefault(int(number), []).append(words)
    return tokens


def pvc_resources(spirv: bytes, build_flags: str) -> dict[str, int]:
    """Compile SPIR-V for pvc with ocloc; SIMD width, GRFs, spill/fill and scratch."""
    env = dict(os.environ, LD_LIBRARY_PATH=str(TOOLCHAIN / "root/usr/lib/x86_64-linux-gnu"))
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "kernel.spv")
        source.write_bytes(spirv)
        command = [str(OCLOC), "compile", "-file", str(source), "-spirv_input", "-device", "pvc"]
        command += ["-out_dir", tmp, "-output", "kernel", "-options", build_flags]
        log = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        binary = next(Path(tmp).glob("kernel*.bin"))
        dump = Path(tmp, "dump")
        disasm = [str(OCLOC), "disasm", "-file", str(binary), "-device", "pvc", "-dump", str(dump)]
        subprocess.run(disasm, env=env, capture_output=True, text=True, check=True)
        tokens = patch_tokens((dump / "PTM.txt").read_text())
    (environment,) = tokens[_EXEC_ENV]
    scratch = sum(words[1] for words in tokens.get(_MEDIA_VFE_STATE, []))
    return {
        "simd": environment[_LARGEST_SIMD],
        "grf": environment[_NUM_GRF],
        "spill_fill": environment[_STATELESS_SPILL_FILL],
        "scratch": scratch,
        "private_memory": len(tokens.get(_PRIVATE_MEMORY, [])),
        "log_spills": int("spill" in (log.stdout + log.stderr).lower()),
    }


def main() -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import offline_compile as oc

    payloads = json.loads(sys.stdin.read())
    fn = _load_kernel(Path(os.environ["GEMMA4_PACKAGE_DIR"]))
    for payload in payloads:
        target = GPUTarget("xpu", PVC_PROPERTIES, 32)
        backend = make_backend(target)
        attrs = {
            (fn.arg_names.index(name),): backend.parse_attr("D") for name in payload["divisible"]
        }
        started = time.perf_counter()
        try:
            compiled = triton.compile(
                ASTSource(fn, dict(payload["signature"]), dict(payload["constants"]), attrs),
                target=target,
                options={"num_warps": payload["num_warps"]},
            )
            flags = compiled.metadata.build_flags
            resources = pvc_resources(compiled.asm["spv"], flags)
            if resources["spill_fill"] or resources["scratch"]:
                # What Intel's driver does when a kernel spills over 1000 bytes with the
                # default 128 GRFs: it rebuilds it in large-GRF mode (half the threads).
                large = pvc_resources(compiled.asm["spv"], f"{flags} {_LARGE_GRF}".strip())
                resources.update({f"large_grf_{key}": value for key, value in large.items()})
            resources["shared"] = int(compiled.metadata.shared)
            result = {
                "ok": True,
                "resources": resources,
                "layout": oc.logits_load_layout(compiled.asm["ttgir"]),
            }
        except Exception as exc:  # reported per job, as in offline_compile
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[-4000:]}
        result["seconds"] = round(time.perf_counter() - started, 3)
        result["triton"] = triton.__version__
        path = Path(payload["path"])
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(result, sort_keys=True))
        tmp.replace(path)


if __name__ == "__main__":
    main()
