"""End to end: real vLLM OpenAI servers on the tiny Gemma 4 MoE, with and without the plugin.

The module runs the demo's own code (``demo.run``) once: a server with the
plugin, then (after it stopped, never both at once) one with vLLM's in-tree
routing (``VLLM_PLUGINS=""``), the same greedy prompts to both. Every test reads
that one outcome. The tensor-parallel test starts a third server, the fused
router tests a fourth (the plugin with ``+gemma4_fused_router``).
"""

import dataclasses
import os

import pytest

from vllm_gemma4_router.harness import demo
from vllm_gemma4_router.harness.tiny_model import build_tiny_model

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    lines: list[str] = []
    result = demo.run(
        max_tokens=MAX_TOKENS, log_dir=tmp_path_factory.mktemp("e2e-logs"), out=lines.append
    )
    print("\n".join(lines))  # shown by pytest on failure
    return result, lines


def test_at_least_eight_prompts_of_mixed_lengths():
    lengths = sorted(len(p.encode()) for p in demo.DEFAULT_PROMPTS)
    assert len(lengths) >= 8 and lengths[0] <= 2 and lengths[-1] >= 60


def test_greedy_completions_are_identical_with_and_without_the_plugin(outcome):
    result, _ = outcome
    assert result.with_plugin.completions == result.in_tree.completions
    assert len(result.with_plugin.completions) == len(demo.DEFAULT_PROMPTS)


def test_completions_are_full_length_and_prompt_dependent(outcome):
    result, _ = outcome
    completions = result.with_plugin.completions
    # One printable byte per token and no early <eos>: the tiny model's design.
    assert all(len(text) == MAX_TOKENS for text in completions), completions
    assert len(set(completions)) == len(completions)


def test_plugin_server_log_shows_gemma4_routing_served_the_routing(outcome):
    result, _ = outcome
    evidence = result.with_plugin.evidence
    assert evidence.layouts == ["router_method"]  # vLLM 0.32's Gemma4Router
    assert evidence.op_used and evidence.processes == 1
    [dispatch] = evidence.dispatches
    assert (dispatch.layers, dispatch.forward, dispatch.platform) == (4, "forward_native", "cpu")
    assert dispatch.process.startswith("Worker")  # the process that runs the model


def test_in_tree_server_log_shows_no_trace_of_the_plugin(outcome):
    result, _ = outcome
    assert result.in_tree.evidence.lines == []
    assert "Resolved architecture: Gemma4ForCausalLM" in result.in_tree.log_text
    assert "gemma4_router" not in result.in_tree.log_text


def test_demo_reports_pass(outcome):
    result, lines = outcome
    assert result.passed and result.verdict.reasons == []
    assert lines[-1] == "PASS"
    n = len(demo.DEFAULT_PROMPTS)
    assert f"{n}/{n} greedy completions identical" in lines
    served = [line for line in lines if line.startswith("routing served by: ")]
    assert served == [
        "routing served by: forward_native = torch reference (torch.compile) on cpu: "
        "4 MoE layers x 1 worker process(es)"
    ]


def test_demo_fails_on_a_different_completion_or_a_missing_op(outcome):
    result, _ = outcome
    changed = dataclasses.replace(
        result.in_tree, completions=["?", *result.in_tree.completions[1:]]
    )
    verdict = demo.judge(result.with_plugin, changed, gpu=False)
    assert verdict.identical[0] is False and all(verdict.identical[1:])
    assert verdict.reasons == [f"1 of {len(verdict.identical)} completions differ"]
    lines: list[str] = []
    demo.report(result.prompts, result.with_plugin, changed, verdict, out=lines.append)
    assert lines[-1] == "FAIL"

    # The in-tree run posing as the plugin run: same text, but no op in its log.
    verdict = demo.judge(result.in_tree, result.in_tree, gpu=False)
    assert verdict.reasons == ["the plugin server's log shows no layer routed by gemma4_routing"]
    # The plugin run judged against a GPU expectation: wrong forward.
    verdict = demo.judge(result.with_plugin, result.in_tree, gpu=True)
    assert verdict.reasons == ["expected a Triton forward, the log says ['forward_native']"]


