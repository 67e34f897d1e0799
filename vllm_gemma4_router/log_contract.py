"""The plugin's log lines as a contract: its logger, the line formats and their parser.

The demo and the A/B harnesses judge a vLLM server by what these lines say
(was Gemma4 patched, which forward served the routing, in how many
processes), so the code that writes a line and the code that reads it back
live here together and are tested together (tests/integration/test_log_contract.py).

Lines (vLLM prefixes each with its own level, file and process tags):

* ``vllm-gemma4-router <version>: Gemma4 MoE routing -> gemma4_routing op (<layout>)``
  once per process that patched vLLM's Gemma4 module (``integration.gemma4_layouts``): the
  plugin's first line in a process, so it carries the package version;
* ``vllm-gemma4-router <version>: unrecognised Gemma4 code in <module> ...``
  instead, when the layout is unknown and nothing was changed;
* ``vllm-gemma4-router <version>: refused Gemma4 routing in <module>: <why>; leaving
  vLLM's routing unchanged`` instead, when the layout is known but the release's
  routing does something the plugin does not know (a new argument to its kernel);
* ``vllm-gemma4-router <version>: nothing patched: <why>`` once per process, when
  this vLLM's Gemma 4 code is not where the plugin patches it (moved to vLLM's
  new model tree, or gone);
* ``vllm-gemma4-router <version>: vLLM registers its own gemma4_routing ...``
  when the plugin's op overrides an in-tree CustomOp of the same name;
* ``gemma4_routing: <N> layer(s) dispatch to <forward> (platform <p>[, torch.compile])``
  per process that built the model, one line per distinct forward (``integration.custom_ops``);
* ``gemma4_routing: 0 layers (this model has no MoE routing; platform <p>)``;
* ``gemma4_routing: first call ran <forward> (platform <p>, <T> tokens, <E> experts, top-<K>)``
  where the op runs as Python per call (eager, or inside vLLM's fused-MoE op);
* ``gemma4_fused_router: <N> of <M> router(s) fused (custom_ops <on|off>, <as asked|by
  default>)`` per process that built the model: how many Gemma4 routers run the opt-in
  fused router op (``+gemma4_fused_router``), the rest vLLM's own router forward; "as
  asked" where ``custom_ops`` names the op, "by default" where its policy table decided;
* ``gemma4_fused_router: +gemma4_fused_router is on as asked, but on <platform> with vLLM
  <version> it measured slower than the router it replaces (<evidence>)`` a warning, once per
  process, when ``+gemma4_fused_router`` is set where the fused-router policy
  (``integration.op_policy``) says it loses;
* ``gemma4_gate_tier: <N> of <M> gate(s) pick their GEMM tier per call (custom_ops
  <on|off>, <as asked|by default>; <E> with a token-count tier here)`` per process that
  built the model: how many Gemma4 gates run through the ``gemma4_gate_tier`` op
  (``integration.gate_tier``), and whether ``custom_ops`` or the policy table decided;
* ``gemma4_gate_tier: could not compile ll_bf16_gemm for K=<H>, N=<E> ahead of use ...``
  a warning, once per gate shape, when the kernels could not be warmed at construction;
* ``gemma4_routing: compiled ahead of serving for T <= <M> (<N> warm-up calls, <s> s)``
  (and the same with ``gemma4_fused_router:``) once per process and shape, after the
  op's Triton kernels were compiled at model construction for every launch up to vLLM's
  ``max_num_batched_tokens``; ``<op>: could not compile ahead of serving (...)`` a warning
  instead when that failed;
* ``vllm-gemma4-router <version>: vLLM's compile-cache key cannot include the plugin ...``
  a warning, once per process, when ``additional_config`` is not a dict;
* ``gemma4_fused_router: first hand-over claimed (<T> tokens, <E> experts, top-<K>``
  ``[, compiled graph])`` once per process, when a routing function first took
  the fused router's routing;
* ``gemma4_fused_router: logits reached the routing without the fused router's routing ...``
  once per process, when a fused layer's routing function had to route from the
  logits itself (copied or gathered logits).

Standard library only: the harnesses read logs without importing vLLM or torch.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from vllm_gemma4_router._version import __version__

# A child of vLLM's "vllm" logger, so vLLM's logging configuration prints it in
# every process (API server, engine core, workers) with the process prefix; a
# plain getLogger(__name__) would be outside that tree and print nothing.
LOGGER_NAME = "vllm.gemma4_router"
logger = logging.getLogger(LOGGER_NAME)

_PLUGIN_PREFIX = f"vllm-gemma4-router {__version__}: "
_OP_PREFIX = "gemma4_routing: "
_FUSED_PREFIX = "gemma4_fused_router: "
_GATE_TIER_PREFIX = "gemma4_gate_tier: "


def install_line(layout: str) -> str:
    """The adapter's line after patching vLLM's Gemma4 module with layout ``layout``."""
    return f"{_PLUGIN_PREFIX}Gemma4 MoE routing -> gemma4_routing op ({layout})"


def unrecognised_line(module_name: str) -> str:
    """The adapter's warning when ``module_name`` has no Gemma4 layout it knows."""
    return (
        f"{_PLUGIN_PREFIX}unrecognised Gemma4 code in {module_name} (neither Gemma4Router."
        "routing_function nor a Gemma4MoE routing closure); leaving vLLM's routing unchanged"
    )


