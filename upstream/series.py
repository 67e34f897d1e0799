"""The upstream patch series: apply one to vLLM's sdist, edit it there, export it back.

The ``.patch`` files are the only stored form of a series: no vLLM file is kept
in this repository. Each series has its folder and its work tree (``SERIES``):
``routing`` in ``upstream/`` (the default) and ``gate_tier`` in
``upstream/gate_tier/`` (``--series gate_tier``, work tree
``.cache/upstream/gate_tier``). To change one:

    python upstream/series.py tree      # .cache/upstream/vllm-0.34.0: a git repository of
                                        # the sdist, one commit per patch
    # edit there; fold changes into the right commit (git commit --fixup, rebase -i)
    python upstream/series.py export    # write the .patch files back from that repository
    python upstream/series.py check     # fail unless the stored files are what export writes

``export`` re-commits every patch with a fixed author, date and sign-off, so the
same sources always give the same bytes (CI runs ``check``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

UPSTREAM = Path(__file__).resolve().parent
REPO = UPSTREAM.parent
WORK = REPO / ".cache" / "upstream" / "vllm-0.34.0"
GATE_TIER = UPSTREAM / "gate_tier"
# Series name -> (folder of its .patch files, its default work tree).
SERIES = {
    "routing": (UPSTREAM, WORK),
    "gate_tier": (GATE_TIER, REPO / ".cache" / "upstream" / "gate_tier"),
}
BASE_TAG = "v0.34.0-sdist"
AUTHOR_NAME = "vllm-gemma4-router maintainers"
AUTHOR_EMAIL = "maintainers@vllm-gemma4-router.invalid"
SIGN_OFF = f"Signed-off-by: {AUTHOR_NAME} <{AUTHOR_EMAIL}>"
# Fixed, so an export is byte-identical whenever the sources are.
COMMIT_DATE = "2026-12-05T12:00:00+00:00"


def _git(cwd: Path, *args: str, stdin: str | None = None) -> str:
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
        ["git", *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def series_files(directory: Path = UPSTREAM) -> list[Path]:
    """The ``.patch`` files of the series in ``directory``, in order."""
    return sorted(directory.glob("[0-9][0-9][0-9][0-9]-*.patch"))


def touched_files(patch_files: list[Path] | None = None) -> list[str]:
    """Every path in vLLM's tree that the series (default: ``routing``) changes or adds."""
    paths: set[str] = set()
    for patch in series_files() if patch_files is None else patch_files:
        for line in patch.read_text().splitlines():
            if line.startswith("diff --git "):
                paths.add(line.split(" b/", 1)[1])
    return sorted(paths)


def default_base() -> Path:
    """The unpacked 0.34.0 sdist, fetched (sha256-checked) if needed."""
    sys.path.insert(0, str(REPO / "ci"))
    from fetch_vllm_sdist import fetch, unpack

    return unpack(fetch())


def _copy(base: Path, target: Path, paths: list[str] | None) -> None:
    """``base`` (or only ``paths`` of it) copied into ``target``.

    Copies, not links: the work tree is edited by hand, and an editor writing
    in place would change the pristine sdist through a link. Without
    ``vllm.egg-info``: on ``sys.path`` it would make ``importlib.metadata``
    report a non-CPU ``vllm`` build.
    """
    if paths is None:
        shutil.copytree(base, target, ignore=shutil.ignore_patterns("*.egg-info"))
        return
    for path in paths:
        if (base / path).is_file():
            (target / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base / path, target / path)


def build_work_repo(
    base: Path,
    target: Path,
    patch_files: list[Path] | None = None,
    *,
    only_touched: bool = False,
) -> Path:
    """A git repository at ``target``: the sdist, then one commit per patch (``git am``).

    ``only_touched``: just the files the series touches (enough to export or
    check it, and quick); otherwise the whole sdist, to run vLLM's tests in.
    """
    patch_files = series_files() if patch_files is None else patch_files
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not only_touched:
        _copy(base, target, None)
    else:
        target.mkdir()
        _copy(base, target, touched_files(patch_files))
    _git(target, "init", "-q")
    _git(target, "add", "-A")
    _git(target, "commit", "-q", "--allow-empty", "-m", "vLLM v0.34.0 (sdist)")
    _git(target, "tag", BASE_TAG)
    for patch in patch_files:
        _git(target, "am", "-q", "--keep-non-patch", "--whitespace=nowarn", str(patch))
    return target


def _message(work: Path, commit: str) -> str:
    """The commit's message without sign-offs (export adds exactly one)."""
    body = _git(work, "log", "-1", "--format=%B", commit)
    lines = [line for line in body.rstrip().splitlines() if not line.startswith("Signed-off-by:")]
    return "\n".join(lines).rstrip() + "\n"


