"""A compile cache warmed before the plugin was installed (issue #35 item 2), on a GPU.

vLLM (torch >= 2.10) loads a whole compiled model from ``VLLM_CACHE_ROOT`` by a
key of its config and environment. A user who served Gemma 4 before installing
the plugin has such an artifact, traced with ``torch.mm`` frozen in the gate; if
the plugin's installation left the key unchanged, the next serve would load that
artifact and neither the gate tier nor the routing op would ever run. The plugin
writes its state into ``additional_config`` (``integration/compile_cache_key.py``)
so the key changes. This driver replays the user's story on one GPU, with one
cache root and the same command line throughout::

    before  the plugin's distribution metadata hidden (it is not installed: no
            ``vllm.general_plugins`` entry point, ``VLLM_PLUGINS`` unset, as a user
            has it), serve compiled: vLLM saves its AOT artifact;
    after   the metadata back (the plugin installed, nothing else changed), serve
            again: the server must not load ``before``'s artifact, and its decode
            trace must show ``ll_bf16_gemm`` at batch 1;
    again   (if the budget holds it) the same once more: now the artifact of
            ``after`` should load, still with ``ll_bf16_gemm`` (the key is stable).

Each phase is one :mod:`benchmarks.serving.confirm_gate` run (``--mode compiled``,
traced at the given batches). Output under ``--out``: ``<phase>/`` (confirm_gate's
files), ``stale_cache.json`` and ``stale_cache.md``, whose table is printed last.
Exit status 0 if ``after`` neither loaded ``before``'s artifact nor ran another tier
than ``ll_bf16_gemm``, and ``before`` saved an artifact and ran cuBLAS (without
that, the check proves nothing); 1 otherwise, 2 for bad arguments::

    VLLM_CACHE_ROOT is set by --cache-root (a fresh directory), and the compile
    cache is on (VLLM_DISABLE_COMPILE_CACHE unset) in every phase:
    python -m benchmarks.serving.stale_cache --model-profile gemma-4-26b-a4b-6l \\
        --cache-root /root/stale_cache --out OUT     # ci/device_e2e.sh stale_cache
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.common import tables
from benchmarks.serving import confirm_gate, trace_summary
from vllm_gemma4_router import log_contract

DISTRIBUTION = "vllm-gemma4-router"
PHASES = ("before", "after", "again")
_CACHE_DIR = re.compile(r"Using cache directory: (\S+) for vLLM's torch\.compile")
_AOT_LOADED = re.compile(r"Directly load AOT compilation from path (\S+)")
_AOT_SAVED = re.compile(r"saved AOT compiled function to (\S+)")
# Inductor compiled afresh (a loaded artifact logs "Directly load the compiled graph(s)").
_COMPILED = re.compile(r"Compiling a graph for compile range")


def metadata_dirs(name: str = DISTRIBUTION) -> list[Path]:
    """The metadata folders (``*.dist-info`` / ``*.egg-info``) of every installed
    distribution called ``name`` on ``sys.path``, each once."""
    found: list[Path] = []
    for dist in metadata.distributions():
        if (dist.metadata["Name"] or "").lower().replace("_", "-") != name:
            continue
        path = getattr(dist, "_path", None)
        if path is not None and Path(path).is_dir() and Path(path) not in found:
            found.append(Path(path))
    return found


@contextlib.contextmanager
def hidden(dirs: Sequence[Path]) -> Iterator[list[Path]]:
    """Rename each of ``dirs`` to ``<name>.hidden`` for the block (an uninstalled
    plugin, without touching pip), and back afterwards, also on error."""
    moved: list[tuple[Path, Path]] = []
    try:
        for path in dirs:
            target = path.with_name(path.name + ".hidden")
            path.rename(target)
            moved.append((path, target))
        yield [target for _, target in moved]
    finally:
        for path, target in reversed(moved):
            target.rename(path)


def plugin_entry_point_visible(python: str = sys.executable) -> bool:
    """Whether a fresh ``python`` sees this plugin under ``vllm.general_plugins``
    (a subprocess: this process's metadata lookups may be cached)."""
    code = (
        "from importlib.metadata import entry_points as e; "
        "print(any(p.value.startswith('vllm_gemma4_router') "
        "for p in e(group='vllm.general_plugins')))"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() == "True"


def log_facts(text: str) -> dict[str, Any]:
    """What one server log says about the compile cache and the plugin."""
    plugin = log_contract.parse_log(text)
    return {
        "cache_dirs": sorted(set(_CACHE_DIR.findall(text))),
        "aot_loaded": sorted(set(_AOT_LOADED.findall(text))),
        "aot_saved": sorted(set(_AOT_SAVED.findall(text))),
        "compiled": bool(_COMPILED.search(text)),
        "plugin_loaded": plugin.patched,
        "gate_tier_used": plugin.gate_tier_used,
    }


def read_log(path: Path) -> str:
    """A server log as confirm_gate left it, gzipped or not ('' if absent)."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            if candidate.suffix == ".gz":
                return gzip.decompress(candidate.read_bytes()).decode(errors="replace")
            return candidate.read_text(errors="replace")
    return ""


def tiers(record: dict[str, Any]) -> dict[int, str]:
    """Batch -> GateLinear tier over the traces of one confirm_gate record."""
    found: dict[int, str] = {}
    for report in record.get("traces", {}).values():
        for batch, row in report.get("batches", {}).items():
            found[int(batch)] = row.get("tier", "?")
    return found


def verdict(phases: dict[str, dict[str, Any]]) -> tuple[bool, list[str]]:
    """(passed, reasons): ``after`` must not load ``before``'s artifact and must run
    ``ll_bf16_gemm`` at every traced batch; ``before`` must have saved an artifact,
    run cuBLAS and loaded no plugin, or the check proves nothing. ``again`` (if run)
    is reported, not required."""
    reasons: list[str] = []
    before, after = phases.get("before"), phases.get("after")
    if not before or not after:
        return False, ["before and after must both run"]
    if before["log"]["plugin_loaded"]:
        reasons.append("before: the plugin loaded although its metadata was hidden")
    if not before["log"]["aot_saved"]:
        reasons.append("before: no AOT artifact saved, so there was nothing stale to load")
    if set(before["tiers"].values()) != {trace_summary.TIER_CUBLAS}:
        reasons.append(f"before: gate tiers {before['tiers']}, expected cuBLAS")
    if not after["log"]["plugin_loaded"]:
        reasons.append("after: the plugin did not load")
    stale = set(after["log"]["aot_loaded"]) & set(before["log"]["aot_saved"])
    if stale:
        reasons.append(f"after: loaded before's artifact {sorted(stale)}: STALE")
    if not after["tiers"] or set(after["tiers"].values()) != {trace_summary.TIER_LL_BF16}:
        reasons.append(f"after: gate tiers {after['tiers']}, expected ll_bf16_gemm")
    return not reasons, reasons


def _cache_key(cache_dir: str) -> str:
    """The key folder of a ``.../torch_compile_cache/<key>/rank_0_0/backbone`` path."""
    match = re.search(r"torch_compile_cache/([^/]+)", cache_dir)
    return match.group(1) if match else Path(cache_dir).name


def render(phases: dict[str, dict[str, Any]], passed: bool, reasons: Sequence[str]) -> str:
    """The markdown report: one row per phase, then the verdict."""
    rows = []
    for name, phase in phases.items():
        log = phase["log"]
        rows.append(
            [
                name,
                "yes" if log["plugin_loaded"] else "no",
                ", ".join(_cache_key(d) for d in log["cache_dirs"]) or "-",
                "yes" if log["compiled"] else "no",
                ", ".join(log["aot_loaded"]) or "-",
                ", ".join(log["aot_saved"]) or "-",
                "; ".join(f"batch {b}: {t}" for b, t in sorted(phase["tiers"].items())) or "-",
                f"{phase.get('start_s') or 0:.0f}",
            ]
        )
    table = tables.markdown_table(
        [
            "phase",
            "plugin loaded",
            "torch.compile cache key",
            "Inductor compiled",
            "AOT artifact loaded",
            "AOT artifact saved",
            "gate tier",
            "start (s)",
        ],
        rows,
    )
    lines = [
        "# A compile cache warmed before the plugin was installed (issue #35 item 2)",
        "",
        table,
        "",
        f"**{'PASS' if passed else 'FAIL'}**" + ("" if passed else ": " + "; ".join(reasons)),
    ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-profile", default="gemma-4-26b-a4b-6l")
    parser.add_argument("--cache-root", required=True, help="VLLM_CACHE_ROOT, a fresh folder")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--batches", default="1", help="traced decode batches, e.g. 1,16")
    parser.add_argument("--budget-s", type=float, default=540.0)
    parser.add_argument(
        "--again-estimate-s",
        type=float,
        default=200.0,
        help="run the third phase only if this much of --budget-s is left",
    )
    parser.add_argument("--server-args", default=None, help="confirm_gate's --server-args")
    return parser


def main(
    argv: Sequence[str] | None = None,
    make_server: Callable[..., Any] | None = None,
    entry_point_visible: Callable[[], bool] = plugin_entry_point_visible,
    find_metadata: Callable[[], list[Path]] = metadata_dirs,
) -> int:
    """Run before / after (/ again), write ``stale_cache.{json,md}``, print the table."""
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    cache_root = Path(args.cache_root)
    if cache_root.exists() and any(cache_root.iterdir()):
        print(f"--cache-root {cache_root} is not empty: give a fresh folder", file=sys.stderr)
        return 2
    cache_root.mkdir(parents=True, exist_ok=True)
    os.environ["VLLM_CACHE_ROOT"] = str(cache_root.resolve())
    os.environ.pop("VLLM_DISABLE_COMPILE_CACHE", None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dirs = find_metadata()
    if not dirs:
        print(f"{DISTRIBUTION} is not installed: nothing to hide", file=sys.stderr)
        return 2
    phases: dict[str, dict[str, Any]] = {}
    for phase in PHASES:
        left = args.budget_s - (time.monotonic() - started)
        if phase == "again" and left < args.again_estimate_s:
            print(f"== again skipped: {left:.0f} s left", flush=True)
            break
        argv_phase = [
            "--model-profile",
            args.model_profile,
            "--mode",
            "compiled",
            "--plugin",
            "--batches",
            args.batches,
            "--budget-s",
            str(max(60.0, left)),
            "--out",
            str(out / phase),
        ]
        if args.server_args is not None:
            argv_phase += ["--server-args", args.server_args]
        hide = hidden(dirs) if phase == "before" else contextlib.nullcontext([])
        with hide as moved:
            visible = entry_point_visible()
            print(f"== {phase}: hidden {[str(p) for p in moved]}, entry point visible: {visible}")
            if phase == "before" and visible:
                print("the plugin's entry point is still visible: not a plugin-less serve")
                return 1
            confirm_gate.main(argv_phase, make_server=make_server)
        records = json.loads((out / phase / "confirm_gate.json").read_text())
        record = records[0] if records else {}
        phases[phase] = {
            "entry_point_visible": visible,
            "log": log_facts(read_log(out / phase / "compiled" / "server.log")),
            "tiers": tiers(record),
            "start_s": record.get("timings_s", {}).get("start"),
            "error": record.get("error"),
        }
    passed, reasons = verdict(phases)
    result = {"cache_root": str(cache_root), "phases": phases, "passed": passed, "reasons": reasons}
    (out / "stale_cache.json").write_text(json.dumps(result, indent=2) + "\n")
    text = render(phases, passed, reasons)
    (out / "stale_cache.md").write_text(text)
    print(text)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
