"""vLLM's low-latency router GEMM (``ll_bf16_gemm``, CuTe DSL) for the benchmarks, as
GateLinear dispatches it, imported at run time from vLLM (never copied here).

From vLLM 0.26.0, ``GateLinear`` (vllm/model_executor/layers/fused_moe/router/
gate_linear.py) has a first tier on Hopper and Blackwell: with bias-free gates on
CUDA with ``is_device_capability((9, 0))`` or ``is_device_capability_family(100)``
(SM90 exactly; SM100/SM103), a bf16 weight, ``out_dtype=torch.float32`` and
``cutlass.cute`` importable (``ll_bf16.is_available()``), ``forward`` calls
``ll_bf16_gemm(x, self.weight)`` when ``x.shape[0] <= 16`` and ``x`` is bf16, and
``torch.mm(x, self.weight.T, out_dtype=torch.float32)`` (cuBLAS) above. The
kernel itself refuses non-2D, non-contiguous inputs and K not a multiple of 8
(``LLBf16Gemm._validate_inputs``). It compiles one kernel per (M, K) for M <= 4
(dot product) and one shape-dynamic split-K kernel above, on its first call
(vLLM's ``kernel_warmup`` pre-compiles only other models' shapes), and launches
with programmatic dependent launch where ``current_platform.is_arch_support_pdl()``.

``load_ll_gemm("installed")`` takes it from the installed vLLM
(``vllm.model_executor.kernels.linear.cute_dsl.ll_bf16``); ``load_ll_gemm(PATH)``
takes that package's files from a vLLM source tree at PATH (an unpacked wheel,
e.g. ``.cache/vllm-src/vllm-0.34.0``), loaded under a private module name, while
the names they import from ``vllm`` (``vllm.platforms``, ``vllm.utils.torch_utils``)
come from the installed vLLM: the way to time 0.34.0's kernel under the 0.26.0
runtime after swapping nvidia-cutlass-dsl. Either way the result says where the
kernel came from (vLLM and nvidia-cutlass-dsl versions) or why there is none.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

#: GateLinear's token bound for the tier (``x.shape[0] <= 16``; 0.34.0: ``LL_BF16_MAX_TOKENS``).
LL_MAX_TOKENS = 16
LL_MODULE = "vllm.model_executor.kernels.linear.cute_dsl.ll_bf16"
LL_PACKAGE_DIR = Path("vllm/model_executor/kernels/linear/cute_dsl")


def device_reason(capability: tuple[int, int] | None) -> str | None:
    """Why GateLinear would not enable the tier on a device of ``capability``
    (``None`` = no CUDA device), ``None`` where it would (SM90, SM10x)."""
    if capability is None:
        return "no CUDA device: GateLinear enables ll_bf16_gemm on SM90 and SM100 only"
    major, minor = capability
    if (major, minor) == (9, 0) or major == 10:
        return None
    return (
        f"SM{major}{minor}: GateLinear enables ll_bf16_gemm on SM90 and SM100 only "
        "(is_device_capability((9, 0)) or is_device_capability_family(100))"
    )


def shape_reason(hidden: int, weight_dtype: torch.dtype) -> str | None:
    """Why the tier would not take this router at all (GateLinear's weight dtype, the
    kernel's K % 8), ``None`` where it would."""
    if weight_dtype != torch.bfloat16:
        return f"gate weight {weight_dtype}: GateLinear enables ll_bf16_gemm for bf16 weights only"
    if hidden % 8:
        return f"K={hidden}: ll_bf16_gemm requires K divisible by 8"
    return None


def token_reason(num_tokens: int, max_tokens: int = LL_MAX_TOKENS) -> str | None:
    """Why GateLinear dispatches cuBLAS rather than the tier at ``T = num_tokens``."""
    if num_tokens > max_tokens:
        return f"T > {max_tokens}: GateLinear dispatches cuBLAS"
    return None


@dataclass
class LLGemm:
    """vLLM's ``ll_bf16_gemm`` as GateLinear calls it, or why it is not there.

    ``fn(x, w)`` is ``ll_bf16_gemm(x, w)`` (two arguments, as ``GateLinear.forward``;
    ``None`` with a ``reason``); ``label`` names vLLM's version, where the module came
    from, and nvidia-cutlass-dsl's version; ``vllm_version`` and ``cutlass_dsl``
    alone, for the stamp."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    label: str
    reason: str | None = None
    vllm_version: str = "?"
    cutlass_dsl: str = "?"
    max_tokens: int = LL_MAX_TOKENS

    def skip_reason(self, num_tokens: int) -> str | None:
        """``None`` where GateLinear would run the tier at ``num_tokens``, else why not."""
        return self.reason or token_reason(num_tokens, self.max_tokens)

    def eligible(self, num_tokens: int) -> bool:
        return self.fn is not None and self.skip_reason(num_tokens) is None


def cutlass_dsl_version() -> str:
    """nvidia-cutlass-dsl's version (distribution metadata, else ``cutlass.__version__``),
    ``"none"`` where neither is there."""
    from importlib import metadata

    try:
        return metadata.version("nvidia-cutlass-dsl")
    except metadata.PackageNotFoundError:
        pass
    try:
        import cutlass

        return str(getattr(cutlass, "__version__", "unknown (cutlass importable)"))
    except ImportError:
        return "none"


def tree_version(root: Path) -> str:
    """A vLLM source tree's version: its wheel METADATA (``WHEEL-METADATA`` or a
    ``vllm-*.dist-info/METADATA``), else ``vllm/_version.py``, else the folder name."""
    candidates = [root / "WHEEL-METADATA", *sorted(root.glob("vllm-*.dist-info/METADATA"))]
    for meta in candidates:
        if meta.is_file():
            found = re.search(r"^Version:\s*(\S+)", meta.read_text(errors="replace"), re.M)
            if found:
                return found.group(1)
    version_py = root / "vllm" / "_version.py"
    if version_py.is_file():
        found = re.search(r"""__version__\s*=\s*(?:version\s*=\s*)?['"]([^'"]+)""",
                          version_py.read_text(errors="replace"))  # fmt: skip
        if found:
            return found.group(1)
    return root.name


