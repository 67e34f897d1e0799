"""Download vLLM's source distribution (sha256-checked) and unpack it under .cache/sdist/.

The upstream patch series (``upstream/``) is based on this sdist: it is the only
published artefact with both ``vllm/`` and vLLM's ``tests/``. Re-runnable: a
checked archive and an unpacked tree are kept and not fetched again.

    python ci/fetch_vllm_sdist.py            # prints the unpacked directory
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "sdist"
VERSION = "0.34.0"
FILENAME = f"vllm-{VERSION}.tar.gz"
# Pinned: the series is reviewed against exactly these bytes.
SHA256 = "fcad848b246a9d8652b47e6425af92334dc02492f9802720f54e27b823cf0113"
SIMPLE_INDEX = "https://pypi.org/simple/vllm/"


def sha256_of(path: Path) -> str:
    """Hex sha256 of the file at ``path``."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sdist_url() -> str:
    """The download URL of ``FILENAME`` from PyPI's JSON simple index (PEP 691)."""
    request = urllib.request.Request(
        SIMPLE_INDEX, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        index = json.load(response)
    for entry in index["files"]:
        if entry["filename"] == FILENAME:
            if entry["hashes"].get("sha256") != SHA256:
                raise SystemExit(f"PyPI lists another sha256 for {FILENAME}: {entry['hashes']}")
            return entry["url"]
    raise SystemExit(f"{FILENAME} is not on {SIMPLE_INDEX}")


def fetch(cache: Path = CACHE) -> Path:
    """The checked archive in ``cache``, downloaded when absent or corrupt."""
    archive = cache / FILENAME
    if archive.is_file() and sha256_of(archive) == SHA256:
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    partial = archive.with_suffix(".part")
    with urllib.request.urlopen(sdist_url(), timeout=600) as response, partial.open("wb") as f:
        shutil.copyfileobj(response, f)
    got = sha256_of(partial)
    if got != SHA256:
        partial.unlink()
        raise SystemExit(f"{FILENAME}: sha256 {got}, expected {SHA256}")
    partial.replace(archive)
    return archive


def unpack(archive: Path, cache: Path = CACHE) -> Path:
    """``cache/vllm-VERSION/`` unpacked from ``archive`` (reused when complete)."""
    target = cache / f"vllm-{VERSION}"
    stamp = target / ".unpacked-sha256"
    if stamp.is_file() and stamp.read_text().strip() == SHA256:
        return target
    with tempfile.TemporaryDirectory(dir=cache) as tmp, tarfile.open(archive) as tar:
        # "data" refuses links and paths leaving the target: the archive is only data.
        tar.extractall(tmp, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        (Path(tmp) / f"vllm-{VERSION}").replace(target)
    stamp.write_text(SHA256 + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    """Fetch, check and unpack; print the unpacked directory."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=CACHE, help="default: %(default)s")
    args = parser.parse_args(argv)
    print(unpack(fetch(args.cache), args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
