"""GPU checks of the padding mask (``is_padding``): read on the device, so a CUDA graph
captured with one mask and replayed after its buffer is rewritten in place routes by the
new mask. The CPU suite covers the same contract under the interpreter
(tests/routing/test_padding_mask.py)."""

import pytest
import torch
from oracle import assert_ids_valid, assert_matches_oracle

from vllm_gemma4_router import gemma4_routing_reference, gemma4_routing_triton

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU"),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _check(weights, ids, logits, topk, scale, mask, unmasked):
    """Padding rows -1 / 0.0; the others the unmasked eager call's bits and the oracle's."""
    weights, ids, mask = weights.cpu(), ids.cpu(), mask.cpu().bool()
    assert bool((ids[mask] == -1).all()) and bool((weights[mask] == 0.0).all())
    keep = ~mask
    assert torch.equal(ids[keep], unmasked[1].cpu()[keep])
    assert torch.equal(weights[keep], unmasked[0].cpu()[keep])
    assert_ids_valid(ids[keep], logits.shape[1])
    assert_matches_oracle(weights[keep], ids[keep], logits.cpu()[keep], topk, scale.cpu())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", [1, 7, 512, 4097])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8])
def test_gpu_cuda_graph_replays_a_rewritten_mask(dtype, num_tokens, mask_dtype, gen):
    logits = (torch.randn(num_tokens, 128, generator=gen) * 2).to(dtype).cuda()
    scale = (torch.rand(128, generator=gen) + 0.5).cuda()
    weights = torch.empty(num_tokens, 8, device="cuda")
    ids = torch.empty(num_tokens, 8, device="cuda", dtype=torch.int32)
    mask = torch.ones(num_tokens, dtype=mask_dtype, device="cuda")  # captured: all padding
    kwargs = dict(topk_weights=weights, topk_ids=ids, is_padding=mask)
    gemma4_routing_triton(logits, 8, scale, **kwargs)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gemma4_routing_triton(logits, 8, scale, **kwargs)
    weights.fill_(float("nan"))
    ids.fill_(7)
    graph.replay()
    _check(weights, ids, logits, 8, scale, mask, gemma4_routing_triton(logits, 8, scale))
    for _ in range(3):
        new_mask = torch.rand(num_tokens, generator=gen) < 0.5
        new_mask[0] = num_tokens > 1  # a real row 0 unless it is the only row
        mask.copy_(new_mask.to(mask_dtype))  # same buffer, new values
        logits.copy_((torch.randn(num_tokens, 128, generator=gen) * 2).to(dtype))
        weights.fill_(float("nan"))
        ids.fill_(7)
        graph.replay()
        unmasked = gemma4_routing_triton(logits, 8, scale)
        _check(weights, ids, logits, 8, scale, new_mask, unmasked)
        ref_w, ref_ids = gemma4_routing_reference(logits, 8, scale, is_padding=mask)
        assert torch.equal(ids, ref_ids)
        torch.testing.assert_close(weights, ref_w, rtol=2e-6, atol=1e-7)


def test_gpu_masked_and_unmasked_launches_share_no_cached_kernel(gen):
    # The cached launch path keys the mask: alternating calls with and without one (and
    # a mask 1 byte off 16-byte alignment) each route exactly as they should.
    logits = torch.randn(4097, 128, generator=gen).to(torch.bfloat16).cuda()
    scale = (torch.rand(128, generator=gen) + 0.5).cuda()
    storage = (torch.rand(4098, generator=gen) < 0.5).cuda()
    unmasked = gemma4_routing_triton(logits, 8, scale)
    for count in (1, 5, 900, 4097):
        part = logits[:count]
        plain = gemma4_routing_triton(part, 8, scale)
        assert torch.equal(plain[1], unmasked[1][:count])
        for offset in (0, 1):
            mask = storage[offset : offset + count]  # offset 1: not 16-byte aligned
            for _ in range(2):  # the second call: a cache hit
                weights, ids = gemma4_routing_triton(part, 8, scale, is_padding=mask)
                _check(weights, ids, part, 8, scale, mask, plain)
                again = gemma4_routing_triton(part, 8, scale)
                assert torch.equal(again[1], plain[1]) and torch.equal(again[0], plain[0])
