"""GPU: after the fused router's warm-up, no call up to its token budget compiles a kernel
(table rows and the GEMM path alike), and the calls still meet the fp64 contract."""

import pytest
import torch
from fused_oracle import assert_fused_contract, router_inputs

from vllm_gemma4_router.fused_router.gemm_path import (
    gemma4_router_finish_kernel,
    gemma4_router_operand_kernel,
)
from vllm_gemma4_router.fused_router.handover import new_packed, unpack
from vllm_gemma4_router.fused_router.kernels.entry import gemma4_fused_router_kernel
from vllm_gemma4_router.fused_router.launch_table import GEMM_PATH_TOKENS
from vllm_gemma4_router.fused_router.torch_library import fused_router_into
from vllm_gemma4_router.fused_router.warmup import warm_fused_router

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU"),
]
KERNELS = (gemma4_fused_router_kernel, gemma4_router_operand_kernel, gemma4_router_finish_kernel)
MAX_TOKENS = 1100  # the decode rows, the GEMM path, and a cut bucket


def compiled_kernels() -> int:
    return sum(len(entry[0]) for k in KERNELS for entry in k.device_caches.values())


def test_gpu_no_fused_call_compiles_after_the_warmup(gen):
    assert GEMM_PATH_TOKENS.start <= MAX_TOKENS  # the GEMM path is warmed too
    # The dtypes router_inputs gives: scale in the hidden states' dtype, fp32 expert scale.
    calls = warm_fused_router(
        2816, 128, 8, max_tokens=MAX_TOKENS, device=torch.device("cuda"),
        scale_dtype=torch.bfloat16, paddings=(False, True),
    )  # fmt: skip
    assert calls > 0
    compiled = compiled_kernels()
    counts = [1, 2, 3, 8, 15, 16, 17, 31, 32, 64, 65, 100, 256, 257, 272, 300, 1024, 1025, 1100]
    counts += torch.randint(1, MAX_TOKENS + 1, (6,), generator=gen).tolist()
    for num_tokens in counts:
        h, s, w, pes = router_inputs(num_tokens, 2816, 128, torch.bfloat16, gen, device="cuda")
        for mask in (None, (torch.rand(num_tokens, generator=gen) < 0.3).cuda()):
            out = unpack(new_packed(num_tokens, 128, 8, h.device), num_tokens, 128, 8)
            fused_router_into(h, s, w, pes, 1e-6, 8, out, mask)
            assert compiled_kernels() == compiled, (num_tokens, mask is not None)
            if mask is None:
                assert_fused_contract(*out, h, s, w, pes, 1e-6, 8)
            else:
                assert bool((out[2][mask] == -1).all())