def export(work: Path, out_dir: Path) -> list[Path]:
    """Write the commits after ``BASE_TAG`` in ``work`` as ``git format-patch`` files.

    Each commit is replayed in a scratch repository of the files the series
    touches, with the fixed author, date and sign-off, so equal sources give
    equal bytes. Older ``.patch`` files in ``out_dir`` are removed first.
    """
    commits = _git(work, "rev-list", "--reverse", f"{BASE_TAG}..HEAD").split()
    if not commits:
        raise SystemExit(f"{work}: no commits after {BASE_TAG}")
    paths = sorted(set(_git(work, "diff", "--name-only", "--no-renames", BASE_TAG, "HEAD").split()))
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for path in paths:
            pristine = subprocess.run(
                ["git", "show", f"{BASE_TAG}:{path}"], cwd=work, capture_output=True, check=False
            )
            if pristine.returncode == 0:
                (scratch / path).parent.mkdir(parents=True, exist_ok=True)
                (scratch / path).write_bytes(pristine.stdout)
        _git(scratch, "init", "-q")
        _git(scratch, "add", "-A")
        _git(scratch, "commit", "-q", "--allow-empty", "-m", "vLLM v0.34.0 (sdist)")
        for commit in commits:
            diff = _git(work, "diff", "--binary", "--no-renames", f"{commit}^", commit)
            _git(scratch, "apply", "--index", "-", stdin=diff)
            _git(scratch, "commit", "-q", "-m", f"{_message(work, commit)}\n{SIGN_OFF}\n")
        for old in series_files(out_dir):
            old.unlink()
        out_dir.mkdir(parents=True, exist_ok=True)
        names = _git(
            scratch,
            "format-patch",
            "--zero-commit",
            "--no-signature",
            "--no-numbered",
            "--no-renames",
            "-o",
            str(out_dir),
            f"HEAD~{len(commits)}",
        )
    return [Path(line) for line in names.splitlines() if line]


def apply_series(target: Path, patch_files: list[Path] | None = None) -> None:
    """Apply the series (default: ``routing``) to the vLLM tree at ``target`` (``git apply``)."""
    for patch in series_files() if patch_files is None else patch_files:
        # --check first: a patch that does not apply cleanly changes nothing.
        _git(target, "apply", "--check", "-p1", str(patch))
        _git(target, "apply", "-p1", str(patch))


def changed_lines(patch_files: list[Path] | None = None) -> dict[str, int]:
    """Lines added plus removed per top-level area (``vllm``, ``tests``, ``docs``)."""
    counts: dict[str, int] = {}
    area = ""
    for patch in series_files() if patch_files is None else patch_files:
        for line in patch.read_text().splitlines():
            if line.startswith("diff --git "):
                area = re.split(r"[ /]", line.split(" b/", 1)[1])[0]
            elif line.startswith(("+++", "---")):
                continue
            elif line.startswith(("+", "-")) and area:
                counts[area] = counts.get(area, 0) + 1
    return counts


def check(base: Path, directory: Path = UPSTREAM) -> bool:
    """Whether the series in ``directory`` is exactly what applying and exporting it gives."""
    stored = series_files(directory)
    with tempfile.TemporaryDirectory() as tmp:
        work = build_work_repo(base, Path(tmp) / "work", stored, only_touched=True)
        fresh = export(work, Path(tmp) / "out")
        return [p.name for p in stored] == [p.name for p in fresh] and all(
            a.read_bytes() == b.read_bytes() for a, b in zip(stored, fresh, strict=True)
        )


def main(argv: list[str] | None = None) -> int:
    """``tree``, ``export`` or ``check`` (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("tree", "export", "check"))
    parser.add_argument("--series", choices=sorted(SERIES), default="routing")
    parser.add_argument("--base", type=Path, help="unpacked vLLM 0.34.0 sdist (default: fetch)")
    parser.add_argument("--work", type=Path, help="default: the series' work tree (SERIES)")
    args = parser.parse_args(argv)
    directory, work = SERIES[args.series]
    work = args.work or work
    if args.command == "export":
        for path in export(work, directory):
            print(path.relative_to(REPO))
        print(f"changed lines: {changed_lines(series_files(directory))}")
        return 0
    base = args.base or default_base()
    if args.command == "tree":
        print(build_work_repo(base, work, series_files(directory)))
        return 0
    same = check(base, directory)
    print("series up to date" if same else "series is not in exported form: see upstream/series.py")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
