"""ci/device_runtime/cutlass_dsl_side.sh's device side and its use in
benchmarks/kernel/bench_router_device.sh (anchors-ll034), offline, on a tiny fake bundle.

The fake side site has the layout of the real one (``nvidia_cutlass_dsl/dsl_packages/
cutlass``, the dist-info of the six pinned distributions, ``tvm_ffi``, ``quack``, the
wheel's ``nvidia_cutlass_dsl_packages.pth``), packed and split like ``build`` does. The
stand-in for the device's python is a venv whose site-packages holds a fake 0.26.0
runtime the way ``install_on_device.sh`` puts it there: a ``.pth`` that
``site.addsitedir``-s a site with nvidia-cutlass-dsl 4.6.0, whose own ``.pth`` puts its
``dsl_packages`` at ``sys.path[0]``. The install's smoke must then see 4.8.0.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "ci" / "device_runtime" / "cutlass_dsl_side.sh"
PACKER = REPO / "ci" / "device_runtime" / "pack_pieces.sh"
BENCH = REPO / "benchmarks" / "kernel" / "bench_router_device.sh"
ARCHIVE = "cutlass-dsl-4.8.0-cp312.tar.xz"
PINS = {
    "nvidia-cutlass-dsl": "4.8.0",
    "nvidia-cutlass-dsl-libs-base": "4.8.0",
    "nvidia-cutlass-dsl-libs-core": "4.8.0",
    "nvidia-cutlass-dsl-libs-cu13": "4.8.0",
    "apache-tvm-ffi": "0.1.11",
    "quack-kernels": "0.6.5",
}
#: the line of nvidia-cutlass-dsl's wheel (4.6.0 and 4.8.0 alike)
DSL_PTH = (
    "import sys, os, nvidia_cutlass_dsl; sys.path.insert(0, "
    "os.path.join(nvidia_cutlass_dsl.__path__[0], 'dsl_packages'))\n"
)
VERSION_OF_CUTLASS = (
    "import cutlass, importlib.metadata as m; "
    "print(cutlass.__version__, m.version('nvidia-cutlass-dsl'), m.version('quack-kernels'))"
)


def fake_site(root: Path, versions: dict[str, str]) -> Path:
    """A site folder laid out like the CuTe-DSL wheels install it, at ``versions``."""
    dsl = versions["nvidia-cutlass-dsl"]
    files = {
        "nvidia_cutlass_dsl_packages.pth": DSL_PTH,
        "nvidia_cutlass_dsl/dsl_packages/cutlass/__init__.py": f"__version__ = '{dsl}'\n",
        "nvidia_cutlass_dsl/dsl_packages/iket/__init__.py": "",
        "nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so": "",
        "tvm_ffi/__init__.py": "",
        "quack/__init__.py": f"__version__ = '{versions['quack-kernels']}'\n",
    }
    for name, version in versions.items():
        info = f"{name.replace('-', '_')}-{version}.dist-info"
        files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> SimpleNamespace:
    """The fake pieces (two, as the real build) in one folder per device call, and the
    device's python with a fake 0.26.0 runtime (nvidia-cutlass-dsl 4.6.0)."""
    base = tmp_path_factory.mktemp("side").resolve()
    pieces_dir = base / "pieces"

    def pack(piece_bytes: int) -> dict:
        # the packer the real build uses (ci/device_runtime/pack_pieces.sh)
        fake_site(base / "build" / "site", PINS)
        script = (
            f'step() {{ :; }}; source "{PACKER}"; '
            f'pack_pieces "{base / "build"}" {ARCHIVE} "{pieces_dir}" {piece_bytes} -0 '
            f'"{sys.executable}" \'{{"side": "test"}}\''
        )
        subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True)
        return json.loads((pieces_dir / "MANIFEST.json").read_text())

    total = pack(1 << 30)["total_bytes"]
    summary = pack((total + 1) // 2)  # two pieces, as the real build
    assert [p["name"] for p in summary["pieces"]] == [f"{ARCHIVE}.part00", f"{ARCHIVE}.part01"]
    assert summary["build"] == {"side": "test"} and not (base / "build" / ARCHIVE).exists()
    manifest = (pieces_dir / "MANIFEST.sha256").read_text()
    data = b"".join((pieces_dir / p["name"]).read_bytes() for p in summary["pieces"])
    assert f"{sha256(data)}  {ARCHIVE}\n" in manifest
    calls = []
    for i, piece in enumerate(summary["pieces"]):
        call = base / f"call{i}"
        call.mkdir()
        (call / "MANIFEST.sha256").write_text(manifest)
        (call / piece["name"]).write_bytes((pieces_dir / piece["name"]).read_bytes())
        calls.append(call)

    runtime_versions = {**PINS, "quack-kernels": "0.6.1", "apache-tvm-ffi": "0.1.10"}
    runtime_versions |= {n: "4.6.0" for n in PINS if n.startswith("nvidia-cutlass-dsl")}
    runtime = fake_site(base / "vllm026" / "site", runtime_versions)
    venv.create(base / "py", with_pip=False)
    python = base / "py" / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # what install_on_device.sh writes (less the sampler default)
    (Path(purelib) / "vllm026_runtime.pth").write_text(
        f"import site; site.addsitedir('{runtime}')\n"
    )
    return SimpleNamespace(python=python, archive_sha=sha256(data), call0=calls[0], call1=calls[1])


def side(mode: str, pieces: Path, stage: Path, prefix: Path, python: Path):
    """One device call of cutlass_dsl_side.sh, carrying what is in ``pieces``."""
    env = {
        **os.environ,
        "CUTLASS_SIDE_PIECES": str(pieces),
        "CUTLASS_SIDE_STAGE": str(stage),
        "CUTLASS_SIDE_PREFIX": str(prefix),
        "PYTHON": str(python),
    }
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        ["bash", str(SCRIPT), mode], env=env, capture_output=True, text=True, timeout=120
    )


