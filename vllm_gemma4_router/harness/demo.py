"""``vllm-gemma4-router demo``: serve a Gemma 4 MoE model with and without the plugin.

Steps: build (or reuse) the tiny random Gemma 4 MoE checkpoint, or take
``--model``; start a real vLLM OpenAI server with the plugin, send the prompts
(greedy), read from the server log which forward served the routing; stop it;
do the same with vLLM's in-tree routing (``VLLM_PLUGINS=""``); print both side by
side and ``PASS`` when every completion is identical and the plugin's op
served the routing (and the in-tree server did not load it), else ``FAIL``.

The servers run one after the other, never together: a small machine has
cores for one.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..log_contract import PluginLog, parse_log
from .serving import VllmServer

Printer = Callable[[str], None]

# Mixed lengths (1 to ~70 tokens with the byte-level tiny tokenizer), so
# prefill batches rows of different sizes and decode runs several sequences.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "Hello, my name is",
    "The capital of France is",
    "a",
    "1 2 3 4 5 6 7 8",
    "def fibonacci(n):",
    "Mixture-of-experts routing picks the top-k experts per token",
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the",
    "Q: What is 12 * 7?\nA:",
    "Once upon a time",
    '{"name": "gemma", "experts": 128,',
)

TRITON_FORWARDS = frozenset({"forward_cuda", "forward_hip", "forward_xpu"})
FUSED_ROUTER_OP = "gemma4_fused_router"


def fused_router_args() -> list[str]:
    """Server arguments that turn the opt-in fused router on (``+gemma4_fused_router``)."""
    import json

    return ["--compilation-config", json.dumps({"custom_ops": [f"+{FUSED_ROUTER_OP}"]})]


def fused_router_reasons(evidence: PluginLog) -> list[str]:
    """Why a server meant to run the fused router did not (``[]``: it did).

    Every router must be fused, a routing function must have claimed the fused
    routing, and none may have routed from the logits itself.
    """
    reasons = []
    if not evidence.fused_router_used or any(f.fused != f.routers for f in evidence.fused_routers):
        summaries = [f"{f.fused} of {f.routers}" for f in evidence.fused_routers]
        reasons.append(f"not every router ran the fused router (log: {summaries})")
    if not evidence.claims:
        reasons.append("no routing function claimed the fused router's routing")
    if evidence.claim_misses:
        reasons.append(
            f"{evidence.claim_misses} process(es) routed from the logits instead of claiming"
        )
    return reasons


def describe_routing(evidence: PluginLog) -> str:
    """One line: which forward served the routing, where, in how many layers/processes."""
    if not evidence.op_used:
        return "gemma4_routing not used"
    parts = []
    for forward in evidence.forwards:
        kind = "Triton kernel" if forward in TRITON_FORWARDS else "torch reference"
        mine = [d for d in evidence.dispatches if d.forward == forward and d.layers > 0]
        platforms = ", ".join(sorted({d.platform for d in mine}))
        compiled = " (torch.compile)" if any(d.compiled for d in mine) else ""
        parts.append(
            f"{forward} = {kind}{compiled} on {platforms}: {mine[0].layers} MoE layers "
            f"x {len({d.pid for d in mine})} worker process(es)"
        )
    return "; ".join(parts)


@dataclass
class ArmResult:
    """One server run: its completions and log."""

    plugin: bool
    completions: list[str]
    log_text: str
    log_path: Path
    startup_s: float

    @property
    def evidence(self) -> PluginLog:
        """The plugin's log lines in this run's server log."""
        return parse_log(self.log_text)

    @property
    def label(self) -> str:
        """``plugin`` or ``in-tree``."""
        return "plugin" if self.plugin else "in-tree"


@dataclass
class Verdict:
    """The demo's outcome: PASS iff ``reasons`` is empty."""

    identical: list[bool]
    reasons: list[str]

    @property
    def passed(self) -> bool:
        """True when nothing went wrong."""
        return not self.reasons


def has_gpu() -> bool:
    """True if torch sees a CUDA/ROCm or XPU device (vLLM then serves on it)."""
    import torch

    if torch.cuda.is_available():
        return True
    return hasattr(torch, "xpu") and torch.xpu.is_available()