def _cpu_halves() -> str:
    """VLLM_CPU_OMP_THREADS_BIND for two workers: this process's CPUs split in two."""
    cpus = sorted(os.sched_getaffinity(0))
    half = len(cpus) // 2
    return "|".join(",".join(map(str, part)) for part in (cpus[:half], cpus[half:]))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="tensor parallel 2 needs 2 CPUs")
def test_tensor_parallel_2_routes_through_the_op_in_both_workers(outcome, tmp_path):
    # vLLM's automatic CPU binding gives each worker its own NUMA node and
    # refuses TP=2 on a one-node machine ("Not enough allowed NUMA nodes to
    # bind threads of 2 local CPUWorkers"), so the CPUs are split by hand.
    result, _ = outcome
    arm = demo.run_arm(
        build_tiny_model(),
        plugin=True,
        prompts=demo.DEFAULT_PROMPTS,
        max_tokens=MAX_TOKENS,
        server_args=[*demo.default_server_args(gpu=False), "--tensor-parallel-size", "2"],
        env={**demo.default_server_env(gpu=False), "VLLM_CPU_OMP_THREADS_BIND": _cpu_halves()},
        log_path=tmp_path / "server-tp2.log",
        out=print,
    )
    evidence = arm.evidence
    assert evidence.processes == 2
    assert sorted(d.process for d in evidence.dispatches) == ["Worker_TP0", "Worker_TP1"]
    assert all((d.layers, d.forward) == (4, "forward_native") for d in evidence.dispatches)
    assert evidence.layouts == ["router_method", "router_method"]
    # Same text as one worker without the plugin: the sharded attention and
    # experts sum in another order, which in fp32 has not flipped a token here.
    assert arm.completions == result.in_tree.completions


@pytest.fixture(scope="module")
def fused_arm(outcome, tmp_path_factory):
    """A third server: the plugin with the opt-in fused router, fp32 (the demo's CPU default)."""
    return demo.run_arm(
        build_tiny_model(),
        plugin=True,
        prompts=demo.DEFAULT_PROMPTS,
        max_tokens=MAX_TOKENS,
        server_args=[*demo.default_server_args(gpu=False), *demo.fused_router_args()],
        env=demo.default_server_env(gpu=False),
        log_path=tmp_path_factory.mktemp("e2e-fused") / "server-fused.log",
        out=print,
    )


def test_default_plugin_server_keeps_vllms_router(outcome):
    result, _ = outcome
    evidence = result.with_plugin.evidence
    assert [(f.fused, f.routers, f.enabled, f.asked) for f in evidence.fused_routers] == [
        (0, 4, False, False)  # off by the policy's default, not by custom_ops
    ]
    assert evidence.claims == [] and evidence.claim_misses == 0


def test_fused_router_gives_identical_greedy_text_in_fp32(outcome, fused_arm):
    result, _ = outcome
    assert demo.default_server_args(gpu=False)[-2:] == ["--dtype", "float32"]
    assert fused_arm.completions == result.in_tree.completions


def test_fused_router_hand_over_is_claimed_inside_the_compiled_graph(outcome, fused_arm):
    # vLLM compiles the model on the CPU and Dynamo traces through its fused
    # MoE, so the claim is the claimed_routing op inside the compiled graph:
    # it logs its first claim there and would log any routing from the logits.
    result, _ = outcome
    evidence = fused_arm.evidence
    assert [(f.fused, f.routers, f.enabled, f.asked) for f in evidence.fused_routers] == [
        (4, 4, True, True)
    ]
    assert True in evidence.claims, evidence.lines
    assert evidence.claim_misses == 0, evidence.lines
    [dispatch] = evidence.dispatches
    assert (dispatch.layers, dispatch.forward) == (4, "forward_native")
    verdict = demo.judge(fused_arm, result.in_tree, gpu=False, fused_router=True)
    assert verdict.passed, verdict.reasons
    # The default plugin server is no fused-router run.
    assert demo.fused_router_reasons(result.with_plugin.evidence) != []
