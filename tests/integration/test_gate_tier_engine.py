"""Compiled Gemma 4 reaches GateLinear's low-latency tier only through ``gemma4_gate_tier``.

vLLM's real CPU engine (0.32.0: its ``GateLinear``, ``support_torch_compile``, AOT
compile cache) serves the tiny Gemma 4 in bf16, ``max_num_batched_tokens`` 512,
two prompts, 6 tokens each (5 decode steps at M = 2, 4 MoE layers). Tier 1
(``ll_bf16_gemm``, M <= 16: Hopper/Blackwell only) is forced eligible and
replaced by a counting stand-in (tests/scripts/gate_tier_engine.py).

* eager (``enforce_eager``): tier 1 at every decode step, 4 layers x 5 steps;
* compiled without the plugin: never (traced at M = 512, the branch frozen), with
  AOT compile and with ``VLLM_USE_AOT_COMPILE=0``;
* compiled with ``+gemma4_gate_tier``: exactly as eager, both compile modes;
* a compile cache written without the plugin, then the plugin on by default: vLLM
  looks for its AOT artifact under another key than the plugin-less run saved (the
  plugin's state is in it), and reaches the tier as eager does; the same run with
  that keying disabled looks up the plugin-less artifact itself (the hazard). On
  this CPU stack (vLLM 0.32, torch 2.13) vLLM's AOT load then fails for a reason
  of its own ("'function' object has no attribute 'finalize_loading'") and it
  recompiles, so the test shows the key collision, not a stale run.

Each run is its own process with its own ``VLLM_CACHE_ROOT`` (the two cache runs
share the plugin-less run's). "Without the plugin" is its entry point made a
no-op, as if not installed, with the environment unchanged. About 1.5 min a run
on two cores.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from vllm_gemma4_router.harness.tiny_model import build_tiny_model
from vllm_gemma4_router.log_contract import PluginLog, parse_log

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gate_tier_engine.py"
DECODE_TOKENS, LAYERS, PROMPTS = 5, 4, 2
EAGER_CALLS = {PROMPTS: DECODE_TOKENS * LAYERS}
AOT_SAVED = re.compile(r"saved AOT compiled function to (\S+)")
# vLLM's two outcomes of finding an artifact under its key: loaded, or a failed load.
AOT_LOOKED_UP = re.compile(
    r"(?:Directly load AOT compilation from path |due to a load failure from )([^\s,]+)"
)


@dataclass(frozen=True)
class Run:
    tier1_calls: dict[int, int]
    warmups: list
    log: PluginLog
    text: str


class Engine:
    """Runs the script once per name, in the order the tests ask for them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.model = build_tiny_model()
        self.runs: dict[str, Run] = {}

    def run(
        self,
        name: str,
        *args: str,
        plugin: bool = True,
        aot: bool = True,
        cache: str | None = None,
    ) -> Run:
        if name in self.runs:
            return self.runs[name]
        out = self.root / f"{name}.json"
        env = {
            **os.environ,
            "VLLM_CACHE_ROOT": str(self.root / "cache" / (cache or name)),
            "VLLM_USE_AOT_COMPILE": "1" if aot else "0",
        }
        for variable in ("VLLM_DISABLE_COMPILE_CACHE", "VLLM_PLUGINS"):
            env.pop(variable, None)  # both would change vLLM's cache key, or disable it
        if not plugin:
            args = (*args, "--no-plugin")
        done = subprocess.run(
            [sys.executable, str(SCRIPT), str(self.model), str(out), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        text = done.stdout + done.stderr
        assert done.returncode == 0, text[-4000:]
        data = json.loads(out.read_text())
        calls = {int(m): n for m, n in data["tier1_calls"].items()}
        self.runs[name] = Run(calls, data["warmups"], parse_log(text), text)
        return self.runs[name]


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    return Engine(tmp_path_factory.mktemp("gate-tier-engine"))


def test_eager_reaches_tier_one_at_every_decode_step(engine):
    run = engine.run("eager", "--eager", plugin=False)
    assert run.tier1_calls == EAGER_CALLS
    assert not run.log.patched


@pytest.mark.parametrize("aot", [True, False], ids=["aot", "no-aot"])
def test_compiled_without_the_plugin_never_reaches_it(engine, aot):
    run = engine.run(f"in-tree-{aot}", plugin=False, aot=aot, cache="shared" if aot else None)
    assert run.tier1_calls == {}
    assert not run.log.patched


@pytest.mark.parametrize("aot", [True, False], ids=["aot", "no-aot"])
def test_compiled_with_the_op_reaches_it_as_eager_does(engine, aot):
    run = engine.run(f"plugin-{aot}", "--custom-op", "+gemma4_gate_tier", aot=aot)
    assert run.tier1_calls == EAGER_CALLS
    [summary] = run.log.gate_tiers
    assert (summary.tiered, summary.eligible, summary.gates, summary.enabled) == (4, 4, 4, True)
    assert summary.asked is True  # custom_ops named it: the log says "as asked"
    # The gate's kernels (K = hidden 256, N = 128 experts) warmed once, for M = 1..16.
    assert run.warmups == [[256, 128, list(range(1, 17))]]


def _plugin_less_artifact(engine) -> str:
    in_tree = engine.run("in-tree-True", plugin=False, aot=True, cache="shared")
    [saved] = AOT_SAVED.findall(in_tree.text)
    return saved


def test_a_cache_written_without_the_plugin_is_not_looked_up_with_it(engine):
    plugin_less = _plugin_less_artifact(engine)
    run = engine.run("plugin-default-on", "--default-on", aot=True, cache="shared")
    assert run.log.gate_tier_used and run.tier1_calls == EAGER_CALLS
    assert plugin_less not in AOT_LOOKED_UP.findall(run.text)
    [saved] = AOT_SAVED.findall(run.text)
    assert saved != plugin_less


def test_without_the_key_vllm_looks_up_the_plugin_less_graph(engine):
    """The hazard the key exists for: the same run with the keying disabled finds the
    plugin-less artifact under its key (a GPU stack would run that graph, gate frozen)."""
    plugin_less = _plugin_less_artifact(engine)
    run = engine.run(
        "plugin-default-on-unkeyed", "--default-on", "--no-cache-key", aot=True, cache="shared"
    )
    assert run.log.gate_tier_used
    assert AOT_LOOKED_UP.findall(run.text) == [plugin_less]
