"""Install the built wheel into clean virtual environments and use it as a user would.

    .venv/bin/python ci/check_wheel_install.py .cache/dist/vllm_gemma4_router-*.whl

Two environments under ``.cache/wheel-check/``, each a fresh ``python -m venv``
into which pip installs the wheel with ``--no-index`` (the wheel's own
requirements must already be met, nothing is downloaded):

* **bare**: torch and triton only (what any GPU build of torch brings; plus
  numpy for Triton's CPU interpreter), no vLLM, no transformers. The runtime
  imports from the wheel, its launch tables (package data) load from the wheel,
  the ``vllm.general_plugins`` entry point loads and registers, the reference
  routes, ``vllm-gemma4-router selfcheck`` passes and ``vllm-gemma4-router
  demo`` stops with one line naming the ``[demo]`` extra.
* **vllm**: next to CI's vLLM (the ``.venv`` this runs from). vLLM's own plugin
  loader finds the wheel's entry point and the patched Gemma4 module logs the
  wheel's version, the ``[demo]`` extra's modules are found, and ``selfcheck``
  passes again.

Neither sees this checkout: the installed packages they share with ``.venv``
come in through a ``.pth`` line (so ``.venv``'s own ``.pth`` files, among them
the editable install of this package, never run), ``PYTHONPATH`` is dropped and
the checks run from a temporary directory. Each check asserts where
``vllm_gemma4_router`` and its metadata were found.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".cache" / "wheel-check"
# The bare environment's packages, with what they require: torch (the one
# dependency), triton (which every GPU build of torch brings) and numpy, which
# only Triton's CPU interpreter needs (selfcheck runs under it here, no GPU).
BARE_ROOTS = ("torch", "triton", "numpy")
SELFCHECK = ("selfcheck", "--tokens", "8", "--experts", "64", "--topk", "4")


def log(message: str) -> None:
    print(f"check_wheel_install: {message}", flush=True)


def fail(message: str) -> None:
    raise SystemExit(f"check_wheel_install: FAIL: {message}")


def requirement_closure(roots: tuple[str, ...]) -> list[metadata.Distribution]:
    """The installed distributions ``roots`` need, themselves included (extras left out)."""
    environment = {**default_environment(), "extra": ""}
    seen: dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            fail(f"{name} is not installed in {sys.prefix} (needed by {roots})")
        seen[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(requirement.name)
    return list(seen.values())


def link_closure(roots: tuple[str, ...], target: Path) -> list[str]:
    """Symlink the top-level entries (packages, modules, dist-info) of ``roots``' closure."""
    target.mkdir(parents=True)
    site = Path(sysconfig.get_paths()["purelib"])
    names = []
    for dist in requirement_closure(roots):
        names.append(f"{dist.metadata['Name']} {dist.version}")
        for file in dist.files or []:
            top = file.parts[0]
            if top == ".." or file.suffix == ".pth":
                continue  # console scripts; .pth files (inert outside a site dir anyway)
            link = target / top
            if not link.exists() and (site / top).exists():
                link.symlink_to(site / top)
    return sorted(names)


def make_venv(name: str, shared: Path) -> Path:
    """A fresh venv whose site-packages adds ``shared`` to ``sys.path`` (a ``.pth`` line)."""
    root = WORK / name
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "shared_packages.pth").write_text(f"{shared}\n")
    return root


def install_wheel(venv: Path, wheel: Path) -> None:
    # This interpreter's pip, pointed at the venv (--python): no pip inside it,
    # no index, and the wheel's requirements resolved against what it sees.
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
        + ["--quiet", "--no-index", "--no-cache-dir", str(wheel)],
        check=True,
    )


