"""log_contract: every line the plugin writes parses back to what was written.

The writers are the format functions (used by vllm_adapter and vllm_op); the
reader is ``parse_log`` (used by the demo and the A/B harnesses). The lines are
checked as vLLM prints them, behind its level/file/process prefix.
"""

from __future__ import annotations

import logging
import random
import types

import pytest

from vllm_gemma4_router import __version__, log_contract
from vllm_gemma4_router.integration import gemma4_layouts
from vllm_gemma4_router.log_contract import (
    Dispatch,
    dispatch_line,
    first_call_line,
    install_line,
    no_layers_line,
    parse_log,
    unrecognised_line,
)

FORWARDS = ("forward_native", "forward_cuda", "forward_hip", "forward_xpu")
PLATFORMS = ("cuda", "rocm", "xpu", "cpu", "tpu", "oot", "unspecified")


def _vllm_prefix(rng: random.Random, pid: int | None, process: str = "Worker_TP0") -> str:
    """What vLLM puts before a message: process tag (child processes), level, time, file:line."""
    tag = f"({process} pid={pid}) " if pid is not None else ""
    day, second, line = rng.randint(10, 30), rng.randint(10, 59), rng.randint(1, 999)
    return f"{tag}INFO 11-{day} 21:32:{second} [x.py:{line}] "


@pytest.fixture
def rng() -> random.Random:
    seed = random.SystemRandom().randrange(2**32)
    print(f"random seed {seed}")
    return random.Random(seed)


def test_dispatch_lines_round_trip(rng):
    written, text = [], []
    for _ in range(40):
        pid = rng.choice([None, rng.randint(2, 99999)])
        process = rng.choice(["Worker_TP0", "Worker_TP1", "EngineCore"]) if pid else ""
        want = Dispatch(
            pid=pid,
            process=process,
            layers=rng.randint(1, 200),
            forward=rng.choice(FORWARDS),
            platform=rng.choice(PLATFORMS),
            compiled=rng.random() < 0.5,
            text="",
        )
        line = dispatch_line(want.layers, want.forward, want.platform, want.compiled)
        written.append(Dispatch(**{**vars(want), "text": line}))
        text.append(_vllm_prefix(rng, pid, process or "x") + line)
    parsed = parse_log("\n".join(text))
    assert parsed.dispatches == written
    assert parsed.lines == text
    assert parsed.op_used and parsed.forwards == sorted({d.forward for d in written})
    assert parsed.processes == len({d.pid for d in written})
    assert parsed.dispatch_texts() == list(dict.fromkeys(d.text for d in written))


def test_singular_and_zero_layers(rng):
    platform = rng.choice(PLATFORMS)
    one = dispatch_line(1, "forward_cuda", platform, compiled=False)
    assert one == f"gemma4_routing: 1 layer dispatch to forward_cuda (platform {platform})"
    none = no_layers_line(platform)
    parsed = parse_log(f"{_vllm_prefix(rng, 3)}{one}\n{_vllm_prefix(rng, 4)}{none}")
    assert [(d.layers, d.forward, d.platform) for d in parsed.dispatches] == [
        (1, "forward_cuda", platform),
        (0, "", platform),
    ]
    assert parsed.processes == 1  # the process without MoE layers routed nothing
    assert not parse_log(none).op_used
    with pytest.raises(ValueError, match="layers"):
        dispatch_line(0, "forward_cuda", platform, compiled=False)