def refused_line(module_name: str, reason: str) -> str:
    """The adapter's warning when ``module_name``'s routing does what the plugin does not know."""
    return (
        f"{_PLUGIN_PREFIX}refused Gemma4 routing in {module_name}: {reason}; "
        "leaving vLLM's routing unchanged"
    )


def nothing_patched_line(reason: str) -> str:
    """The plugin's warning when this vLLM's Gemma 4 code is not where it patches it."""
    return f"{_PLUGIN_PREFIX}nothing patched: {reason}"


def overrides_in_tree_op_line(name: str, in_tree: str) -> str:
    """The plugin's line when vLLM already registers a CustomOp called ``name``."""
    return (
        f"{_PLUGIN_PREFIX}vLLM registers its own {name} CustomOp ({in_tree}); "
        "the plugin's op overrides it (register_oot)"
    )


def simulated_routing_line(variable: str, strategy: str) -> str:
    """The adapter's warning when vLLM's routing simulator replaces every custom routing."""
    return (
        f"vllm-gemma4-router: {variable}={strategy} is set, so vLLM routes every MoE layer "
        "with its routing simulator: the gemma4_routing op will not run"
    )


def dispatch_line(layers: int, forward: str, platform: str, compiled: bool) -> str:
    """The op's summary for ``layers`` (>= 1) layers that run ``forward`` on ``platform``.

    ``compiled``: the op wraps that forward in ``torch.compile`` itself.
    """
    if layers < 1:
        raise ValueError(f"layers must be >= 1 (0 layers: no_layers_line), got {layers}")
    noun = "layer" if layers == 1 else "layers"
    suffix = ", torch.compile" if compiled else ""
    return f"{_OP_PREFIX}{layers} {noun} dispatch to {forward} (platform {platform}{suffix})"


def no_layers_line(platform: str) -> str:
    """The op's summary for a model without MoE routing layers."""
    return f"{_OP_PREFIX}0 layers (this model has no MoE routing; platform {platform})"


def first_call_line(
    forward: str, platform: str, num_tokens: int, num_experts: int, topk: int
) -> str:
    """The op's line at its first Python-level call in a process."""
    return (
        f"{_OP_PREFIX}first call ran {forward} (platform {platform}, {num_tokens} tokens, "
        f"{num_experts} experts, top-{topk})"
    )


def _decided(enabled: bool, asked: bool) -> str:
    return f"custom_ops {'on' if enabled else 'off'}, {'as asked' if asked else 'by default'}"


