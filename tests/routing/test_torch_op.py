"""The torch.library registration: fullgraph torch.compile and fake shapes."""

import pytest
import torch
from oracle import assert_matches_oracle

from vllm_gemma4_router.routing import torch_library as routing_library  # noqa: F401  (registers the op)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _route_and_use(logits, scale):
    weights, ids = torch.ops.vllm_gemma4_router.routing(logits * 2.0, 8, scale)
    return weights * 3.0, ids + 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fullgraph_compile_traces_the_op_and_matches_eager(dtype, gen):
    torch._dynamo.reset()
    compiled = torch.compile(_route_and_use, fullgraph=True, backend="aot_eager", dynamic=True)
    scale = (torch.rand(128, generator=gen) + 0.5).to(DEVICE)
    for num_tokens in (5, 17):
        logits = torch.randn(num_tokens, 128, generator=gen).to(dtype).to(DEVICE)
        got_w, got_ids = compiled(logits, scale)
        want_w, want_ids = _route_and_use(logits, scale)
        assert torch.equal(got_ids, want_ids) and torch.equal(got_w, want_w)
        assert_matches_oracle(
            got_w.cpu() / 3.0, got_ids.cpu() - 1, logits.cpu() * 2.0, 8, scale.cpu()
        )


def test_fake_impl_gives_shapes_and_dtypes_and_checks_inputs():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        logits = torch.empty(11, 64)
        weights, ids = torch.ops.vllm_gemma4_router.routing(logits, 4, torch.empty(64))
        assert weights.shape == (11, 4) and weights.dtype == torch.float32
        assert ids.shape == (11, 4) and ids.dtype == torch.int32
        with pytest.raises(ValueError, match="topk"):
            torch.ops.vllm_gemma4_router.routing(logits, 65, None)


def test_opcheck(gen):
    logits = torch.randn(6, 32, generator=gen).to(DEVICE)
    scale = (torch.rand(32, generator=gen) + 0.5).to(DEVICE)
    torch.library.opcheck(
        torch.ops.vllm_gemma4_router.routing.default,
        (logits, 4, scale),
        test_utils=("test_schema", "test_faketensor"),
    )
