"""Import smoke of the vLLM device runtime (run by install_on_device.sh).

Imports every module that `python -m vllm.entrypoints.openai.api_server --model <Gemma4
MoE dir> --attention-backend TRITON_ATTN` (default compilation, CUDA graphs) and
`vllm bench serve` reach at start-up, the kernels' extension modules, parses the serve and
bench command lines, builds the API server's app and the sampler, and checks that the
plugin's `vllm.general_plugins` entry point is registered and loads, and that tabulate (the
benchmarks' report tables) imports. From vLLM 0.26 on, also the Hopper path of GateLinear:
ll_bf16_gemm's CuTe-DSL stack imports and `is_available()` is true; with an sm90+ GPU, one
small dot-product and one split-K call are compiled, run and compared with torch.mm.
Prints one line per check and `smoke: N passed, N failed`.

`--audit` also lists, per distribution, the third-party modules that got imported, so a
dependency dropped from the bundle can be justified (or caught).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import traceback
from collections.abc import Callable

MODULES = [
    # kernels: _C is imported by vllm/platforms/cuda.py at import time, _moe_C holds
    # moe_align_block_size/topk_softmax of the Triton fused-MoE path; FA3 keeps
    # vllm.vllm_flash_attn importable (fa_utils imports it unguarded on CUDA).
    "vllm._C_stable_libtorch",
    "vllm._moe_C_stable_libtorch",
    "vllm.cumem_allocator",
    "vllm.vllm_flash_attn",
    "vllm.platforms.cuda",
    # server and CLI
    "vllm.entrypoints.openai.api_server",
    "vllm.entrypoints.cli.main",
    "vllm.entrypoints.cli.serve",
    "vllm.entrypoints.cli.benchmark.main",
    "vllm.entrypoints.cli.benchmark.serve",
    "vllm.benchmarks.serve",
    "vllm.benchmarks.datasets",
    "vllm.engine.arg_utils",
    # engine core, worker, model runner
    "vllm.v1.engine.async_llm",
    "vllm.v1.engine.core",
    "vllm.v1.engine.core_client",
    "vllm.v1.engine.input_processor",
    "vllm.v1.engine.output_processor",
    "vllm.v1.executor.multiproc_executor",
    "vllm.v1.executor.uniproc_executor",
    "vllm.v1.worker.gpu_worker",
    "vllm.v1.worker.gpu_model_runner",
    "vllm.v1.sample.sampler",
    "vllm.v1.structured_output",
    # model, attention, MoE, compilation, loading, tokenizer
    "vllm.model_executor.models.gemma4",
    "vllm.model_executor.models.gemma4_mm",
    "vllm.model_executor.models.registry",
    "vllm.model_executor.layers.fused_moe",
    "vllm.model_executor.layers.fused_moe.fused_moe",
    "vllm.v1.attention.backends.triton_attn",
    "vllm.v1.attention.selector",
    "vllm.compilation.backends",
    "vllm.compilation.cuda_graph",
    "vllm.compilation.piecewise_backend",
    "vllm.model_executor.model_loader.default_loader",
    "vllm.tokenizers.hf",
    "vllm.renderers",
]

# Since vLLM 0.26: Gemma4's router is a GateLinear whose first tier on sm90+ is the
# CuTe-DSL ll_bf16_gemm, and the worker's kernel warm-up compiles ll_bf16 kernels when
# that is available (and imports the MiniMax-M3 warm-up module unconditionally).
MODULES_0_26 = [
    "vllm.model_executor.layers.fused_moe.router.gate_linear",
    "vllm.model_executor.warmup.kernel_warmup",
    "vllm.model_executor.warmup.minimax_m3_msa_warmup",
]
LL_BF16 = "vllm.model_executor.kernels.linear.cute_dsl.ll_bf16"


def _check(name: str, fn: Callable[[], object], results: list[tuple[str, bool]]) -> None:
    try:
        detail = fn()
    except BaseException as e:  # noqa: BLE001 - report every failure, keep going
        results.append((name, False))
        print(f"FAIL {name}: {type(e).__name__}: {e}")
        tb = traceback.format_exc().strip().splitlines()
        print("     " + "\n     ".join(tb[-6:]))
    else:
        results.append((name, True))
        print(f"ok   {name}" + (f": {detail}" if detail else ""))


def _serve_args():
    from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())
    args = parser.parse_args(["--model", "/nonexistent", "--attention-backend", "TRITON_ATTN"])
    validate_parsed_serve_args(args)
    return args


def _parse_serve() -> str:
    return f"attention_backend={_serve_args().attention_backend}"


def _build_app() -> str:
    """The FastAPI app with every router a generate model gets (imports them all)."""
    from vllm.entrypoints.openai.api_server import build_app

    app = build_app(_serve_args(), ("generate",))
    return f"{len(app.routes)} routes"


def _sampler() -> str:
    """The model runner's sampler: on CUDA it imports FlashInfer unless
    VLLM_USE_FLASHINFER_SAMPLER=0 (the runtime's .pth sets that default)."""
    import os

    from vllm.v1.sample.sampler import Sampler

    Sampler()
    return f"VLLM_USE_FLASHINFER_SAMPLER={os.environ.get('VLLM_USE_FLASHINFER_SAMPLER')}"


def _parse_bench() -> str:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(["--model", "m", "--dataset-name", "random", "--num-prompts", "1"])
    return f"dataset={args.dataset_name}"


def _plugin() -> str:
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "gemma4_router"]
    if not eps:
        raise LookupError("no 'gemma4_router' entry point in group vllm.general_plugins")
    eps[0].load()
    return f"{eps[0].value} (from {eps[0].dist.name if eps[0].dist else '?'})"