def fused_router_line(fused: int, routers: int, enabled: bool, asked: bool = False) -> str:
    """The adapter's summary after a model build: ``fused`` of ``routers`` routers run the
    fused router op; ``enabled``: the op is on; ``asked``: ``custom_ops`` names it
    (``+``/``-gemma4_fused_router``), else the fused-router policy's default decided."""
    if not 0 <= fused <= routers:
        raise ValueError(f"need 0 <= fused <= routers, got fused={fused}, routers={routers}")
    noun = "router" if routers == 1 else "routers"
    return f"{_FUSED_PREFIX}{fused} of {routers} {noun} fused ({_decided(enabled, asked)})"


def fused_router_split_line(
    split: int, routers: int, own_tokens: tuple[tuple[int, int | None], ...]
) -> str:
    """The adapter's line after a model build where ``split`` of ``routers`` fused routers
    run their own kernels only at ``own_tokens`` (inclusive ranges, ``None``: unbounded)
    and hand the GEMM to vLLM's gate at every other token count."""
    if not 0 < split <= routers or not own_tokens:
        raise ValueError(f"need 0 < split <= routers and ranges, got {split}, {routers}")
    spans = ", ".join(
        f"{first}+" if last is None else f"{first}" if first == last else f"{first}-{last}"
        for first, last in own_tokens
    )
    noun = "router" if routers == 1 else "routers"
    verb = "runs its" if split == 1 else "run their"
    return (
        f"{_FUSED_PREFIX}{split} of {routers} fused {noun} {verb} own kernels at "
        f"T = {spans} and vLLM's gate (its own tier) at other token counts"
    )


def fused_router_loses_line(platform: str, vllm_version: str, evidence: str) -> str:
    """The warning when ``+gemma4_fused_router`` is set on a ``platform`` family and vLLM
    release where the fused-router policy measured it slower (``evidence``: its result file)."""
    where = f" ({evidence})" if evidence else ""
    return (
        f"{_FUSED_PREFIX}+gemma4_fused_router is on as asked, but on {platform} with vLLM "
        f"{vllm_version} it measured slower than the router it replaces{where}"
    )


def gate_tier_line(
    tiered: int, eligible: int, gates: int, enabled: bool, asked: bool = False
) -> str:
    """The adapter's summary after a model build: ``tiered`` of ``gates`` Gemma4 gates run
    through the ``gemma4_gate_tier`` op; ``eligible`` of them have a token-count tier in
    this release on this GPU; ``enabled``: the op is on; ``asked``: ``custom_ops`` names it
    (``+``/``-gemma4_gate_tier``), else the gate-tier policy's default decided."""
    if not 0 <= tiered <= eligible <= gates:
        raise ValueError(
            f"need 0 <= tiered <= eligible <= gates, got {tiered}, {eligible}, {gates}"
        )
    noun = "gate" if gates == 1 else "gates"
    return (
        f"{_GATE_TIER_PREFIX}{tiered} of {gates} {noun} pick their GEMM tier per call "
        f"({_decided(enabled, asked)}; {eligible} with a token-count tier here)"
    )


def gate_tier_warmup_failed_line(hidden: int, experts: int, error: str) -> str:
    """The warning when a gate shape's ``ll_bf16_gemm`` kernels could not be compiled at
    model construction (they then compile at first use)."""
    return (
        f"{_GATE_TIER_PREFIX}could not compile ll_bf16_gemm for K={hidden}, N={experts} "
        f"ahead of use ({error}); it compiles at first use"
    )


def kernels_warmed_line(op: str, calls: int, max_tokens: int, seconds: float) -> str:
    """The line after ``op``'s Triton kernels were compiled at model construction, for every
    launch the op can make up to ``max_tokens`` rows (``calls`` warm-up calls)."""
    return (
        f"{op}: compiled ahead of serving for T <= {max_tokens} "
        f"({calls} warm-up calls, {seconds:.1f} s)"
    )


def kernels_warmup_failed_line(op: str, error: str) -> str:
    """The warning when ``op``'s kernels could not be compiled at model construction
    (they then compile at first use)."""
    return f"{op}: could not compile ahead of serving ({error}); it compiles at first use"