def run_python(python: Path, code: str, pythonpath: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(
        [python, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize("args", [[], ["unpack"], ["--stage-only"]])
def test_bad_usage_exits_3_with_the_modes(args):
    result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)
    assert result.returncode == 3
    assert "usage:" in result.stderr and "build|stage|install" in result.stderr


def test_the_fake_runtime_alone_gives_4_6_0(bundle):
    # the baseline the next test overturns: the .pth-added 0.26.0 runtime's CuTe-DSL
    assert run_python(bundle.python, VERSION_OF_CUTLASS) == "4.6.0 4.6.0 0.6.1"


def test_stage_then_install_puts_4_8_0_ahead_of_the_runtime(bundle, tmp_path):
    tmp_path = tmp_path.resolve()
    stage, prefix, python = tmp_path / "stage", tmp_path / "cutlass480", bundle.python
    first = side("stage", bundle.call0, stage, prefix, python)
    assert first.returncode == 0, first.stderr
    assert (stage / f"{ARCHIVE}.part00").is_file()
    assert f"staged 1/2 pieces in {stage}; still to carry: {ARCHIVE}.part01" in first.stdout

    last = side("install", bundle.call1, stage, prefix, python)
    assert last.returncode == 0, last.stdout + last.stderr
    assert "ok   import cutlass: nvidia-cutlass-dsl 4.8.0" in last.stdout
    for name, version in PINS.items():
        assert f"ok   {name} {version} (want {version}) from {prefix / 'site'}" in last.stdout
    assert "without it, this python sees nvidia-cutlass-dsl 4.6.0" in last.stdout
    assert (prefix / ".installed").read_text().strip() == bundle.archive_sha
    assert not (stage / ARCHIVE).exists()  # the reassembled archive is not kept

    # env.sh's PYTHONPATH is what the bench uses: the side first, cutlass from dsl_packages
    env_sh = (prefix / "env.sh").read_text()
    side_site = prefix / "site"
    line = f"export PYTHONPATH={side_site}/nvidia_cutlass_dsl/dsl_packages:{side_site}"
    assert line + "${PYTHONPATH:+:$PYTHONPATH}\n" in env_sh
    pythonpath = f"{side_site}/nvidia_cutlass_dsl/dsl_packages:{side_site}"
    assert run_python(python, VERSION_OF_CUTLASS, pythonpath) == "4.8.0 4.8.0 0.6.5"
    assert run_python(python, VERSION_OF_CUTLASS) == "4.6.0 4.6.0 0.6.1"

    again = side("install", bundle.call1, stage, prefix, python)
    assert again.returncode == 0
    assert f"{ARCHIVE} ({bundle.archive_sha}) is already installed in {prefix}" in again.stdout


def test_install_with_a_piece_not_staged_exits_2(bundle, tmp_path):
    stage, prefix = tmp_path / "stage", tmp_path / "cutlass480"
    result = side("install", bundle.call1, stage, prefix, bundle.python)
    assert result.returncode == 2
    assert f"pieces not staged: {ARCHIVE}.part00" in result.stderr
    assert not (prefix / "site").exists()


def test_a_damaged_piece_is_refused_and_not_staged(bundle, tmp_path):
    call = tmp_path / "call"
    call.mkdir()
    (call / "MANIFEST.sha256").write_text((bundle.call0 / "MANIFEST.sha256").read_text())
    blob = bytearray((bundle.call0 / f"{ARCHIVE}.part00").read_bytes())
    blob[0] ^= 0xFF
    (call / f"{ARCHIVE}.part00").write_bytes(bytes(blob))
    result = side("stage", call, tmp_path / "stage", tmp_path / "p", bundle.python)
    assert result.returncode == 2
    assert f"carried {ARCHIVE}.part00 has sha256 {sha256(bytes(blob))}" in result.stderr
    assert not (tmp_path / "stage" / f"{ARCHIVE}.part00").exists()


def test_a_stage_call_without_a_piece_exits_2(bundle, tmp_path):
    call = tmp_path / "call"
    call.mkdir()
    (call / "MANIFEST.sha256").write_text((bundle.call0 / "MANIFEST.sha256").read_text())
    result = side("stage", call, tmp_path / "stage", tmp_path / "p", bundle.python)
    assert result.returncode == 2
    assert "no piece carried" in result.stderr


def test_a_manifest_of_another_bundle_exits_2(bundle, tmp_path):
    call = tmp_path / "call"
    call.mkdir()
    other = f"{'0' * 64}  vllm-0.26.0-cp312.tar.xz.part00\n{'1' * 64}  vllm-0.26.0-cp312.tar.xz\n"
    (call / "MANIFEST.sha256").write_text(other)
    result = side("stage", call, tmp_path / "stage", tmp_path / "p", bundle.python)
    assert result.returncode == 2
    assert f"is not a manifest of {ARCHIVE}" in result.stderr


def run_bench(tmp_path: Path, side_prefix: Path) -> tuple[subprocess.CompletedProcess, str]:
    """bench_router_device.sh anchors-ll034 with a stand-in python that records the
    PYTHONPATH and arguments of each call and does nothing."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$PYTHONPATH|$*" >>{log}\ncat >/dev/null\n')
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "OUT": str(tmp_path / "out")}
    env["CUTLASS_SIDE_PREFIX"] = str(side_prefix)
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        ["bash", str(BENCH), "anchors-ll034"], env=env, capture_output=True, text=True, timeout=60
    )
    return result, log.read_text() if log.exists() else ""


def test_bench_skips_anchors_ll034_without_the_side_site(tmp_path):
    result, calls = run_bench(tmp_path, tmp_path / "nowhere")
    assert result.returncode == 0
    assert (
        "== anchors-ll034 skipped: the nvidia-cutlass-dsl 4.8.0 side site is not installed"
        in result.stdout
    )
    assert "cutlass_dsl_side.sh" in result.stdout
    assert "skipped (run each in another call): anchors-ll034" in result.stdout
    assert "benchmarks.kernel.bench_router" not in calls


def test_bench_runs_anchors_ll034_with_the_side_site_first(tmp_path):
    tmp_path = tmp_path.resolve()
    prefix = tmp_path / "cutlass480"
    (prefix / "site" / "nvidia_cutlass_dsl").mkdir(parents=True)
    result, calls = run_bench(tmp_path, prefix)
    assert result.returncode == 0, result.stdout + result.stderr
    bench = [line for line in calls.splitlines() if "-m benchmarks.kernel.bench_router" in line]
    assert len(bench) == 1
    pythonpath, _, args = bench[0].partition("|")
    side_site = prefix / "site"
    assert pythonpath.split(":")[:3] == [
        f"{side_site}/nvidia_cutlass_dsl/dsl_packages",
        str(side_site),
        str(REPO),
    ]
    assert "--anchors-only --ll-source .cache/vllm-src/vllm-0.34.0 --tag anchors-ll034" in args
