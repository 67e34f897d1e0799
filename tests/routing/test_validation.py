"""Every bad input raises the documented error, naming the argument, before any launch."""

import pytest
import torch

import vllm_gemma4_router.routing.launcher as routing_launcher
from vllm_gemma4_router import gemma4_routing_reference, gemma4_routing_triton

ROUTERS = [gemma4_routing_reference, gemma4_routing_triton]
E = 16


def _logits():
    return torch.randn(4, E)


BAD_CALLS = [
    # (description, args, kwargs, error, message fragment)
    ("logits not a tensor", ([[1.0] * E], 2, None), TypeError, "gating_output"),
    ("logits 1-D", (torch.randn(E), 2, None), ValueError, "gating_output must be 2-D"),
    ("logits 3-D", (torch.randn(2, 3, E), 2, None), ValueError, "gating_output must be 2-D"),
    ("logits int", (torch.randint(0, 5, (4, E)), 2, None), TypeError, "torch.int64"),
    ("logits float64", (torch.randn(4, E, dtype=torch.float64), 2, None), TypeError, "float64"),
    ("logits no experts", (torch.randn(4, 0), 1, None), ValueError, "E=0"),
    ("topk zero", (_logits(), 0, None), ValueError, "topk=0"),
    ("topk above E", (_logits(), E + 1, None), ValueError, f"topk={E + 1}"),
    ("topk float", (_logits(), 2.0, None), TypeError, "topk must be an int"),
    ("topk bool", (_logits(), True, None), TypeError, "topk must be an int"),
    ("scale not a tensor", (_logits(), 2, [1.0] * E), TypeError, "per_expert_scale"),
    ("scale wrong length", (_logits(), 2, torch.ones(E + 1)), ValueError, f"({E},)"),
    ("scale 2-D", (_logits(), 2, torch.ones(1, E)), ValueError, "per_expert_scale"),
    ("scale int", (_logits(), 2, torch.ones(E, dtype=torch.int32)), TypeError, "int32"),
    ("scale other device", (_logits(), 2, torch.ones(E, device="meta")), ValueError, "meta"),
]


@pytest.mark.parametrize("router", ROUTERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("what", "args", "error", "fragment"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS]
)
def test_bad_inputs_raise_before_launch(router, what, args, error, fragment, monkeypatch):
    monkeypatch.setattr(routing_launcher, "gemma4_routing_kernel", None)  # a launch would fail
    with pytest.raises(error, match=None) as info:
        router(*args)
    assert fragment in str(info.value), f"{what}: {info.value}"


BAD_OUTPUTS = [
    ("topk_weights", torch.empty(4, 3), ValueError, "topk_weights must have shape (4, 2)"),
    ("topk_weights", torch.empty(4, 2, dtype=torch.float16), TypeError, "torch.float16"),
    ("topk_weights", "nope", TypeError, "topk_weights"),
    ("topk_weights", torch.empty(4, 2, device="meta"), ValueError, "meta"),
    ("topk_ids", torch.empty(4, 2, dtype=torch.int64), TypeError, "torch.int64"),
    ("topk_ids", torch.empty(2, 2, dtype=torch.int32), ValueError, "topk_ids must have shape"),
]


@pytest.mark.parametrize(("name", "out", "error", "fragment"), BAD_OUTPUTS)
def test_bad_preallocated_outputs_raise(name, out, error, fragment, monkeypatch):
    monkeypatch.setattr(routing_launcher, "gemma4_routing_kernel", None)
    with pytest.raises(error) as info:
        gemma4_routing_triton(_logits(), 2, None, **{name: out})
    assert fragment in str(info.value)


def test_too_many_experts_for_the_kernel_raises(monkeypatch):
    monkeypatch.setattr(routing_launcher, "gemma4_routing_kernel", None)
    with pytest.raises(ValueError, match="E=4097"):
        gemma4_routing_triton(torch.randn(2, 4097), 2, None)


def test_cpu_tensor_without_interpreter_raises(monkeypatch):
    monkeypatch.setattr(routing_launcher, "_INTERPRETED", False)
    monkeypatch.setattr(routing_launcher, "gemma4_routing_kernel", None)
    with pytest.raises(ValueError, match="CPU tensor"):
        gemma4_routing_triton(_logits(), 2, None)
