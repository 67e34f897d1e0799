"""Paths and helpers for the upstream-series tests (``tests/upstream/``).

vLLM 0.34.0's sdist comes from ``ci/fetch_vllm_sdist.py``; ``series`` is
``upstream/series.py``. Kept apart from ``conftest.py`` so that test modules can
import it by a name no other conftest shares.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "upstream"))
sys.path.insert(0, str(REPO / "ci"))

import series  # noqa: E402, F401  (re-exported for the tests)
from fetch_vllm_sdist import fetch, unpack  # noqa: E402, F401

# vLLM's own tests run on this CPU: Triton under the interpreter, in this
# selection. The interpreter takes ~0.3 s per program, so the 512-, 2048- and
# 250000-token cases (minutes each here) are left to GPUs; of
# test_enabled_custom_ops.py only the gemma4_routing tests (the others test
# other ops, some of them ROCm-only).
KERNEL_TESTS = "tests/kernels/moe/test_gemma4router.py"
DISPATCH_TESTS = "tests/model_executor/test_enabled_custom_ops.py"
VLLM_TESTS_ON_CPU = (
    "(test_gemma4router and not 2048 and not 250000 and not 512-500 and not 24-17)"
    " or (test_enabled_custom_ops and gemma4_routing)"
)
# The gate_tier series' vLLM test (upstream/gate_tier/): all of it runs on CPU.
GATE_TIER_TEST = "tests/kernels/moe/test_gate_linear_compile.py"
# vLLM's pre-commit hooks that run offline on given files (.pre-commit-config.yaml).
VLLM_OFFLINE_HOOKS = (
    "check_spdx_header",
    "check_init_lazy_imports",
    "check_forbidden_imports",
    "check_torch_cuda",
    "check_boolean_context_manager",
    "check_trust_remote_code",
    "check_test_tethering",
)


def copy_tree(src: Path, dst: Path) -> Path:
    """``dst``: hard links to ``src``'s files, without its ``vllm.egg-info``.

    The egg-info would make ``importlib.metadata`` report a non-CPU ``vllm``
    build when the tree is on ``sys.path``, and vLLM would then look for a
    GPU Triton driver instead of the triton-cpu stand-in.
    """
    shutil.copytree(src, dst, copy_function=os.link, ignore=shutil.ignore_patterns("*.egg-info"))
    return dst


def vllm_pytest(tree: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """vLLM's pytest in ``tree`` on this CPU (see ``triton_cpu_standin.py``).

    ``--noconftest``: vLLM's ``tests/conftest.py`` imports its whole test stack
    (vllm.entrypoints, HF model runners, ...) at collection; these two test files
    use no fixture of it.
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree), str(UPSTREAM_TESTS)]),
        "TRITON_INTERPRET": "1",
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "triton_cpu_standin",
            "--noconftest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rfEs",
            *args,
        ],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def pytest_outcome(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Counts from pytest's last line, e.g. ``{"passed": 6}``."""
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", last)}


def vllm_lint_failures(tree: Path, python_files: list[str]) -> list[str]:
    """What ruff (check, format, vLLM's pyproject) and vLLM's offline hooks
    report on ``python_files`` in ``tree``: empty when all pass."""
    failures = []
    ruff = [sys.executable, "-m", "ruff"]
    for args in (["check", "--no-fix"], ["format", "--check"]):
        proc = subprocess.run(
            [*ruff, *args, *python_files], cwd=tree, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            failures.append(f"ruff {args[0]}: {proc.stdout}{proc.stderr}")
    for hook in VLLM_OFFLINE_HOOKS:
        script = tree / "tools" / "pre_commit" / f"{hook}.py"
        proc = subprocess.run(
            [sys.executable, str(script), *python_files],
            cwd=tree,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            failures.append(f"{hook}: {proc.stdout}{proc.stderr}")
    return failures


ROUTE_SCRIPT = UPSTREAM_TESTS / "route_patched_layer.py"
ROUTE_RUNS = ("", "--plugin")  # without and with this repository's plugin loaded


class Background:
    """A subprocess started now and waited for later, its output in temporary files
    (a pipe could fill up and stall it while nobody reads)."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.args = args
        # Open past __init__: the process writes to them until wait() reads them.
        self._out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self._err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self._result: subprocess.CompletedProcess | None = None
        self._proc = subprocess.Popen(args, env=env, stdout=self._out, stderr=self._err, text=True)

    def wait(self, timeout: int = 600) -> subprocess.CompletedProcess:
        """The finished process (killed after ``timeout`` seconds)."""
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._result is None:
            self._out.seek(0)
            self._err.seek(0)
            self._result = subprocess.CompletedProcess(
                self.args, self._proc.returncode, self._out.read(), self._err.read()
            )
            self._out.close()
            self._err.close()
        return self._result

    def stop(self) -> None:
        """Kill it if it still runs (a session that never waited for it)."""
        if self._proc.poll() is None:
            self._proc.kill()
        self.wait()


def start_route_runs(tree: Path) -> dict[str, Background]:
    """``route_patched_layer.py`` on ``tree``, once per entry of ``ROUTE_RUNS``, started now.

    Each needs ~30 s of CPU, mostly imports; started when the patched tree is
    built, they overlap with vLLM's test run instead of following it.
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree), str(REPO)]),
        "TRITON_INTERPRET": "1",
    }
    return {
        flag: Background([sys.executable, str(ROUTE_SCRIPT), *filter(None, [flag])], env)
        for flag in ROUTE_RUNS
    }