def _tabulate() -> str:
    """The benchmarks' report tables (benchmarks.common.tables) render through tabulate,
    which the device has (device_packages.txt), so the bundle does not carry it."""
    import tabulate

    table = tabulate.tabulate([["x", "1.00"]], headers=["a", "b"], tablefmt="pipe")
    if table.splitlines()[0].replace(" ", "") != "|a|b|":
        raise RuntimeError(f"unexpected table: {table!r}")
    return f"tabulate {tabulate.__version__} from {tabulate.__file__}"


def _version(expected: str | None) -> str:
    import vllm

    if expected and vllm.__version__ != expected:
        raise RuntimeError(f"vllm {vllm.__version__} imported from {vllm.__file__}")
    return f"{vllm.__version__} from {vllm.__file__}"


def _release(version: str) -> tuple[int, ...]:
    """(0, 26) for "0.26.0" or "0.26.1.dev3+g123"."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else (0, 0)


# Compile (not run) both ll_bf16 kernels for sm_90a where there is no GPU: the CuTe-DSL
# takes the target from CUTE_DSL_ARCH (read when cutlass loads, hence a fresh process),
# and the stream argument of the compile is a placeholder (torch has no CUDA stream).
_COMPILE_WITHOUT_GPU = f"""
import time
from cuda.bindings.driver import CUstream
from {LL_BF16.rpartition(".")[0]} import ll_bf16 as ll
ll._stream = lambda: CUstream(0)
for m, k, n in ((2, 256, 16), (8, 4096, 128)):
    key = ll.ll_bf16_gemm_kernel.dispatch(M=m, K=k, N=n)
    t = time.perf_counter()
    ll.ll_bf16_gemm_kernel.compile(key)
    print(f"{{key.backend}} {{time.perf_counter() - t:.1f}} s")
