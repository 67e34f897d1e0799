"""The integration's kernel warm-up at model construction: which warm-ups a model's ops
need (one per shape and padding), run once per process, a line each, a warning on failure.
The launches themselves are GPU work (tests/routing/test_gpu_warmup.py,
tests/fused_router/test_gpu_fused_warmup.py)."""

import types

import pytest
import torch

from vllm_gemma4_router.integration import kernel_warmup
from vllm_gemma4_router.integration.fused_or_gate import OWN_TOKENS_ATTRIBUTE
from vllm_gemma4_router.integration.gemma4_layouts import (
    FUSED_PLAN_ATTRIBUTE,
    OP_ATTRIBUTE,
    PADDING_MASK_ATTRIBUTE,
    _FusedPlan,
)
from vllm_gemma4_router.log_contract import kernels_warmed_line, kernels_warmup_failed_line

META = torch.device("meta")


class _Op(torch.nn.Module):
    def __init__(self, dispatch: str) -> None:
        super().__init__()
        self.dispatch = dispatch


def _owner(num_experts: int, dispatch: str, device=META, padding: bool = False):
    owner = torch.nn.Module()
    owner.per_expert_scale = torch.nn.Parameter(torch.empty(num_experts, device=device))
    setattr(owner, OP_ATTRIBUTE, _Op(dispatch))
    if padding:
        owner.__dict__[PADDING_MASK_ATTRIBUTE] = lambda num_tokens: None
    return owner


def _router(hidden: int, num_experts: int, device=META, dtype=torch.bfloat16, gate_name=None):
    router = torch.nn.Module()
    router.scale = torch.nn.Parameter(torch.empty(hidden, device=device))
    pes = torch.empty(num_experts, device=device)
    weight = torch.empty(num_experts, hidden, device=device, dtype=dtype)
    plan = _FusedPlan(1e-6, 8, lambda: pes, weight, gate_name=gate_name)
    router.__dict__[FUSED_PLAN_ATTRIBUTE] = plan
    return router


def _model(*children, topk=8):
    model = torch.nn.Module()
    for index, child in enumerate(children):
        model.add_module(f"layer{index}", child)
    model.config = types.SimpleNamespace(top_k_experts=topk)
    return model


@pytest.fixture
def gpu_is_meta(monkeypatch):
    """Meta tensors stand in for GPU ones (no device here); nothing warmed yet."""
    monkeypatch.setattr(kernel_warmup, "_GPU_DEVICES", ("meta",))
    monkeypatch.setattr(kernel_warmup, "_warmed", set())


def test_one_routing_warmup_per_shape_and_padding(gpu_is_meta):
    model = _model(
        _owner(128, "forward_cuda"),
        _owner(128, "forward_cuda"),
        _owner(128, "forward_hip", padding=True),
        _owner(64, "forward_xpu"),
        _owner(128, "forward_native"),  # the torch reference: nothing to compile
        _owner(128, "forward_cuda", device=torch.device("cpu")),
    )
    calls = sorted(
        kernel_warmup.routing_warmups(model, 8).values(),
        key=lambda k: (k["num_experts"], k["paddings"]),
    )
    assert calls == [
        dict(num_experts=64, topk=8, device=META, scale_dtype=torch.float32, paddings=(False,)),
        dict(num_experts=128, topk=8, device=META, scale_dtype=torch.float32, paddings=(False,)),
        dict(
            num_experts=128,
            topk=8,
            device=META,
            scale_dtype=torch.float32,
            paddings=(False, True),
        ),  # fmt: skip
    ]


def test_one_fused_warmup_per_shape(gpu_is_meta):
    model = _model(
        _router(2816, 128), _router(2816, 128), _router(1024, 64, dtype=torch.float16),
        _router(2816, 128, device=torch.device("cpu")),
    )  # fmt: skip
    calls = kernel_warmup.fused_warmups(model, padding=True)
    assert sorted((k["hidden"], k["num_experts"], k["dtype"]) for k in calls.values()) == [
        (1024, 64, torch.float16),
        (2816, 128, torch.bfloat16),
    ]
    assert all(k["paddings"] == (False, True) and k["eps"] == 1e-6 for k in calls.values())
    assert all(k["topk"] == 8 and k["per_expert_scale_dtype"] == torch.float32
               for k in calls.values())  # fmt: skip
    assert not any(k["operand_tokens"] for k in calls.values())  # no router splits here


def test_a_split_router_warms_its_gate_operand_kernels_too(gpu_is_meta):
    # its own counts route the gate's operand: those kernels are built before capture
    split = _router(2816, 128, gate_name="model.layers.0.router.gemma4_fused_gate")
    split.proj = torch.nn.Module()
    split.proj.__dict__[OWN_TOKENS_ATTRIBUTE] = ((17, 64),)
    calls = kernel_warmup.fused_warmups(_model(_router(1024, 64), split), padding=False)
    by_hidden = {k["hidden"]: k["operand_tokens"] for k in calls.values()}
    assert by_hidden == {1024: (), 2816: ((17, 64),)}


def test_warm_model_kernels_runs_each_warmup_once_with_a_line(
    gpu_is_meta, monkeypatch, plugin_records
):
    from vllm_gemma4_router.fused_router import warmup as fused_warmup
    from vllm_gemma4_router.routing import warmup as routing_warmup

    seen = []

    def fake(kind):
        def warm(**kwargs):
            seen.append((kind, kwargs["max_tokens"]))
            return 7

        return warm

    monkeypatch.setattr(routing_warmup, "warm_routing", fake("routing"))
    monkeypatch.setattr(fused_warmup, "warm_fused_router", fake("fused"))
    model = _model(_owner(128, "forward_cuda"), _router(2816, 128))
    kernel_warmup.warm_model_kernels(model, 4096)
    kernel_warmup.warm_model_kernels(model, 4096)  # same process, same shapes: nothing
    assert seen == [("routing", 4096), ("fused", 4096)]
    messages = [r.getMessage() for r in plugin_records]
    assert len(messages) == 2
    assert messages[0].startswith(kernels_warmed_line("gemma4_routing", 7, 4096, 0)[:-6])
    assert messages[1].startswith(kernels_warmed_line("gemma4_fused_router", 7, 4096, 0)[:-6])


def test_a_failed_warmup_is_one_warning_and_no_error(gpu_is_meta, monkeypatch, plugin_records):
    from vllm_gemma4_router.routing import warmup as routing_warmup

    def broken(**kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(routing_warmup, "warm_routing", broken)
    kernel_warmup.warm_model_kernels(_model(_owner(128, "forward_cuda")), 64)
    assert [(r.levelname, r.getMessage()) for r in plugin_records] == [
        ("WARNING", kernels_warmup_failed_line("gemma4_routing", "RuntimeError('no compiler')"))
    ]


def test_no_warmup_without_top_k_experts(gpu_is_meta, monkeypatch):
    from vllm_gemma4_router.routing import warmup as routing_warmup

    seen = []
    monkeypatch.setattr(routing_warmup, "warm_routing", lambda **kwargs: seen.append(kwargs))
    model = _model(_owner(128, "forward_cuda"))
    model.config = types.SimpleNamespace()
    kernel_warmup.warm_model_kernels(model, 64)
    assert seen == []
    model.config.top_k_experts = 8
    kernel_warmup.warm_model_kernels(model, 64)
    assert [kwargs["num_experts"] for kwargs in seen] == [128]
