"""GPU checks of the fused router kernel (the CPU suite runs the same contract under
the interpreter, where bf16 takes the rounded-operand fp32 dot instead of the
tensor-core one)."""

import pytest
import torch
from fused_oracle import assert_fused_contract, router_inputs
from oracle import assert_ids_valid

from benchmarks.tuning.candidates import candidate_configs, gemm_path_candidates
from vllm_gemma4_router.fused_router import handover
from vllm_gemma4_router.fused_router import launch_table as fused_table
from vllm_gemma4_router.fused_router import torch_library as fused_library  # noqa: F401 (registers the op)
from vllm_gemma4_router.fused_router.launch_table import (
    FusedLaunchConfig,
    fused_launch_config,
    pdl_supported,
)
from vllm_gemma4_router.fused_router.launcher import (
    gemma4_fused_router_triton,
    launch_with_config,
)
from vllm_gemma4_router.routing.launcher import gemma4_routing_triton

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU"),
]
EPS = 1e-6
TOKENS = [1, 2, 7, 16, 17, 64, 100, 256, 1000, 4097, 16384]


def _empty_out(t, e, k):
    return (
        torch.empty(t, e, device="cuda"),
        torch.empty(t, k, device="cuda"),
        torch.empty(t, k, dtype=torch.int32, device="cuda"),
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("num_tokens", TOKENS)
def test_gpu_table_launch_matches_fp64_chain(dtype, num_tokens, gen):
    h, s, w, pes = router_inputs(num_tokens, 2816, 128, dtype, gen, device="cuda")
    logits, weights, ids = gemma4_fused_router_triton(h, s, w, pes, EPS, 8)
    assert_fused_contract(logits, weights, ids, h, s, w, pes, EPS, 8)
    # Bitwise the routing kernel's weights and ids for the same logits.
    ref_w, ref_ids = gemma4_routing_triton(logits, 8, pes)
    assert torch.equal(ids, ref_ids) and torch.equal(weights, ref_w)


# A few T per launch kind (600: the split shapes of 32-64 rows): every candidate is one
# Triton compile per specialisation, and the sweep checks each candidate at every T it
# times before timing it.
# 1 and 8: the register GEMM's candidates (block_t 1 and 8) beside the tl.dot splits.
@pytest.mark.parametrize("num_tokens", [1, 8, 17, 600, 2048])
def test_gpu_every_sweep_candidate_is_correct(num_tokens, gen):
    h, s, w, pes = router_inputs(num_tokens, 2816, 128, torch.bfloat16, gen, device="cuda")
    for config in candidate_configs(num_tokens, 2816, 128, 8, torch.bfloat16):
        out = _empty_out(num_tokens, 128, 8)
        launch_with_config(config, h, s, w, pes, EPS, 8, out)
        assert_fused_contract(*out, h, s, w, pes, EPS, 8)


@pytest.mark.parametrize("num_tokens", [1, 1000])
def test_gpu_every_gemm_path_candidate_is_correct(num_tokens, gen):
    from vllm_gemma4_router.fused_router.gemm_path import route_by_gemm

    h, s, w, pes = router_inputs(num_tokens, 2816, 128, torch.bfloat16, gen, device="cuda")
    for config in gemm_path_candidates(2816):
        out = _empty_out(num_tokens, 128, 8)
        route_by_gemm(h, s, w, pes, EPS, 8, out, config)
        assert_fused_contract(*out, h, s, w, pes, EPS, 8)


@pytest.mark.parametrize(("num_experts", "topk", "hidden"), [(64, 6, 2048), (100, 8, 1000)])
def test_gpu_other_shapes(num_experts, topk, hidden, gen):
    for t in (1, 33, 3000):
        h, s, w, pes = router_inputs(t, hidden, num_experts, torch.bfloat16, gen, device="cuda")
        assert_fused_contract(
            *gemma4_fused_router_triton(h, s, w, pes, EPS, topk), h, s, w, pes, EPS, topk
        )


def test_gpu_deterministic_and_counters_reset(gen):
    h, s, w, pes = router_inputs(64, 2816, 128, torch.bfloat16, gen, device="cuda")
    runs = [gemma4_fused_router_triton(h, s, w, pes, EPS, 8) for _ in range(3)]
    gemma4_fused_router_triton(h[:3], s, w, pes, EPS, 8)  # a different grid in between
    runs.append(gemma4_fused_router_triton(h, s, w, pes, EPS, 8))
    for run in runs[1:]:
        for a, b in zip(runs[0], run, strict=True):
            assert torch.equal(a, b)


def test_gpu_cuda_graph_replay(gen):
    h, s, w, pes = router_inputs(16, 2816, 128, torch.bfloat16, gen, device="cuda")
    out = _empty_out(16, 128, 8)
    gemma4_fused_router_triton(h, s, w, pes, EPS, 8, out=out)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gemma4_fused_router_triton(h, s, w, pes, EPS, 8, out=out)
    for _ in range(3):
        h.copy_(router_inputs(16, 2816, 128, torch.bfloat16, gen, device="cuda")[0])
        graph.replay()
        torch.cuda.synchronize()
        assert_fused_contract(*out, h, s, w, pes, EPS, 8)


@pytest.mark.skipif(
    not torch.cuda.is_available() or not pdl_supported(torch.device("cuda")),
    reason="programmatic dependent launch needs an NVIDIA sm_90+ GPU",
)
def test_gpu_pdl_launch_replays_in_a_cuda_graph(gen):
    # Weights load before the wait, the hidden states after: each replay must see
    # the hidden states the kernel ahead of it (the copy) wrote.
    config = FusedLaunchConfig(16, 32, 256, 256, 8, 2, pdl=True)
    h, s, w, pes = router_inputs(16, 2816, 128, torch.bfloat16, gen, device="cuda")
    fresh = torch.empty_like(h)
    out = _empty_out(16, 128, 8)
    launch_with_config(config, h, s, w, pes, EPS, 8, out)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        h.copy_(fresh)
        launch_with_config(config, h, s, w, pes, EPS, 8, out)
    for _ in range(3):
        fresh.copy_(router_inputs(16, 2816, 128, torch.bfloat16, gen, device="cuda")[0])
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(h, fresh)
        assert_fused_contract(*out, h, s, w, pes, EPS, 8)


@pytest.mark.skipif(
    not torch.cuda.is_available() or not pdl_supported(torch.device("cuda")),
    reason="programmatic dependent launch needs an NVIDIA sm_90+ GPU",
)
def test_gpu_pdl_switch_keeps_the_op_bits(monkeypatch, gen):
    # VLLM_GEMMA4_FUSED_PDL=1 (read at import; set here as it would be read) turns
    # the split rows' launches into PDL launches: same kernel sums, same bits.
    for t in (1, 16, 64, 256):
        h, s, w, pes = router_inputs(t, 2816, 128, torch.bfloat16, gen, device="cuda")
        monkeypatch.setattr(fused_table, "_PDL_OVERRIDE", False)
        plain = gemma4_fused_router_triton(h, s, w, pes, EPS, 8)
        monkeypatch.setattr(fused_table, "_PDL_OVERRIDE", True)
        assert fused_launch_config(t, 2816, 128, h.device).pdl
        with_pdl = gemma4_fused_router_triton(h, s, w, pes, EPS, 8)
        for a, b in zip(plain, with_pdl, strict=True):
            assert torch.equal(a, b)
        assert_fused_contract(*with_pdl, h, s, w, pes, EPS, 8)


def test_gpu_non_finite_rows_give_valid_ids(gen):
    h, s, w, pes = router_inputs(50, 2816, 128, torch.bfloat16, gen, device="cuda")
    h[0, 3] = float("nan")
    h[1] = float("inf")
    h[2] = 0.0
    for t in (50, 5):
        _, _, ids = gemma4_fused_router_triton(h[:t], s, w, pes, EPS, 8)
        assert_ids_valid(ids, 128)


def test_gpu_op_hand_over(gen):
    h, s, w, pes = router_inputs(9, 2816, 128, torch.bfloat16, gen, device="cuda")
    packed = torch.ops.vllm_gemma4_router.fused_router(h, s, w, pes, EPS, 8)
    logits = handover.logits_view(packed, 9, 128)
    claimed = handover.claim_routing(logits, 8)
    assert claimed is not None
    assert_fused_contract(logits, *claimed, h, s, w, pes, EPS, 8)


@pytest.mark.parametrize("num_tokens", [16, 1000, 16384])
def test_gpu_op_on_each_path(num_tokens, gen):
    # 16 and 16384: the kernel; 1000: cuBLAS and the GEMM path's epilogue (GEMM_PATH_TOKENS).
    h, s, w, pes = router_inputs(num_tokens, 2816, 128, torch.bfloat16, gen, device="cuda")
    packed = torch.ops.vllm_gemma4_router.fused_router(h, s, w, pes, EPS, 8)
    logits, weights, ids = handover.unpack(packed, num_tokens, 128, 8)
    assert_fused_contract(logits, weights, ids, h, s, w, pes, EPS, 8)
    assert handover.claim_routing(logits, 8) is not None