"""


def _ll_bf16_compile_without_gpu() -> str:
    import os
    import subprocess

    env = {**os.environ, "CUTE_DSL_ARCH": "sm_90a"}
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE_WITHOUT_GPU],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"compiling for sm_90a failed:\n{proc.stderr[-3000:]}")
    done = ", ".join(re.findall(r"^(?:dotprod|splitk) [0-9.]+ s$", proc.stdout, re.M))
    return f"kernels compiled for sm_90a, not run ({done})"


def _ll_bf16() -> str:
    """GateLinear's tier 1 (vLLM >= 0.26, sm90+): `ll_bf16_gemm`, CuTe-DSL kernels compiled
    through quack's fake tensors and tvm-ffi. GateLinear uses it when `is_available()`
    (cutlass and cutlass.cute import); this also imports what compiling and launching the
    kernels import. With an sm90+ GPU it runs the two kernels (dot-product: M <= 4;
    split-K: M > 4 and K >= 2048) once each against torch.mm in fp32."""
    import torch

    ll = importlib.import_module(LL_BF16)
    if not ll.is_available():
        raise RuntimeError("is_available() is False: cutlass / cutlass.cute do not import")
    for mod in ("_ll_bf16_dotprod", "_ll_bf16_splitk"):  # cutlass.pipeline.sm90, _mlir, ...
        importlib.import_module(f"{LL_BF16.rpartition('.')[0]}.{mod}")
    from importlib.metadata import version

    import cutlass
    import quack.compile_utils  # noqa: F401 - make_fake_tensor, used by every compile
    import tvm_ffi
    from cuda.bindings.driver import CUstream  # noqa: F401

    detail = (
        f"nvidia-cutlass-dsl {version('nvidia-cutlass-dsl')} ({cutlass.__file__}), "
        f"quack-kernels {version('quack-kernels')}, apache-tvm-ffi {tvm_ffi.__version__}"
    )
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0):
        return detail + "; no sm90+ GPU: " + _ll_bf16_compile_without_gpu()
    runs = []
    for m, k, n in ((2, 256, 16), (8, 4096, 128)):
        x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
        key = ll.ll_bf16_gemm_kernel.dispatch(M=m, K=k, N=n)
        out = ll.ll_bf16_gemm(x, w)
        ref = torch.mm(x.float(), w.float().t())
        torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3 * k**0.5)
        err = (out - ref).abs().max().item()
        runs.append(f"{key.backend} M={m} K={k} N={n} max|err|={err:.2e}")
    return detail + f"; ran on {torch.cuda.get_device_name()}: " + ", ".join(runs)


def audit() -> None:
    from importlib.metadata import packages_distributions

    top = packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    used: dict[str, set[str]] = {}
    for mod in list(sys.modules):
        root = mod.partition(".")[0]
        if root in stdlib or root.startswith("_") and root[1:] in stdlib:
            continue
        for dist in top.get(root, ["?"]):
            used.setdefault(dist, set()).add(root)
    for dist in sorted(used, key=str.lower):
        print(f"audit: {dist}: {' '.join(sorted(used[dist]))}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audit", action="store_true", help="list imported distributions")
    parser.add_argument("--expect-version", help="fail unless vllm.__version__ is this")
    args = parser.parse_args(argv)

    results: list[tuple[str, bool]] = []
    _check("vllm version", lambda: _version(args.expect_version), results)
    try:
        import vllm

        found = vllm.__version__
    except BaseException:  # noqa: BLE001 - reported by the checks below
        found = args.expect_version or "0"
    since_0_26 = _release(found) >= (0, 26)
    for mod in MODULES + (MODULES_0_26 if since_0_26 else []):
        _check(f"import {mod}", lambda mod=mod: importlib.import_module(mod) and None, results)
    if since_0_26:
        _check("ll_bf16_gemm available", _ll_bf16, results)
    _check("serve arguments", _parse_serve, results)
    _check("api server app", _build_app, results)
    _check("sampler", _sampler, results)
    _check("bench serve arguments", _parse_bench, results)
    _check("plugin entry point", _plugin, results)
    _check("benchmark tables", _tabulate, results)
    if args.audit:
        audit()
    failed = [n for n, ok in results if not ok]
    print(f"smoke: {len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        print("smoke: FAILED: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