def run(venv: Path, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``command`` (a venv executable name, then arguments) away from the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    env["VIRTUAL_ENV"] = str(venv)
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run(
            [str(venv / "bin" / command[0]), *command[1:]],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
            timeout=600,
        )
    if check and done.returncode != 0:
        fail(f"{' '.join(command[:3])} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


# Asserts, inside a venv, that the package and its metadata come from that venv.
FROM_THE_WHEEL = """
import sys
from importlib import metadata
from pathlib import Path

import vllm_gemma4_router

prefix = Path(sys.prefix).resolve()
here = Path(vllm_gemma4_router.__file__).resolve()
assert prefix in here.parents, f"vllm_gemma4_router imported from {here}, not {prefix}"
dist = metadata.distribution("vllm-gemma4-router")
assert prefix in Path(dist.locate_file("")).resolve().parents, dist.locate_file("")
assert dist.version == vllm_gemma4_router.__version__ == WHEEL_VERSION, dist.version
[plugin] = metadata.entry_points(group="vllm.general_plugins", name="gemma4_router")
assert prefix in Path(plugin.dist.locate_file("")).resolve().parents, plugin.dist
"""

BARE_CHECK = """
import importlib.util
import sys

import torch

assert importlib.util.find_spec("vllm") is None, "vLLM is visible: not a bare install"
assert importlib.util.find_spec("transformers") is None, "transformers is visible"
register = plugin.load()
register()  # without vLLM: waits for a Gemma4 module that never comes
loaded = [m for m in sys.modules if m.startswith("vllm_gemma4_router.harness") or m == "vllm"]
assert loaded == [], loaded
from vllm_gemma4_router.fused_router import launch_table as fused_table
from vllm_gemma4_router.routing import launch_table

tables = [launch_table.table_file(p) for p in ("cuda", "hip")] + [fused_table.fused_table_file()]
for table in tables:
    assert prefix in Path(str(table)).resolve().parents, f"launch table {table} not from the wheel"
assert launch_table.NUM_BUCKETS == 6 and len(launch_table._HIP_TABLE) == 6
assert fused_table.GEMM_PATH_TOKENS and len(fused_table._FUSED_TABLE) == 9
from vllm_gemma4_router import gemma4_routing_reference

logits = torch.randn(5, 32)
weights, ids = gemma4_routing_reference(logits, 4, torch.rand(32) + 0.5)
assert weights.shape == ids.shape == (5, 4) and ids.dtype == torch.int32
print("bare: runtime and launch tables from the wheel, entry point registers, reference routes")
"""

VLLM_CHECK = """
import logging

from vllm_gemma4_router.log_contract import logger, parse_log

lines = []
handler = logging.Handler(logging.INFO)
handler.emit = lambda record: lines.append(record.getMessage())
logger.addHandler(handler)
logger.setLevel(logging.INFO)

from vllm.plugins import load_general_plugins

load_general_plugins()  # vLLM's own loader: entry points of group vllm.general_plugins
import vllm.model_executor.models.gemma4 as gemma4

assert gemma4._vllm_gemma4_router_layout is not None, "vLLM did not load the plugin"
log = parse_log("\\n".join(lines))
assert log.patched and log.versions == [WHEEL_VERSION], lines
print(f"vllm: vLLM loaded the plugin from the wheel: {lines[0]}")

from vllm_gemma4_router.harness.extras import require_extra

require_extra("demo", "vllm-gemma4-router demo")  # CI's environment has the [demo] extra

"""


def check_selfcheck(venv: Path, label: str) -> None:
    """``vllm-gemma4-router selfcheck`` in ``venv`` must end with PASS."""
    selfcheck = run(venv, "vllm-gemma4-router", *SELFCHECK)
    if selfcheck.stdout.splitlines()[-1:] != ["PASS"]:
        fail(f"{label}: selfcheck did not pass:\n{selfcheck.stdout}")
    log(f"{label}: vllm-gemma4-router selfcheck PASS")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path)
    args = parser.parse_args(argv)
    wheel = args.wheel.resolve()
    version = wheel.name.split("-")[1]
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    prologue = f"WHEEL_VERSION = {version!r}\n" + textwrap.dedent(FROM_THE_WHEEL)

    bare_packages = WORK / "bare-packages"
    log("bare venv with " + ", ".join(link_closure(BARE_ROOTS, bare_packages)))
    bare = make_venv("bare", bare_packages)
    install_wheel(bare, wheel)
    print(run(bare, "python", "-c", prologue + textwrap.dedent(BARE_CHECK)).stdout, end="")
    check_selfcheck(bare, "bare")
    demo = run(bare, "vllm-gemma4-router", "demo", check=False)
    message = demo.stderr.strip()
    if demo.returncode == 0 or "\n" in message or "vllm-gemma4-router[demo]" not in message:
        fail(f"bare: demo without [demo] must stop with one line naming it, got:\n{demo.stderr}")
    log(f"bare: vllm-gemma4-router demo -> {message}")

    site = Path(sysconfig.get_paths()["purelib"])
    with_vllm = make_venv("vllm", site)
    install_wheel(with_vllm, wheel)
    print(run(with_vllm, "python", "-c", prologue + textwrap.dedent(VLLM_CHECK)).stdout, end="")
    check_selfcheck(with_vllm, "vllm")
    log(f"OK: {wheel.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
