"""Fixtures for the upstream patch series: vLLM 0.34.0's sdist, and copies with a series applied.

The sdist comes from ``ci/fetch_vllm_sdist.py`` (CI's setup step; fetched here
if it is missing, never skipped). The patched tree is built once per session:
hard links to the pristine files, the series applied with ``git apply`` (which
replaces the files it changes rather than writing through the links).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from upstream_env import Background, copy_tree, fetch, series, start_route_runs, unpack  # noqa: E402


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


@pytest.fixture(scope="session")
def gate_tier_tree(sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the sdist with the gate_tier series (``upstream/gate_tier/``) applied."""
    tree = copy_tree(sdist, tmp_path_factory.mktemp("gate_tier") / "vllm-0.34.0")
    series.apply_series(tree, series.series_files(series.GATE_TIER))
    return tree


@pytest.fixture(scope="session")
def route_runs(patched_tree: Path) -> Iterator[dict[str, Background]]:
    """The real-layer routing runs on the patched tree, by flag (see ``start_route_runs``)."""
    runs = start_route_runs(patched_tree)
    yield runs
    for run in runs.values():
        run.stop()
