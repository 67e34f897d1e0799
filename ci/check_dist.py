"""Check the built sdist and wheel: names, version, metadata, contents.

    python ci/check_dist.py DIST_DIR [--tag vX.Y.Z] [--release]
    python ci/check_dist.py --print-version

DIST_DIR holds exactly one ``.tar.gz`` and one ``.whl`` (``python -m build``).
Checks: one version everywhere (``__version__``, both file names, the wheel's
metadata, CHANGELOG.md's newest release; with ``--tag``, the Git tag too); the
metadata PyPI shows (license expression and file, ``Requires-Python``, valid
classifiers, keywords, project URLs, the extras, ``torch`` as the only
requirement); the entry points; the sdist holds what a rebuild needs and
nothing else (no ``.cache/``, results, benchmarks or tests); the wheel holds the
package's modules and its launch tables (``*/tables/*.json``, read at import) and
nothing else; both hold every table of ``TABLES``. ``--release`` (the publish workflow) also
refuses what may not go to PyPI: placeholder URLs and an undated changelog entry.
Standard library only, plus ``trove_classifiers`` for the classifier check.
"""

from __future__ import annotations

import argparse
import ast
import email.parser
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "vllm_gemma4_router"
DIST_NAME = "vllm-gemma4-router"
# What a rebuild from the sdist needs, besides the package's own files.
# (setup.cfg is setuptools' own, with its egg_info build tags.)
SDIST_TOP_FILES = {"PKG-INFO", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "setup.cfg"}
EXTRAS = {"demo", "bench", "test"}
# The launch tables and the fused-router policy: package data the runtime reads at import
# (pyproject's package-data).
TABLES = {
    f"{PACKAGE}/routing/tables/cuda.json",
    f"{PACKAGE}/routing/tables/hip.json",
    f"{PACKAGE}/fused_router/tables/fused.json",
    f"{PACKAGE}/integration/tables/fused_router_policy.json",
    f"{PACKAGE}/integration/tables/gate_tier_policy.json",
}
PLACEHOLDER = "/OWNER/"


def fail(message: str) -> None:
    raise SystemExit(f"check_dist: FAIL: {message}")


