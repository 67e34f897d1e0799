"""Every path the Markdown docs name exists.

Files move (the package and the benchmarks were split into rooms); prose that
names the old place then misleads a reader silently. This test reads every
Markdown file of the repository (result folders aside: they record what was
true when they were written, except ``benchmarks/results/INDEX.md``) and checks

* relative links ``[text](path)`` and ``[text](path#anchor)``: the file or folder
  exists, relative to the Markdown file (as GitHub resolves it); an anchor into
  a Markdown file names one of its headings;
* inline code that looks like a repository path (``benchmarks/kernel/bench_kernel.py``):
  a token with a ``/`` that ends in a known extension, or in ``/`` (a folder),
  and starts at a top-level entry of the repository or of the Markdown file's
  folder. It must exist relative to either. Brace groups (``x.{md,csv}``) are
  expanded; globs (``*``) must match at least one file.

URLs, absolute paths, placeholders (``<version>``, ``$OUT``) and fenced code
blocks are skipped: they name other machines, other packages or commands. The
upstream docs name vLLM's files: theirs may also be a file the patch series
(``upstream/000N-*.patch``) changes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: top-level folders that are not the repository's own content
SKIP_DIRS = {".git", ".venv", ".cache", ".pytest_cache", ".ruff_cache", "node_modules", "dist"}
RESULTS = ROOT / "benchmarks" / "results"
UPSTREAM = ROOT / "upstream"
EXTENSIONS = (".py", ".sh", ".md", ".json", ".csv", ".png", ".jsonl", ".toml", ".yml", ".txt")
#: first path components that name machine-local or ignored places, not repository files
LOCAL_ROOTS = {".cache", ".venv", "dist", "build", "~", "..."}

LINK_RE = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
CODE_RE = re.compile(r"(`+)(.+?)\1")
FENCE_RE = re.compile(r"^\s*(```|~~~)")
HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
PLACEHOLDER_RE = re.compile(r"[<>$%\[\]\s]|\.\.\.")
BRACE_RE = re.compile(r"\{([^{}]*)\}")


def markdown_files() -> list[Path]:
    """Every Markdown file of the repository that the check covers."""
    found = [RESULTS / "INDEX.md"] if (RESULTS / "INDEX.md").exists() else []
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder)
        # prune in place: .venv alone holds thousands of Markdown files
        dirs[:] = [
            d
            for d in dirs
            if d not in SKIP_DIRS and not d.endswith(".egg-info") and here / d != RESULTS
        ]
        found.extend(here / name for name in files if name.endswith(".md"))
    return sorted(found)


def _lines_outside_fences(text: str):
    """(line number, line) for every line outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE_RE.match(line)
        if match:
            if fence is None:
                fence = match.group(1)
            elif match.group(1) == fence:
                fence = None
            continue
        if fence is None:
            yield number, line


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (repeated headings get -1, -2, ...)."""
    seen: dict[str, int] = {}
    result = set()
    for _, line in _lines_outside_fences(path.read_text(encoding="utf-8")):
        match = HEADING_RE.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def _expand_braces(token: str) -> list[str]:
    match = BRACE_RE.search(token)
    if not match:
        return [token]
    head, tail = token[: match.start()], token[match.end() :]
    out = []
    for choice in match.group(1).split(","):
        out.extend(_expand_braces(head + choice + tail))
    return out


def _exists(candidate: str, bases: tuple[Path, ...]) -> bool:
    for base in bases:
        if any(ch in candidate for ch in "*?["):
            if any(base.glob(candidate)):
                return True
        elif (base / candidate).exists():
            return True
    return False


def bases(md: Path) -> tuple[Path, ...]:
    """Where a path named in ``md`` may start: its folder and the repository root. (A vLLM
    path whose first folder this repository lacks, ``vllm/config/kernel.py``, is never
    checked: ``code_path`` takes only paths that start at one of this repository's entries.)"""
    return (md.parent, ROOT)


def series_paths() -> set[str]:
    """The vLLM files the upstream patch series changes (its ``diff --git`` lines)."""
    return {
        line.split(" b/", 1)[1]
        for patch in UPSTREAM.glob("[0-9][0-9][0-9][0-9]-*.patch")
        for line in patch.read_text().splitlines()
        if line.startswith("diff --git ")
    }


def code_path(token: str, md_dir: Path) -> str | None:
    """The repository path an inline-code token names, or None if it names none."""
    token = token.strip()
    token = token.split("::", 1)[0]  # pytest node ids
    token = re.sub(r":\d+(-\d+)?$", "", token)  # file:line
    if "/" not in token or PLACEHOLDER_RE.search(token) or "://" in token:
        return None
    if token.startswith(("/", "-", "git+", "http")):
        return None
    first = token.split("/", 1)[0]
    if first in LOCAL_ROOTS or first in SKIP_DIRS:
        return None
    if not ((ROOT / first).exists() or (md_dir / first).exists()):
        return None  # another package's path (vllm/..., /opt/...), not this repository's
    stem = token.rstrip("*")
    if token.endswith("/") or any(stem.endswith(ext) for ext in EXTENSIONS) or "{" in token:
        return token
    if token.endswith(".*"):
        return token
    return None


def check_file(md: Path) -> list[str]:
    """'file:line: what' for every path in ``md`` that does not resolve."""
    errors = []
    rel = md.relative_to(ROOT)
    starts = bases(md)
    in_series = series_paths() if UPSTREAM in md.parents else set()
    text = md.read_text(encoding="utf-8")
    for number, line in _lines_outside_fences(text):
        for match in LINK_RE.finditer(line):
            target = match.group(1) or match.group(2)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            resolved = (md.parent / path_part).resolve() if path_part else md
            if path_part and not resolved.exists():
                errors.append(f"{rel}:{number}: link target {target!r} does not exist")
                continue
            if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                errors.append(f"{rel}:{number}: link {target!r}: no heading with that anchor")
        stripped = LINK_RE.sub("", line)
        for match in CODE_RE.finditer(stripped):
            token = code_path(match.group(2), md.parent)
            if token is None:
                continue
            missing = [
                c for c in _expand_braces(token) if c not in in_series and not _exists(c, starts)
            ]
            if missing:
                errors.append(
                    f"{rel}:{number}: code path {token!r} does not exist "
                    f"(tried from {', '.join(str(b.relative_to(ROOT)) or '.' for b in starts)})"
                )
    return errors


def test_markdown_files_are_found():
    names = {str(p.relative_to(ROOT)) for p in markdown_files()}
    assert {"README.md", "CHANGELOG.md", "benchmarks/README.md"} <= names


def test_every_linked_or_named_path_exists():
    errors = [error for md in markdown_files() for error in check_file(md)]
    assert not errors, "paths in the docs that do not resolve:\n" + "\n".join(errors)


def test_checker_catches_a_bad_path():
    md = ROOT / "README.md"
    assert code_path("benchmarks/kernel/no_such_bench.py", md.parent) is not None
    assert code_path("vllm/model_executor/models/gemma4.py", md.parent) is None
    assert code_path("python -m benchmarks.kernel.bench_kernel", md.parent) is None
    assert code_path("benchmarks/results/compile_resources_triton<version>.md", md.parent) is None
    assert _expand_braces("a/b.{md,csv}") == ["a/b.md", "a/b.csv"]
    assert github_slug("Compatibility by vLLM release") == "compatibility-by-vllm-release"
    assert github_slug("Fused router (opt-in)") == "fused-router-opt-in"