def import_from_tree(root: Path, version: str):
    """``ll_bf16`` of the ``cute_dsl`` package under ``root`` (``LL_PACKAGE_DIR``), loaded
    as a private package (relative imports stay inside it; ``vllm.*`` imports resolve
    to the installed vLLM)."""
    package_dir = root / LL_PACKAGE_DIR
    if not (package_dir / "ll_bf16.py").is_file():
        raise FileNotFoundError(f"{package_dir}/ll_bf16.py: no ll_bf16 in that tree")
    name = "_bench_vllm_cute_dsl_" + re.sub(r"\W", "_", version)
    if f"{name}.ll_bf16" in sys.modules:
        return sys.modules[f"{name}.ll_bf16"]
    init = package_dir / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(package_dir)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"{name}.ll_bf16")


def track_current_stream() -> None:
    """vLLM's ``current_stream()`` (what ``ll_bf16_gemm`` launches on) follows
    ``torch.cuda.set_stream`` only once ``vllm.utils.torch_utils`` has patched it, and on
    a first call with nothing tracked it makes a new stream the current one. Import the
    patch now and track the stream that is current, so the kernel launches on the
    stream a benchmark's ``torch.cuda.stream``/``torch.cuda.graph`` context sets."""
    import vllm.utils.torch_utils  # noqa: F401 - patches torch.cuda.set_stream

    torch.cuda.set_stream(torch.cuda.current_stream())


def load_ll_gemm(
    source: str = "installed",
    capability: tuple[int, int] | None = None,
    hidden: int = 2816,
    weight_dtype: torch.dtype = torch.bfloat16,
    importer: Callable[[str], object] | None = None,
) -> LLGemm:
    """vLLM's ``ll_bf16_gemm`` from ``source`` (``"installed"`` or a vLLM source tree's
    path) for a router of ``hidden`` and ``weight_dtype`` on a device of
    ``capability``; an ``LLGemm`` with ``fn=None`` and the first reason it cannot run
    (no vLLM, no such module, no CuTe DSL, the device, the shape). ``importer``
    (tests) replaces the import of the ``ll_bf16`` module: ``importer(source)``."""
    cutlass_dsl = cutlass_dsl_version()
    try:
        import vllm

        installed = str(getattr(vllm, "__version__", "?"))
    except ImportError:
        installed = None
    if source == "installed":
        version, where = installed or "none", "installed"
    else:
        root = Path(source)
        version = tree_version(root)
        where = f"from {root} (installed vLLM {installed or 'none'} for vllm.*)"
    label = f"vllm {version} ll_bf16_gemm ({where}), nvidia-cutlass-dsl {cutlass_dsl}"

    def missing(reason: str) -> LLGemm:
        return LLGemm(None, label, reason, version, cutlass_dsl)

    if installed is None and importer is None:
        return missing("no vLLM installed: ll_bf16_gemm is vLLM's (0.26.0 and later)")
    try:
        if importer is not None:
            module = importer(source)
        elif source == "installed":
            module = importlib.import_module(LL_MODULE)
        else:
            module = import_from_tree(Path(source), version)
    except (ImportError, FileNotFoundError) as error:
        return missing(f"vllm {version}: no {LL_MODULE} ({error}); GateLinear has the tier "
                       "from 0.26.0")  # fmt: skip
    reason = device_reason(capability) or shape_reason(hidden, weight_dtype)
    if reason:
        return missing(reason)
    if not module.is_available():
        return missing(f"cutlass.cute not importable (nvidia-cutlass-dsl {cutlass_dsl}): "
                       "ll_bf16.is_available() is False")  # fmt: skip
    ll_bf16_gemm = module.ll_bf16_gemm
    if importer is None:
        track_current_stream()

    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return ll_bf16_gemm(x, w)  # GateLinear.forward: ll_bf16_gemm(x, self.weight)

    return LLGemm(fn, label, None, version, cutlass_dsl)
