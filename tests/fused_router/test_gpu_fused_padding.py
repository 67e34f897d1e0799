"""GPU check of vLLM's padding mask in the fused router op under CUDA graphs: the op
reads the mask from the padding source at capture, its kernels read the mask's buffer
on the device at each replay (no host sync), so a graph captured with one mask and
replayed after the buffer was rewritten gives the new mask's routing. T=512 takes the
GEMM path (``GEMM_PATH_TOKENS``), the others the fused kernel."""

import pytest
import torch
from fused_oracle import assert_fused_contract, router_inputs

from vllm_gemma4_router.fused_router import (
    handover,
    torch_library,  # noqa: F401 (registers the op)
)
from vllm_gemma4_router.routing.padding import set_padding_source

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU"),
]
EPS = 1e-6
HIDDEN, EXPERTS, TOPK = 2816, 128, 8


@pytest.fixture(autouse=True)
def _no_padding_source(fresh_padding_state):
    """Every test starts and ends without a padding source (conftest)."""


def _op(h, s, w, pes):
    return torch.ops.vllm_gemma4_router.fused_router(h, s, w, pes, EPS, TOPK)


def _check(packed, plain, is_padding):
    """``packed``'s routing: ``plain``'s with ``is_padding``'s rows as ids -1, weights 0."""
    t = is_padding.shape[0]
    logits, weights, ids = handover.unpack(packed, t, EXPERTS, TOPK)
    pad = is_padding.bool()
    assert torch.equal(logits, plain[0]), "padding changed the logits"
    assert torch.equal(weights[~pad], plain[1][~pad]) and torch.equal(ids[~pad], plain[2][~pad])
    assert bool((ids[pad] == -1).all()) and bool((weights[pad] == 0).all())


@pytest.mark.parametrize("num_tokens", [1, 16, 64, 512])
def test_gpu_op_graph_replays_a_rewritten_mask(num_tokens, gen):
    h, s, w, pes = router_inputs(num_tokens, HIDDEN, EXPERTS, torch.bfloat16, gen, device="cuda")
    eager = handover.unpack(_op(h, s, w, pes), num_tokens, EXPERTS, TOPK)
    assert_fused_contract(*eager, h, s, w, pes, EPS, TOPK)
    # The unmasked call as a graph too: the GEMM path's cuBLAS call may pick another
    # algorithm under capture than eagerly, so "bit-identical" compares graph to graph.
    unmasked_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(unmasked_graph):
        unmasked = _op(h, s, w, pes)
    unmasked_graph.replay()
    torch.cuda.synchronize()
    plain = tuple(t.clone() for t in handover.unpack(unmasked, num_tokens, EXPERTS, TOPK))
    assert_fused_contract(*plain, h, s, w, pes, EPS, TOPK)
    buffer = torch.ones(1024, dtype=torch.bool, device="cuda")  # every row padding
    set_padding_source(lambda t: buffer[:t])
    _op(h, s, w, pes)  # compile the masked kernels outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        packed = _op(h, s, w, pes)
    graph.replay()
    torch.cuda.synchronize()
    _check(packed, plain, buffer[:num_tokens])
    mixed = torch.rand(num_tokens, generator=gen) < 0.5
    mixed[0] = False  # at least one real row
    mixed[-1] = num_tokens > 1  # and one padding row where there are two rows
    for mask in (mixed, ~mixed, torch.zeros(num_tokens, dtype=torch.bool)):
        buffer[:num_tokens].copy_(mask)  # in place: the captured pointer
        graph.replay()
        torch.cuda.synchronize()
        _check(packed, plain, mask.cuda())