def decode_build_unavailable_line(build: str, error: str) -> str:
    """The warning when the fused router's CUDA decode ``build`` (its macros) cannot be
    built or loaded; the Triton kernel routes the calls it would have taken."""
    return (
        f"{_FUSED_PREFIX}the CUDA decode build {build} is unavailable ({error}); "
        "the Triton kernel routes these calls"
    )


def cluster_query_failed_line(build: str, error: str) -> str:
    """The warning when the driver cannot say how many clusters of the CUDA decode
    ``build`` (its macros) run at once; its launches then take the table's tile as is."""
    return (
        f"{_FUSED_PREFIX}the driver did not say how many clusters of the CUDA decode build "
        f"{build} run at once ({error}); its launches take the table's token tiles as is"
    )


def cache_key_not_set_line(kind: str) -> str:
    """The warning when vLLM's ``additional_config`` is a ``kind``, not a dict, so the
    plugin's state cannot enter vLLM's compile-cache key."""
    return (
        f"{_PLUGIN_PREFIX}vLLM's compile-cache key cannot include the plugin "
        f"(additional_config is a {kind}); set VLLM_DISABLE_COMPILE_CACHE=1 after "
        "installing, upgrading or switching the plugin's ops"
    )


def handover_claimed_line(num_tokens: int, num_experts: int, topk: int, compiled: bool) -> str:
    """The first successful claim of the fused router's routing in a process.

    ``compiled``: claimed by the ``claimed_routing`` op inside a compiled graph.
    """
    suffix = ", compiled graph" if compiled else ""
    return (
        f"{_FUSED_PREFIX}first hand-over claimed ({num_tokens} tokens, {num_experts} experts, "
        f"top-{topk}{suffix})"
    )


def handover_missed_line(num_tokens: int, num_experts: int, topk: int) -> str:
    """The first time a fused layer's routing function had to route from the logits."""
    return (
        f"{_FUSED_PREFIX}logits reached the routing without the fused router's routing "
        f"(copied or gathered?); routed from the logits ({num_tokens} tokens, "
        f"{num_experts} experts, top-{topk})"
    )


# vLLM prefixes every line from a child process with "(Name pid=N) ".
_PROCESS_RE = re.compile(r"\((?P<proc>[^()]*?)\s*pid=(?P<pid>\d+)\)")
# Any version, and none: logs of releases before 0.1.0's version line still parse.
_PLUGIN_RE = r"vllm-gemma4-router(?: (?P<version>[^\s:]+))?: "
_ANY_LINE_RE = re.compile(
    "|".join([_PLUGIN_RE, *(re.escape(p) for p in (_OP_PREFIX, _FUSED_PREFIX, _GATE_TIER_PREFIX))])
)
_INSTALL_RE = re.compile(
    _PLUGIN_RE + r"Gemma4 MoE routing -> gemma4_routing op \((?P<layout>\w+)\)"
)
_UNRECOGNISED_RE = re.compile(_PLUGIN_RE + r"unrecognised Gemma4 code in (?P<module>\S+)")
_REFUSED_RE = re.compile(_PLUGIN_RE + r"refused Gemma4 routing in (?P<module>[^\s:]+): ")
_NOTHING_PATCHED_RE = re.compile(_PLUGIN_RE + r"nothing patched: ")
_DISPATCH_RE = re.compile(
    re.escape(_OP_PREFIX) + r"(?P<layers>\d+) layers? dispatch to (?P<forward>forward_\w+) "
    r"\(platform (?P<platform>\w+)(?P<compiled>, torch\.compile)?\)"
)
_NO_LAYERS_RE = re.compile(
    re.escape(_OP_PREFIX)
    + r"0 layers \(this model has no MoE routing; platform (?P<platform>\w+)\)"
)
_FIRST_CALL_RE = re.compile(
    re.escape(_OP_PREFIX) + r"first call ran (?P<forward>forward_\w+) \(platform (?P<platform>\w+)"
)
_FUSED_RE = re.compile(
    re.escape(_FUSED_PREFIX)
    + r"(?P<fused>\d+) of (?P<routers>\d+) routers? fused \(custom_ops (?P<state>on|off)"
    r"(?:, (?P<source>as asked|by default))?\)"
)
_LOSES_RE = re.compile(
    re.escape(_FUSED_PREFIX) + r"\+gemma4_fused_router is on as asked, but on (?P<platform>\S+) "
    r"with vLLM (?P<version>\S+) it measured slower"
)
_GATE_TIER_RE = re.compile(
    re.escape(_GATE_TIER_PREFIX)
    + r"(?P<tiered>\d+) of (?P<gates>\d+) gates? pick their GEMM tier per call "
    r"\(custom_ops (?P<state>on|off)(?:, (?P<source>as asked|by default))?; "
    r"(?P<eligible>\d+) with a token-count tier here\)"
)


