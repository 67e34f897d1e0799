"""Helpers for ci/device_runtime/prepare.sh (runs on the build machine, not the device).

Subcommands:
  select    the downloaded wheel of each pinned requirement (exactly one each)
  prune     delete from the assembled site directory what trim.txt lists
  check     dependency closure of vLLM + the carried wheels against the device's packages;
            --stubs DIR also writes, for pip's resolver, an empty wheel per excluded
            requirement and DIR/constraints.txt pinning them (see _write_stubs)
  manifest  sha256 of every piece and of the whole archive (MANIFEST.sha256), summary (.json)

Needs `packaging` (prepare.sh runs it from its own tools venv).
"""

from __future__ import annotations

import argparse
import base64
import email.parser
import fnmatch
import hashlib
import json
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version


def _patterns(path: Path) -> list[tuple[str, str]]:
    """`pattern  # reason` lines of a list file (blank lines and `#` lines skipped)."""
    out = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, _, reason = line.partition("#")
        out.append((pattern.strip(), reason.strip()))
    return out


def cmd_prune(args: argparse.Namespace) -> int:
    """Delete the files of `site` that trim.txt lists (every pattern must match)."""
    drops = _patterns(Path(args.trim_list))
    site = Path(args.site)
    hits = {p: 0 for p, _ in drops}
    freed = 0
    for path in sorted(site.rglob("*")):
        if not path.is_file() and not path.is_symlink():
            continue
        rel = path.relative_to(site).as_posix()
        match = next((p for p, _ in drops if fnmatch.fnmatchcase(rel, p)), None)
        if match is not None:
            hits[match] += 1
            freed += path.lstat().st_size
            path.unlink()
    for path in sorted(site.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    unused = [p for p, n in hits.items() if n == 0]
    if unused:
        print(f"prune: ERROR: patterns matching nothing: {unused}", file=sys.stderr)
        return 1
    print(f"prune: removed {sum(hits.values())} files, {freed / 1e6:.1f} MB")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    """Print the wheel of `folder` for each name==version of `requirements` (exactly one each)."""
    wheels: dict[tuple[str, str], list[Path]] = {}
    for wheel in Path(args.folder).glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        wheels.setdefault((name, str(version)), []).append(wheel)
    missing = []
    for name, version in _pins(Path(args.requirements)).items():
        found = wheels.get((name, str(Version(version))), [])
        if len(found) != 1:
            missing.append(f"{name}=={version}: {len(found)} wheels")
        else:
            print(found[0])
    for line in missing:
        print(f"select: ERROR: {line}", file=sys.stderr)
    return 1 if missing else 0


def _wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        name = next(
            n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
        )
        return email.parser.Parser().parsestr(zf.read(name).decode())


def _pins(path: Path) -> dict[str, str]:
    """name==version lines -> {canonical name: version}."""
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version.strip()
    return out


def cmd_check(args: argparse.Namespace) -> int:
    env = default_environment()
    env.update(
        python_version=args.python_version,
        python_full_version=f"{args.python_version}.0",
        implementation_name="cpython",
        platform_python_implementation="CPython",
        sys_platform="linux",
        platform_system="Linux",
        platform_machine="x86_64",
        os_name="posix",
    )
    device = _pins(Path(args.device))
    excluded = {canonicalize_name(p): r for p, r in _patterns(Path(args.excluded))}
    allowed = {canonicalize_name(p): r for p, r in _patterns(Path(args.allow_mismatch))}
    carried: dict[str, tuple[str, email.message.Message]] = {}
    errors: list[str] = []
    for wheel in sorted(Path(args.wheels).glob("*.whl")) + [Path(args.vllm_wheel)]:
        meta = _wheel_metadata(wheel)
        name = canonicalize_name(meta["Name"])
        if name in carried:
            errors.append(f"two carried versions of {name}")
        if name in device:
            errors.append(f"{name} is carried but the device already has {device[name]}")
        if name in excluded:
            errors.append(f"{name} is carried but listed in excluded.txt")
        carried[name] = (meta["Version"], meta)

    seen: set[tuple[str, frozenset[str]]] = set()
    notes: dict[str, set[str]] = {"excluded": set(), "allowed": set()}
    excluded_specs: dict[str, list[SpecifierSet]] = {}
    from_device: set[str] = set()

    def walk(name: str, extras: Iterable[str]) -> None:
        key = (name, frozenset(extras))
        if key in seen or name not in carried:
            return
        seen.add(key)
        version, meta = carried[name]
        for raw in meta.get_all("Requires-Dist") or []:
            req = Requirement(raw)
            if req.marker is not None and not any(
                req.marker.evaluate({**env, "extra": e}) for e in (set(extras) | {""})
            ):
                continue
            dep = canonicalize_name(req.name)
            who = f"{name}=={version} needs {req}"
            if dep in excluded:
                notes["excluded"].add(f"{dep}: {excluded[dep]}  ({who})")
                excluded_specs.setdefault(dep, []).append(req.specifier)
                continue
            have = carried[dep][0] if dep in carried else device.get(dep)
            if dep not in carried and have is not None:
                from_device.add(dep)
            if have is None:
                errors.append(f"MISSING {dep}: {who}")
                continue
            if req.specifier and not req.specifier.contains(Version(have), prereleases=True):
                if dep in allowed:
                    notes["allowed"].add(f"{dep}=={have} kept: {allowed[dep]}  ({who})")
                else:
                    errors.append(f"VERSION {dep}=={have} does not satisfy {who}")
            walk(dep, req.extras)

    walk("vllm", [])
    unreached = sorted(set(carried) - {n for n, _ in seen})
    for name in unreached:
        errors.append(f"carried but needed by nothing: {name}")

    target = f"py{args.python_version}"
    print(f"check: {len(carried)} carried distributions (vllm included), target {target}")
    print(f"check: used from the device: {', '.join(sorted(from_device))}")
    for kind in ("excluded", "allowed"):
        for line in sorted(notes[kind]):
            print(f"check: {kind}: {line}")
    for line in errors:
        print(f"check: ERROR: {line}", file=sys.stderr)
    if args.stubs and not errors:
        errors += _write_stubs(Path(args.stubs), excluded_specs)
    print("check: " + ("FAILED" if errors else "OK: the closure is complete"))
    return 1 if errors else 0


def _write_stubs(folder: Path, specs: dict[str, list[SpecifierSet]]) -> list[str]:
    """An empty wheel (metadata only, no requirements) per excluded distribution that
    vLLM or a carried wheel requires, at a version `X+excluded` meeting every such
    requirement (a local label: `==X` still matches it), and `constraints.txt` pinning
    exactly those. With both, pip's resolver checks the carried wheels against the
    device's packages without resolving what excluded.txt leaves out (e.g. cuda-python,
    which would pin a cuda-core the device does not have)."""
    folder.mkdir(parents=True, exist_ok=True)
    errors, lines = [], []
    for dep in sorted(specs):
        cands = ["0"] + [s.version.removesuffix(".*") for spec in specs[dep] for s in spec]
        version = None
        for cand in cands:
            try:
                v = Version(f"{Version(cand).public}+excluded")
            except InvalidVersion:
                continue
            if all(spec.contains(v, prereleases=True) for spec in specs[dep]):
                version = str(v)
                break
        if version is None:
            errors.append(f"no stub version meets every requirement on {dep}: {specs[dep]}")
            continue
        stem = f"{dep.replace('-', '_')}-{version}"
        files = {
            f"{stem}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {dep}\n"
            f"Version: {version}\nSummary: excluded.txt stand-in (resolver check only)\n",
            f"{stem}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: bundle.py\n"
            "Root-Is-Purelib: true\nTag: py3-none-any\n",
        }
        record = "".join(
            f"{n},sha256="
            + base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).decode().rstrip("=")
            + f",{len(t.encode())}\n"
            for n, t in files.items()
        )
        files[f"{stem}.dist-info/RECORD"] = record + f"{stem}.dist-info/RECORD,,\n"
        with zipfile.ZipFile(folder / f"{stem}-py3-none-any.whl", "w") as zf:
            for n, t in files.items():
                zf.writestr(n, t)
        lines.append(f"{dep}=={version}\n")
    (folder / "constraints.txt").write_text("".join(lines))
    print(f"check: {len(lines)} stand-in wheels for excluded requirements in {folder}")
    return errors


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cmd_manifest(args: argparse.Namespace) -> int:
    pieces_dir = Path(args.pieces_dir)
    pieces = sorted(pieces_dir.glob(f"{args.prefix}.part*"))
    if not pieces:
        print(f"manifest: no {args.prefix}.part* in {pieces_dir}", file=sys.stderr)
        return 1
    lines = [f"{_sha256(p)}  {p.name}\n" for p in pieces]
    lines.append(f"{args.archive_sha256}  {args.prefix}\n")  # the reassembled archive
    (pieces_dir / "MANIFEST.sha256").write_text("".join(lines))
    summary = {
        "archive": args.prefix,
        "archive_sha256": args.archive_sha256,
        "pieces": [{"name": p.name, "bytes": p.stat().st_size} for p in pieces],
        "total_bytes": sum(p.stat().st_size for p in pieces),
        "build": json.loads(args.build_info),
    }
    (pieces_dir / "MANIFEST.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"manifest: {len(pieces)} pieces, {summary['total_bytes']} bytes")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("prune")
    p.add_argument("site")
    p.add_argument("trim_list")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("select")
    p.add_argument("requirements")
    p.add_argument("folder")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("check")
    p.add_argument("--vllm-wheel", required=True)
    p.add_argument("--wheels", required=True, help="folder of the carried dependency wheels")
    p.add_argument("--device", required=True, help="name==version list of the device")
    p.add_argument("--excluded", required=True)
    p.add_argument("--allow-mismatch", required=True)
    p.add_argument("--python-version", default="3.12")
    p.add_argument("--stubs", help="write stand-in wheels of the excluded requirements here")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("manifest")
    p.add_argument("pieces_dir")
    p.add_argument("prefix")
    p.add_argument("--archive-sha256", required=True)
    p.add_argument("--build-info", default="{}", help="JSON object stored in MANIFEST.json")
    p.set_defaults(func=cmd_manifest)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