def default_server_args(gpu: bool) -> list[str]:
    """Server arguments that suit a demo: short context; float32 on CPU.

    float32 on CPU keeps the two arms' arithmetic as close as the routing
    allows, and vLLM's CPU backend runs it without extra kernels.
    """
    if gpu:
        return ["--max-model-len", "1024"]
    return ["--max-model-len", "512", "--dtype", "float32"]


def default_server_env(gpu: bool) -> dict[str, str]:
    """Environment for the servers: on CPU, 1 GiB of KV cache (plenty for 512 tokens)."""
    if gpu or "VLLM_CPU_KVCACHE_SPACE" in os.environ:
        return {}
    return {"VLLM_CPU_KVCACHE_SPACE": "1"}


def run_arm(
    model: str | os.PathLike[str],
    *,
    plugin: bool,
    prompts: Sequence[str],
    max_tokens: int,
    server_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    startup_timeout_s: float = 900.0,
    progress: bool = True,
    out: Printer = print,
) -> ArmResult:
    """Start one server (plugin on or off), complete ``prompts`` greedily, stop it."""
    server = VllmServer(
        model,
        plugin=plugin,
        extra_args=server_args,
        env=env,
        log_path=log_path,
        startup_timeout_s=startup_timeout_s,
        progress=progress,
    )
    what = "with the plugin" if plugin else 'in-tree routing (VLLM_PLUGINS="")'
    out(f"starting vLLM {what} on {server.base_url} (log: {server.log_path})")
    with server:
        out(f"  ready in {server.startup_s:.0f} s; {len(prompts)} prompts x {max_tokens} tokens")
        completions = server.complete(prompts, max_tokens=max_tokens, temperature=0.0)
        startup_s = server.startup_s or 0.0
    return ArmResult(plugin, completions, server.log_text(), server.log_path, startup_s)


def judge(
    with_plugin: ArmResult,
    in_tree: ArmResult,
    *,
    gpu: bool | None = None,
    fused_router: bool = False,
) -> Verdict:
    """Compare the two runs. ``gpu``: if given, the forward the plugin must have used;
    ``fused_router``: the plugin run must show the fused router (:func:`fused_router_reasons`).
    """
    a, b = with_plugin.completions, in_tree.completions
    identical = [i < len(a) and i < len(b) and a[i] == b[i] for i in range(max(len(a), len(b)))]
    reasons = []
    if not all(identical):
        reasons.append(f"{identical.count(False)} of {len(identical)} completions differ")
    plugin_evidence, in_tree_evidence = with_plugin.evidence, in_tree.evidence
    if not plugin_evidence.op_used:
        reasons.append("the plugin server's log shows no layer routed by gemma4_routing")
    elif gpu is not None:
        want_triton = gpu
        got_triton = all(f in TRITON_FORWARDS for f in plugin_evidence.forwards)
        if want_triton != got_triton:
            expected = "a Triton forward" if gpu else "forward_native"
            reasons.append(f"expected {expected}, the log says {plugin_evidence.forwards}")
    if fused_router:
        reasons.extend(fused_router_reasons(plugin_evidence))
    if in_tree_evidence.lines:
        reasons.append("the in-tree server loaded the plugin (VLLM_PLUGINS opt-out failed)")
    return Verdict(identical, reasons)


def _clip(text: str, width: int) -> str:
    shown = repr(text)
    return shown if len(shown) <= width else shown[: width - 3] + "..."


def report(
    prompts: Sequence[str],
    with_plugin: ArmResult,
    in_tree: ArmResult,
    verdict: Verdict,
    out: Printer = print,
) -> None:
    """Print the routing evidence, the completions side by side and PASS/FAIL."""
    for arm in (with_plugin, in_tree):
        evidence = arm.evidence
        out(f"{arm.label} server (started in {arm.startup_s:.0f} s), its gemma4_routing log lines:")
        for line in evidence.lines or ["(none)"]:
            out(f"  {line.strip()}")
    out("")
    out(f"routing served by: {describe_routing(with_plugin.evidence)}")
    out("")
    width = 30
    out(f"{'#':>2}  {'prompt':<{width}}  {'plugin':<{width}}  {'in-tree':<{width}}  same")
    rows = itertools.zip_longest(
        prompts, with_plugin.completions, in_tree.completions, verdict.identical, fillvalue=""
    )
    for i, (prompt, a, b, same) in enumerate(rows, 1):
        out(
            f"{i:>2}  {_clip(prompt, width):<{width}}  {_clip(a, width):<{width}}  "
            f"{_clip(b, width):<{width}}  {'yes' if same else 'NO'}"
        )
    out("")
    out(f"{sum(verdict.identical)}/{len(verdict.identical)} greedy completions identical")
    for reason in verdict.reasons:
        out(f"FAIL reason: {reason}")
    out("PASS" if verdict.passed else "FAIL")