def _asked(match: re.Match[str]) -> bool | None:
    source = match["source"]
    return None if source is None else source == "as asked"


_CLAIMED_RE = re.compile(
    re.escape(_FUSED_PREFIX) + r"first hand-over claimed \((?P<tokens>\d+) tokens, "
    r"(?P<experts>\d+) experts, top-(?P<topk>\d+)(?P<compiled>, compiled graph)?\)"
)
_MISSED_RE = re.compile(
    re.escape(_FUSED_PREFIX) + r"logits reached the routing without the fused router's routing"
)


@dataclass(frozen=True)
class FusedRouters:
    """One process's fused-router summary (``fused_router_line``)."""

    pid: int | None
    fused: int
    routers: int
    enabled: bool
    asked: bool | None = None  # None: a line from before the plugin said which


@dataclass(frozen=True)
class GateTiers:
    """One process's gate-tier summary (``gate_tier_line``)."""

    pid: int | None
    tiered: int
    eligible: int
    gates: int
    enabled: bool
    asked: bool | None = None  # None: a line from before the plugin said which


@dataclass(frozen=True)
class Dispatch:
    """One dispatch summary of one process.

    Attributes:
        pid, process: vLLM's process tag (``None``/``""`` for the main process).
        layers: routed MoE layers (0: the model has none).
        forward: ``forward_native``, ``forward_cuda``, ...; ``""`` when ``layers`` is 0.
        platform: vLLM's platform word (cuda, rocm, xpu, cpu, tpu, oot, unspecified).
        compiled: the op compiled that forward itself.
        text: the line without vLLM's prefix, exactly as the op formatted it.
    """

    pid: int | None
    process: str
    layers: int
    forward: str
    platform: str
    compiled: bool
    text: str


