"""GPU: after the warm-up, no routing call up to its token budget compiles a kernel, and
the warm-up's launches leave the op's results unchanged."""

import pytest
import torch
from oracle import assert_matches_oracle

from vllm_gemma4_router import gemma4_routing_triton
from vllm_gemma4_router.routing.kernels.entry import gemma4_routing_kernel
from vllm_gemma4_router.routing.warmup import warm_routing

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU"),
]
MAX_TOKENS = 2100  # three of the table's buckets and a cut one


def compiled_kernels(kernel) -> int:
    """How many compiled variants Triton holds for ``kernel`` (every device)."""
    return sum(len(entry[0]) for entry in kernel.device_caches.values())


@pytest.mark.parametrize("padding", [False, True])
def test_gpu_no_call_compiles_after_the_warmup(padding, gen):
    device = torch.device("cuda")
    paddings = (False, True) if padding else (False,)
    launches = warm_routing(128, 8, max_tokens=MAX_TOKENS, device=device, paddings=paddings)
    assert launches > 0
    compiled = compiled_kernels(gemma4_routing_kernel)
    counts = [1, 2, 3, 4, 5, 15, 16, 17, 32, 100, 1024, 1025, 1040, 2047, 2048, 2049, 2064]
    counts += torch.randint(1, MAX_TOKENS + 1, (8,), generator=gen).tolist()
    for num_tokens in counts:
        logits = (torch.randn(num_tokens, 128, generator=gen) * 2).cuda()
        scale = (torch.rand(128, generator=gen) + 0.5).cuda()
        mask = (torch.rand(num_tokens, generator=gen) < 0.3).cuda() if padding else None
        weights, ids = gemma4_routing_triton(logits, 8, scale, is_padding=mask)
        assert compiled_kernels(gemma4_routing_kernel) == compiled, num_tokens
        if mask is None:
            assert_matches_oracle(weights.cpu(), ids.cpu(), logits.cpu(), 8, scale.cpu())
        else:
            assert bool((ids[mask] == -1).all())