@dataclass
class DemoOutcome:
    """Everything the demo saw: both runs and the verdict."""

    model: str
    prompts: list[str]
    with_plugin: ArmResult
    in_tree: ArmResult
    verdict: Verdict

    @property
    def passed(self) -> bool:
        """True on PASS."""
        return self.verdict.passed


def run(
    model: str | os.PathLike[str] | None = None,
    *,
    max_tokens: int = 24,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    extra_args: Sequence[str] = (),
    log_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    startup_timeout_s: float = 900.0,
    fused_router: bool = False,
    out: Printer = print,
) -> DemoOutcome:
    """The whole demo (``outcome.passed`` is the result).

    Args:
        model: checkpoint directory or Hugging Face id; ``None`` builds/reuses the
            tiny random Gemma 4 MoE (``tiny_model.build_tiny_model(seed=seed)``).
        max_tokens: greedy tokens per prompt.
        prompts: what to complete.
        extra_args: appended to the server command line (after the defaults, so
            they win), e.g. ``["--attention-backend", "TRITON_ATTN"]``.
        log_dir: where the two server logs go; default a new temporary directory.
        startup_timeout_s: per server.
        fused_router: the plugin server also runs the opt-in fused router
            (:func:`fused_router_args`), and PASS requires its log to show it.
        out: where the report lines go.
    """
    if model is None:
        from .tiny_model import build_tiny_model

        out("building the tiny random Gemma 4 MoE checkpoint (first run only) ...")
        model = build_tiny_model(seed=seed, progress=lambda line: out(f"  {line}"))
    gpu = has_gpu()
    server_args = [*default_server_args(gpu), *extra_args]
    env = default_server_env(gpu)
    logs = Path(log_dir or tempfile.mkdtemp(prefix="vllm-gemma4-router-demo-"))
    logs.mkdir(parents=True, exist_ok=True)
    out(f"model: {model}")
    out(f"server args: {' '.join(server_args)}" + (f"  env: {env}" if env else ""))
    arms = []
    for plugin in (True, False):
        arms.append(
            run_arm(
                model,
                plugin=plugin,
                prompts=prompts,
                max_tokens=max_tokens,
                server_args=[
                    *server_args,
                    *(fused_router_args() if plugin and fused_router else []),
                ],
                env=env,
                log_path=logs / f"server-{'plugin' if plugin else 'in-tree'}.log",
                startup_timeout_s=startup_timeout_s,
                out=out,
            )
        )
    out("")
    verdict = judge(arms[0], arms[1], gpu=gpu, fused_router=fused_router)
    report(prompts, arms[0], arms[1], verdict, out=out)
    return DemoOutcome(str(model), list(prompts), arms[0], arms[1], verdict)


def load_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a file of JSON strings, one per line (JSON keeps newlines and quotes intact)."""
    import json

    with open(path, encoding="utf-8") as lines:
        prompts = [json.loads(line) for line in lines if line.strip()]
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError(f"{path}: expected one non-empty JSON string per line")
    return prompts


def main(args) -> int:
    """Entry from ``harness/cli.py`` with parsed ``demo`` arguments; exit code 0 on PASS."""
    import shlex

    prompts = DEFAULT_PROMPTS
    if getattr(args, "prompts_file", None):
        prompts = load_prompts(args.prompts_file)
    try:
        outcome = run(
            args.model,
            prompts=prompts,
            max_tokens=args.max_tokens,
            extra_args=shlex.split(args.extra_args or ""),
            log_dir=args.log_dir,
            seed=args.seed,
            startup_timeout_s=args.startup_timeout,
            fused_router=getattr(args, "fused_router", False),
            out=lambda line: print(line, flush=True),
        )
    except Exception as err:  # a server that fails to start is a FAIL, not a traceback
        print(f"{type(err).__name__}: {err}", file=sys.stderr, flush=True)
        print("FAIL", flush=True)
        return 1
    return 0 if outcome.passed else 1