def test_install_unrecognised_and_first_call_round_trip(rng):
    layouts = [rng.choice(["router_method", "moe_closure"]) for _ in range(3)]
    tokens, experts, topk = rng.randint(1, 9999), rng.randint(2, 4096), rng.randint(1, 16)
    forward = rng.choice(FORWARDS)
    lines = [_vllm_prefix(rng, 10 + i) + install_line(layout) for i, layout in enumerate(layouts)]
    lines.append(_vllm_prefix(rng, 20) + first_call_line(forward, "cuda", tokens, experts, topk))
    lines.append(_vllm_prefix(rng, 21) + unrecognised_line("vllm.model_executor.models.gemma4"))
    noise = ["INFO vLLM API server started", "WARNING gemma4 MoE is fine", ""]
    parsed = parse_log("\n".join([noise[0], *lines[:2], noise[1], *lines[2:], noise[2]]))
    assert parsed.layouts == layouts and parsed.patched
    assert parsed.first_calls == [forward]
    assert parsed.unrecognised == ["vllm.model_executor.models.gemma4"]
    assert parsed.versions == [__version__] * 4  # the plugin's first line names its version
    assert parsed.lines == lines
    assert parsed.dispatches == [] and not parsed.op_used
    # Lines of releases that did not name their version still parse.
    old_line = "INFO vllm-gemma4-router: Gemma4 MoE routing -> gemma4_routing op (moe_closure)"
    old = parse_log(old_line)
    assert (old.layouts, old.versions) == (["moe_closure"], [""])
    empty = parse_log("\n".join(noise))
    assert (empty.lines, empty.patched, empty.dispatch_texts()) == ([], False, [])


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def plugin_messages():
    handler = _Collect()
    logger = log_contract.logger
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_the_adapter_writes_its_lines_through_the_contract(plugin_messages):
    known = types.ModuleType("fake_gemma4_router_layout")

    class Gemma4Router:
        def __init__(self):
            self.per_expert_scale = None

        def routing_function(self, hidden_states, gating_output, topk, renormalize):
            raise AssertionError("replaced by the plugin")

    known.Gemma4Router = Gemma4Router
    unknown = types.ModuleType("fake_gemma4_unknown_layout")
    assert gemma4_layouts.install(known) == "router_method"
    assert gemma4_layouts.install(unknown) is None
    assert plugin_messages[0].startswith(f"vllm-gemma4-router {__version__}: ")
    parsed = parse_log("\n".join(plugin_messages))
    assert parsed.layouts == ["router_method"]
    assert parsed.unrecognised == ["fake_gemma4_unknown_layout"]


def test_one_logger_under_vllms_tree():
    from vllm_gemma4_router.routing import compiled_launches

    # vLLM's logging configuration covers the "vllm" logger and its children only.
    assert log_contract.LOGGER_NAME.startswith("vllm.")
    assert gemma4_layouts.logger is log_contract.logger is compiled_launches.logger


def test_fused_router_lines_round_trip(rng):
    from vllm_gemma4_router.log_contract import (
        FusedRouters,
        fused_router_line,
        handover_claimed_line,
        handover_missed_line,
    )

    summaries = []
    for _ in range(6):
        routers = rng.randint(0, 120)
        summaries.append(
            FusedRouters(
                rng.randint(2, 99999),
                rng.randint(0, routers),
                routers,
                rng.random() < 0.5,
                rng.random() < 0.5,
            )
        )
    tokens, experts, topk = rng.randint(1, 9999), rng.randint(2, 4096), rng.randint(1, 16)
    compiled = [rng.random() < 0.5 for _ in range(3)]
    lines = [
        _vllm_prefix(rng, s.pid) + fused_router_line(s.fused, s.routers, s.enabled, s.asked)
        for s in summaries
    ]
    lines += [
        _vllm_prefix(rng, 7) + handover_claimed_line(tokens, experts, topk, c) for c in compiled
    ]
    lines += [_vllm_prefix(rng, 8) + handover_missed_line(tokens, experts, topk)] * 2
    parsed = parse_log("\n".join(["INFO unrelated", *lines]))
    assert parsed.fused_routers == summaries and parsed.lines == lines
    assert parsed.fused_router_used is any(s.fused for s in summaries)
    assert parsed.claims == compiled and parsed.claim_misses == 2
    assert (
        fused_router_line(1, 1, True)
        == "gemma4_fused_router: 1 of 1 router fused (custom_ops on, by default)"
    )
    # A line from before the plugin said who decided still parses, as "not said".
    old = parse_log("gemma4_fused_router: 2 of 30 routers fused (custom_ops on)")
    assert old.fused_routers == [FusedRouters(None, 2, 30, True, None)]
    with pytest.raises(ValueError):
        fused_router_line(3, 2, True)


def test_the_split_line_names_the_own_kernel_counts():
    from vllm_gemma4_router.log_contract import fused_router_split_line

    line = fused_router_split_line(30, 30, ((17, 64), (128, 128), (16384, None)))
    assert line == (
        "gemma4_fused_router: 30 of 30 fused routers run their own kernels at "
        "T = 17-64, 128, 16384+ and vLLM's gate (its own tier) at other token counts"
    )
    parsed = parse_log("(EngineCore pid=7) INFO " + line)
    assert parsed.lines and parsed.fused_routers == []  # not a fused-router summary
    for split, routers, ranges in ((0, 30, ((1, 2),)), (31, 30, ((1, 2),)), (1, 1, ())):
        with pytest.raises(ValueError):
            fused_router_split_line(split, routers, ranges)