@dataclass
class PluginLog:
    """What a (server) log says about the plugin, from its lines only.

    Attributes:
        lines: every plugin line, whole (with vLLM's prefix), in order.
        layouts: one Gemma4 layout per process that patched vLLM's module.
        unrecognised: modules whose Gemma4 code the plugin did not recognise.
        refused: modules whose Gemma4 routing the plugin refused to replace.
        nothing_patched: lines saying this vLLM's Gemma 4 code is not where it patches.
        versions: the package version each patch/unrecognised line names
            (``""`` for lines of versions that did not say).
        dispatches: the op's dispatch summaries, per process and forward.
        first_calls: the forward of each process's first Python-level call.
        fused_routers: the fused-router summaries, one per process that built the model.
        claims: per process whose routing first claimed the fused router's
            routing, True if that claim ran inside a compiled graph.
        claim_misses: processes where a fused layer routed from the logits itself.
        fused_router_loses: the platform family of each warning that ``+gemma4_fused_router``
            is on where the fused-router policy measured it slower.
        gate_tiers: the gate-tier summaries, one per process that built the model.
    """

    lines: list[str] = field(default_factory=list)
    layouts: list[str] = field(default_factory=list)
    unrecognised: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    nothing_patched: int = 0
    versions: list[str] = field(default_factory=list)
    dispatches: list[Dispatch] = field(default_factory=list)
    first_calls: list[str] = field(default_factory=list)
    fused_routers: list[FusedRouters] = field(default_factory=list)
    claims: list[bool] = field(default_factory=list)
    claim_misses: int = 0
    fused_router_loses: list[str] = field(default_factory=list)
    gate_tiers: list[GateTiers] = field(default_factory=list)

    @property
    def gate_tier_used(self) -> bool:
        """True if some process built gates that pick their GEMM tier per call."""
        return any(g.tiered > 0 for g in self.gate_tiers)

    @property
    def fused_router_used(self) -> bool:
        """True if some process built routers that run the fused router op."""
        return any(f.fused > 0 for f in self.fused_routers)

    @property
    def patched(self) -> bool:
        """True if some process patched vLLM's Gemma4 routing."""
        return bool(self.layouts)

    @property
    def op_used(self) -> bool:
        """True if at least one process built MoE layers routed by ``gemma4_routing``."""
        return any(d.layers > 0 for d in self.dispatches)

    @property
    def forwards(self) -> list[str]:
        """The distinct forwards the processes dispatched to, sorted."""
        return sorted({d.forward for d in self.dispatches if d.layers > 0})

    @property
    def processes(self) -> int:
        """How many processes built routed layers (one per tensor-parallel worker)."""
        return len({d.pid for d in self.dispatches if d.layers > 0})

    def dispatch_texts(self) -> list[str]:
        """The distinct dispatch summaries, without vLLM's prefix, in first-seen order.

        Every process that builds the model logs them (API server, engine,
        each worker), hence the deduplication.
        """
        return list(dict.fromkeys(d.text for d in self.dispatches))


def parse_log(log_text: str) -> PluginLog:
    """The plugin's lines of ``log_text`` (a server log, or any text), parsed."""
    parsed = PluginLog()
    for line in log_text.splitlines():
        if not _ANY_LINE_RE.search(line):
            continue
        parsed.lines.append(line)
        process = _PROCESS_RE.search(line)
        pid = int(process["pid"]) if process else None
        name = process["proc"] if process else ""
        if match := _DISPATCH_RE.search(line):
            parsed.dispatches.append(
                Dispatch(
                    pid=pid,
                    process=name,
                    layers=int(match["layers"]),
                    forward=match["forward"],
                    platform=match["platform"],
                    compiled=bool(match["compiled"]),
                    text=match[0],
                )
            )
        elif match := _NO_LAYERS_RE.search(line):
            parsed.dispatches.append(
                Dispatch(pid, name, 0, "", match["platform"], compiled=False, text=match[0])
            )
        elif match := _FUSED_RE.search(line):
            fused, routers = int(match["fused"]), int(match["routers"])
            parsed.fused_routers.append(
                FusedRouters(pid, fused, routers, match["state"] == "on", _asked(match))
            )
        elif match := _GATE_TIER_RE.search(line):
            counts = (int(match[k]) for k in ("tiered", "eligible", "gates"))
            parsed.gate_tiers.append(
                GateTiers(pid, *counts, enabled=match["state"] == "on", asked=_asked(match))
            )
        elif match := _CLAIMED_RE.search(line):
            parsed.claims.append(bool(match["compiled"]))
        elif _MISSED_RE.search(line):
            parsed.claim_misses += 1
        elif match := _LOSES_RE.search(line):
            parsed.fused_router_loses.append(match["platform"])
        elif match := _FIRST_CALL_RE.search(line):
            parsed.first_calls.append(match["forward"])
        elif match := _INSTALL_RE.search(line):
            parsed.layouts.append(match["layout"])
            parsed.versions.append(match["version"] or "")
        elif match := _UNRECOGNISED_RE.search(line):
            parsed.unrecognised.append(match["module"])
            parsed.versions.append(match["version"] or "")
        elif match := _REFUSED_RE.search(line):
            parsed.refused.append(match["module"])
            parsed.versions.append(match["version"] or "")
        elif _NOTHING_PATCHED_RE.search(line):
            parsed.nothing_patched += 1
    return parsed