def source_version() -> str:
    """``__version__`` of the package's ``_version.py``, read without importing it."""
    tree = ast.parse((REPO / PACKAGE / "_version.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
            "__version__"
        ]:
            return ast.literal_eval(node.value)
    fail(f"{PACKAGE}/_version.py has no __version__")
    raise AssertionError


def changelog_release() -> tuple[str, str]:
    """The newest release heading of CHANGELOG.md: (version, the rest of the heading)."""
    for line in (REPO / "CHANGELOG.md").read_text().splitlines():
        match = re.match(r"## \[(\d[^\]]*)\](.*)", line)
        if match:
            return match[1], match[2].strip(" -")
    fail("CHANGELOG.md has no '## [X.Y.Z]' release heading")
    raise AssertionError


def _shipped(name: str) -> bool:
    """Whether a package path goes into the dists: a module, a launch table, or the CUDA
    source the decode path builds at run time."""
    parts = name.split("/")
    return (
        name.endswith(".py")
        or (name.endswith(".json") and len(parts) > 2 and parts[-2] == "tables")
        or name.endswith(".cu")
    )


def package_sources() -> set[str]:
    """The package's modules and launch tables as in the checkout (git's view: tracked or
    new, not ignored)."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"]
            + [PACKAGE],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a checkout: the tree as it is
        listed = [str(p.relative_to(REPO)) for p in (REPO / PACKAGE).rglob("*") if p.is_file()]
    return {name for name in listed if _shipped(name) and (REPO / name).exists()}


def check_tables(kind: str, names: set[str]) -> None:
    """Every launch table of ``TABLES`` is in ``names`` (a dist's package files)."""
    if not package_sources() >= TABLES:
        fail(f"the checkout lacks launch tables: {sorted(TABLES - package_sources())}")
    if not names >= TABLES:
        fail(f"the {kind} lacks launch tables: {sorted(TABLES - names)}")


def check_metadata(metadata_text: str, version: str, release: bool) -> None:
    meta = email.parser.Parser().parsestr(metadata_text)
    expect = {
        "Name": DIST_NAME,
        "Version": version,
        "License-Expression": "Apache-2.0",
        "License-File": "LICENSE",
        "Requires-Python": ">=3.10",
        "Description-Content-Type": "text/markdown",
    }
    for field, value in expect.items():
        if meta.get(field) != value:
            fail(f"metadata {field}: {meta.get(field)!r}, expected {value!r}")
    requires = meta.get_all("Requires-Dist") or []
    plain = [r for r in requires if "extra ==" not in r]
    if plain != ["torch>=2.7"]:
        fail(f"a bare install must need torch only, metadata requires {plain}")
    extras = set(meta.get_all("Provides-Extra") or [])
    if extras != EXTRAS:
        fail(f"extras {sorted(extras)}, expected {sorted(EXTRAS)}")
    classifiers = meta.get_all("Classifier") or []
    try:
        from trove_classifiers import classifiers as known
    except ImportError:
        fail("trove_classifiers is not installed (ci/setup_env.sh installs it)")
    unknown = [c for c in classifiers if c not in known]
    if unknown or not classifiers:
        fail(f"classifiers PyPI would reject: {unknown or 'none given'}")
    if any(c.startswith("License ::") for c in classifiers):
        fail("License :: classifiers are not allowed next to a license expression")
    if not meta.get("Keywords"):
        fail("no keywords")
    urls = meta.get_all("Project-URL") or []
    if not urls:
        fail("no project URLs")
    if release and any(PLACEHOLDER in url for url in urls):
        fail(f"project URLs still name the placeholder {PLACEHOLDER!r}: {urls}")
    if not meta.get_payload().lstrip().startswith("# vllm-gemma4-router"):
        fail("the long description is not README.md")


def check_sdist(path: Path, version: str) -> None:
    root = f"vllm_gemma4_router-{version}/"
    with tarfile.open(path) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
        pkg_info = tar.extractfile(f"{root}PKG-INFO").read().decode()
    stray = [n for n in names if not n.startswith(root)]
    if stray:
        fail(f"sdist entries outside {root}: {stray}")
    inside = {n[len(root) :] for n in names}
    top = {n for n in inside if "/" not in n}
    if top != SDIST_TOP_FILES:
        fail(f"sdist top-level files {sorted(top)}, expected {sorted(SDIST_TOP_FILES)}")
    package = {n for n in inside if n.startswith(f"{PACKAGE}/")}
    egg_info = {n for n in inside if n.startswith(f"{PACKAGE}.egg-info/")}
    other = inside - top - package - egg_info
    if other:
        fail(f"sdist holds files a rebuild does not need: {sorted(other)}")
    if package != package_sources():
        differ = sorted(package ^ package_sources())
        fail(f"sdist package files differ from the repository's: {differ}")
    check_tables("sdist", package)
    check_metadata(pkg_info, version, release=False)


def check_wheel(path: Path, version: str, release: bool) -> None:
    dist_info = f"vllm_gemma4_router-{version}.dist-info/"
    with zipfile.ZipFile(path) as wheel:
        names = set(wheel.namelist())
        metadata_text = wheel.read(f"{dist_info}METADATA").decode()
        entry_points = wheel.read(f"{dist_info}entry_points.txt").decode()
    package = {n for n in names if n.startswith(f"{PACKAGE}/")}
    meta = {n for n in names if n.startswith(dist_info)}
    if names - package - meta:
        fail(f"wheel holds files outside the package: {sorted(names - package - meta)}")
    if package != package_sources():
        differ = sorted(package ^ package_sources())
        fail(f"wheel package files differ from the repository's: {differ}")
    check_tables("wheel", package)
    if f"{dist_info}licenses/LICENSE" not in names:
        fail("the wheel carries no LICENSE")
    for line in (
        "gemma4_router = vllm_gemma4_router.plugin:register",
        "vllm-gemma4-router = vllm_gemma4_router.harness.cli:main",
    ):
        if line not in entry_points.splitlines():
            fail(f"entry_points.txt lacks {line!r}:\n{entry_points}")
    check_metadata(metadata_text, version, release)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dist_dir", type=Path, nargs="?")
    parser.add_argument("--print-version", action="store_true", help="print __version__, exit")
    parser.add_argument("--tag", help="the Git tag being released; must be v<version>")
    parser.add_argument("--release", action="store_true", help="refuse placeholders (publishing)")
    args = parser.parse_args(argv)
    if args.print_version:
        print(source_version())
        return 0
    if args.dist_dir is None:
        parser.error("DIST_DIR is required")
    sdists = sorted(args.dist_dir.glob("*.tar.gz"))
    wheels = sorted(args.dist_dir.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        fail(f"expected one sdist and one wheel in {args.dist_dir}: {sdists + wheels}")
    version = source_version()
    if sdists[0].name != f"vllm_gemma4_router-{version}.tar.gz":
        fail(f"sdist {sdists[0].name} does not carry version {version}")
    if wheels[0].name != f"vllm_gemma4_router-{version}-py3-none-any.whl":
        fail(f"wheel {wheels[0].name} is not the pure-Python wheel of version {version}")
    changelog_version, changelog_rest = changelog_release()
    if changelog_version != version:
        fail(f"CHANGELOG.md's newest release is {changelog_version}, __version__ is {version}")
    if args.tag is not None and args.tag != f"v{version}":
        fail(f"tag {args.tag!r} does not name version {version} (expected 'v{version}')")
    if args.release and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", changelog_rest):
        fail(f"CHANGELOG.md's [{version}] heading needs the release date, has {changelog_rest!r}")
    check_sdist(sdists[0], version)
    check_wheel(wheels[0], version, args.release)
    print(f"check_dist: {sdists[0].name} and {wheels[0].name} OK (version {version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
