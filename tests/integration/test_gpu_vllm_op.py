"""The gemma4_routing CustomOp on a real GPU with a real vLLM: forward_cuda
(the Triton kernel) equals forward_native (the torch reference).

Needs vLLM importable next to a CUDA/ROCm torch; ``ci/gpu_checks.sh`` adds this
file to its run when it is (the device's vLLM runtime: ci/device_runtime/).
"""

import pytest
import torch
from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config

from vllm_gemma4_router.integration.custom_ops import Gemma4Routing

pytestmark = [pytest.mark.gpu, pytest.mark.vllm]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_tokens", [1, 7, 256, 5000])
def test_forward_cuda_equals_forward_native(dtype, num_tokens, gen):
    with set_current_vllm_config(VllmConfig(compilation_config=CompilationConfig())):
        op = Gemma4Routing()
    expected = "forward_hip" if torch.version.hip else "forward_cuda"
    assert op._forward_method.__name__ == expected
    logits = (torch.randn(num_tokens, 128, generator=gen) * 3).to(dtype).cuda()
    logits[::5, 3] = logits[::5, 7]  # exact ties: both take the lower id first
    scale = (torch.rand(128, generator=gen) + 0.5).cuda()
    weights, ids = op(logits, 8, scale)
    native_weights, native_ids = op.forward_native(logits, 8, scale)
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    assert torch.equal(ids, native_ids)
    torch.testing.assert_close(weights, native_weights, rtol=2e-6, atol=1e-7)
