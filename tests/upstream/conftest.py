"""Fixtures for the upstream patch series: vLLM 0.34.0's sdist, and a copy with the series applied.

The sdist comes from ``ci/fetch_vllm_sdist.py`` (CI's setup step; fetched here
if it is missing, never skipped). The patched tree is built once per session:
hard links to the pristine files, the series applied with ``git apply`` (which
replaces the files it changes rather than writing through the links).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "upstream"))
sys.path.insert(0, str(REPO / "ci"))

import series  # noqa: E402
from fetch_vllm_sdist import fetch, unpack  # noqa: E402

# vLLM's own tests run on this CPU: Triton under the interpreter, in these
# selections (the interpreter takes ~0.3 s per program, so the 512-, 2048- and
# 250000-token cases, minutes each here, run on GPUs only).
KERNEL_TESTS = "tests/kernels/moe/test_gemma4router.py"
KERNEL_TESTS_ON_CPU = "not 2048 and not 250000 and not 512-500 and not 24-17"
DISPATCH_TESTS = "tests/model_executor/test_enabled_custom_ops.py"
DISPATCH_TESTS_ON_CPU = "gemma4"


def copy_tree(src: Path, dst: Path) -> Path:
    """``dst``: hard links to ``src``'s files, without its ``vllm.egg-info``.

    The egg-info would make ``importlib.metadata`` report a non-CPU ``vllm``
    build when the tree is on ``sys.path``, and vLLM would then look for a
    GPU Triton driver instead of the triton-cpu stand-in.
    """
    shutil.copytree(src, dst, copy_function=os.link, ignore=shutil.ignore_patterns("*.egg-info"))
    return dst


@pytest.fixture(scope="session")
def sdist() -> Path:
    """The unpacked, sha256-checked vLLM 0.34.0 sdist (not to be modified)."""
    return unpack(fetch())


@pytest.fixture(scope="session")
def patched_tree(sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the sdist with the series applied."""
    tree = copy_tree(sdist, tmp_path_factory.mktemp("patched") / "vllm-0.34.0")
    series.apply_series(tree)
    return tree


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
