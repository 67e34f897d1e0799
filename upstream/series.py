"""The upstream patch series: regenerate it from the patched sources, apply it, measure it.

Layout (``upstream/``):

* ``tree/NNNN/``: the files patch NNNN changes or adds, as they are after it,
  at their paths in vLLM's source tree; ``tree/NNNN.msg``: its commit message
  (subject, blank line, body; the sign-off is added here).
* ``NNNN-<subject>.patch``: the series, ``git format-patch`` files generated
  from those against the pristine 0.34.0 sdist (``ci/fetch_vllm_sdist.py``).

    python upstream/series.py            # regenerate the .patch files
    python upstream/series.py --check    # fail if they differ from a regeneration
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

UPSTREAM = Path(__file__).resolve().parent
REPO = UPSTREAM.parent
TREE = UPSTREAM / "tree"
SIGN_OFF = "Signed-off-by: vllm-gemma4-router maintainers <maintainers@vllm-gemma4-router.invalid>"
AUTHOR_NAME = "vllm-gemma4-router maintainers"
AUTHOR_EMAIL = "maintainers@vllm-gemma4-router.invalid"
# Fixed, so a regeneration is byte-identical (it is compared in CI).
COMMIT_DATE = "2026-12-05T12:00:00+00:00"


@dataclass(frozen=True)
class Patch:
    """One patch of the series: its number, message, and the files it leaves behind."""

    number: str
    message: str
    files: dict[str, Path]  # path in vLLM's tree -> file as it is after this patch

    @property
    def subject(self) -> str:
        """The first line of the commit message."""
        return self.message.splitlines()[0]


def patches(tree: Path = TREE) -> list[Patch]:
    """The series as stored under ``tree``, in order."""
    out = []
    for msg in sorted(tree.glob("[0-9][0-9][0-9][0-9].msg")):
        stage = tree / msg.stem
        files = {
            p.relative_to(stage).as_posix(): p
            for p in sorted(stage.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
        }
        out.append(Patch(msg.stem, msg.read_text().strip() + "\n", files))
    if not out:
        raise SystemExit(f"no patches under {tree}")
    return out


def default_base() -> Path:
    """The unpacked 0.34.0 sdist, fetched (sha256-checked) if needed."""
    sys.path.insert(0, str(REPO / "ci"))
    from fetch_vllm_sdist import fetch, unpack

    return unpack(fetch())


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        # Never find a repository above ``cwd`` (this checkout): inside one,
        # ``git apply`` silently skips paths outside the current directory.
        "GIT_CEILING_DIRECTORIES": str(cwd.resolve().parent),
        "GIT_AUTHOR_NAME": AUTHOR_NAME,
        "GIT_AUTHOR_EMAIL": AUTHOR_EMAIL,
        "GIT_COMMITTER_NAME": AUTHOR_NAME,
        "GIT_COMMITTER_EMAIL": AUTHOR_EMAIL,
        "GIT_AUTHOR_DATE": COMMIT_DATE,
        "GIT_COMMITTER_DATE": COMMIT_DATE,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def format_series(base: Path, out_dir: Path, series: list[Patch] | None = None) -> list[Path]:
    """Write the series as ``git format-patch`` files into ``out_dir``; return them.

    Only the files the series touches are put in a scratch repository (with
    their pristine content from ``base`` as the first commit): the diffs need
    nothing else.
    """
    series = series or patches()
    touched = sorted({path for patch in series for path in patch.files})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _git(work, "init", "-q")
        for path in touched:
            if (base / path).is_file():
                (work / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(base / path, work / path)
        _git(work, "add", "-A")
        _git(work, "commit", "-q", "--allow-empty", "-m", "vLLM v0.34.0 (sdist)")
        for patch in series:
            for path, src in patch.files.items():
                (work / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, work / path)
            _git(work, "add", "-A")
            _git(work, "commit", "-q", "-m", f"{patch.message}\n{SIGN_OFF}\n")
        for old in out_dir.glob("[0-9][0-9][0-9][0-9]-*.patch"):
            old.unlink()
        out_dir.mkdir(parents=True, exist_ok=True)
        names = _git(
            work,
            "format-patch",
            "--zero-commit",
            "--no-signature",
            "--no-numbered",
            "-o",
            str(out_dir),
            "HEAD~" + str(len(series)),
        )
    return [Path(line) for line in names.splitlines() if line]


def series_files(directory: Path = UPSTREAM) -> list[Path]:
    """The ``.patch`` files of the series in ``directory``, in order."""
    return sorted(directory.glob("[0-9][0-9][0-9][0-9]-*.patch"))


def apply_series(target: Path, patch_files: list[Path] | None = None) -> None:
    """Apply the series to the vLLM tree at ``target`` (``git apply``, all or nothing)."""
    for patch in patch_files or series_files():
        # --check first: a patch that does not apply cleanly changes nothing.
        _git(target, "apply", "--check", "-p1", str(patch))
        _git(target, "apply", "-p1", str(patch))


def changed_lines(patch_files: list[Path] | None = None) -> dict[str, int]:
    """Lines added plus removed per top-level area (``vllm``, ``tests``, ``docs``)."""
    counts: dict[str, int] = {}
    area = ""
    for patch in patch_files or series_files():
        for line in patch.read_text().splitlines():
            if line.startswith("diff --git "):
                area = re.split(r"[ /]", line.split(" b/", 1)[1])[0]
            elif line.startswith(("+++", "---")):
                continue
            elif line.startswith(("+", "-")) and area:
                counts[area] = counts.get(area, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    """Regenerate the series (or, with ``--check``, compare it with a regeneration)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, help="unpacked vLLM 0.34.0 sdist (default: fetch)")
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    base = args.base or default_base()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = format_series(base, Path(tmp))
            stored = series_files()
            same = [p.name for p in stored] == [p.name for p in fresh] and all(
                a.read_bytes() == b.read_bytes() for a, b in zip(stored, fresh, strict=True)
            )
        print("series up to date" if same else "series differs from upstream/tree: make upstream")
        return 0 if same else 1
    for path in format_series(base, UPSTREAM):
        print(path.relative_to(REPO))
    print(f"changed lines: {changed_lines()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
