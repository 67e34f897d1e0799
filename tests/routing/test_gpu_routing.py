"""GPU checks of the Triton kernel (run where CUDA/ROCm is present; the CPU suite
covers the same contract under the interpreter)."""

import pytest
import torch
from oracle import assert_ids_valid, assert_matches_oracle

from vllm_gemma4_router import gemma4_routing_reference, gemma4_routing_triton

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU"),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("num_experts", "topk"), [(128, 8), (64, 4), (256, 8), (60, 6), (1024, 16)]
)
@pytest.mark.parametrize("num_tokens", [1, 3, 127, 1000, 4097, 70001])
def test_gpu_matches_oracle(dtype, num_experts, topk, num_tokens, gen):
    num_tokens = min(num_tokens, 2**22 // num_experts)  # keeps the CPU oracle quick
    logits = (torch.randn(num_tokens, num_experts, generator=gen) * 2).to(dtype)
    scale = torch.rand(num_experts, generator=gen) + 0.5
    weights, ids = gemma4_routing_triton(logits.cuda(), topk, scale.cuda())
    assert_matches_oracle(weights.cpu(), ids.cpu(), logits, topk, scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_ties_and_non_finite_rows(dtype, gen):
    logits = (torch.randint(-3, 4, (3000, 128), generator=gen) * 0.5).to(dtype)
    logits[::7, 5] = float("nan")
    logits[::11] = float("nan")
    logits[::13, 9] = float("inf")
    logits[::17] = float("-inf")
    weights, ids = gemma4_routing_triton(logits.cuda(), 8, None)
    assert_ids_valid(ids.cpu(), 128)
    ref_w, ref_ids = gemma4_routing_reference(logits, 8, None)
    assert torch.equal(ids.cpu(), ref_ids)
    torch.testing.assert_close(weights.cpu(), ref_w, equal_nan=True, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_random_bits_give_valid_ids(dtype, gen):
    bits = torch.randint(-(2**31), 2**31, (20000, 128), generator=gen, dtype=torch.int64)
    logits = (
        bits.to(torch.int32).view(torch.float32)
        if dtype == torch.float32
        else (bits.to(torch.int16).view(dtype))
    )
    weights, ids = gemma4_routing_triton(logits.cuda(), 8, None)
    assert_ids_valid(ids.cpu(), 128)
    ref_w, ref_ids = gemma4_routing_reference(logits, 8, None)
    assert torch.equal(ids.cpu(), ref_ids)
    torch.testing.assert_close(weights.cpu(), ref_w, equal_nan=True, rtol=1e-5, atol=1e-6)


def test_gpu_same_row_same_result_in_every_bucket(gen):
    logits = torch.randn(262144, 128, generator=gen).cuda()
    full = gemma4_routing_triton(logits, 8, None)
    for count in (1, 5, 900, 5000, 40000):
        part = gemma4_routing_triton(logits[:count], 8, None)
        assert torch.equal(part[1], full[1][:count]) and torch.equal(part[0], full[0][:count])


def test_gpu_cuda_graph_replay_matches_eager(gen):
    logits = torch.randn(512, 128, generator=gen).cuda()
    scale = (torch.rand(128, generator=gen) + 0.5).cuda()
    weights = torch.empty(512, 8, device="cuda")
    ids = torch.empty(512, 8, device="cuda", dtype=torch.int32)
    gemma4_routing_triton(logits, 8, scale, topk_weights=weights, topk_ids=ids)  # compile
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gemma4_routing_triton(logits, 8, scale, topk_weights=weights, topk_ids=ids)
    for _ in range(3):
        logits.copy_(torch.randn(512, 128, generator=gen))
        weights.fill_(float("nan"))
        ids.fill_(-1)
        graph.replay()
        eager = gemma4_routing_triton(logits, 8, scale)
        assert torch.equal(ids, eager[1]) and torch.equal(weights, eager[0])


def test_gpu_inductor_fullgraph_compile_matches_eager(gen):
    from vllm_gemma4_router.routing import torch_library as routing_library  # noqa: F401  (registers the op)

    def route(logits, scale):
        weights, ids = torch.ops.vllm_gemma4_router.routing(logits.float() * 2.0, 8, scale)
        return weights * 3.0, ids

    compiled = torch.compile(route, fullgraph=True)
    scale = (torch.rand(128, generator=gen) + 0.5).cuda()
    for num_tokens in (3, 300):
        logits = torch.randn(num_tokens, 128, generator=gen).cuda().to(torch.bfloat16)
        got, want = compiled(logits, scale), route(logits, scale)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


def test_gpu_cached_launches_match_triton_dispatch(gen):
    # The cached launch path must pick the kernel Triton itself would: change
    # alignment (offset views), T (1, multiples of 16, others), strides and
    # dtypes between calls, and compare with a launch through kernel[grid].
    from vllm_gemma4_router.routing import launcher as routing_launcher
    from vllm_gemma4_router.routing.launch_table import LaunchConfig

    launches = routing_launcher._LAUNCHES
    assert launches.enabled, "Triton's launcher API was not found: cached launches are off"
    hits_before = launches.hits
    base = torch.randn(4200, 130, generator=gen)
    for dtype in DTYPES:
        for num_tokens in (1, 16, 17, 1000, 4097):
            for offset in (0, 1):  # offset 1: logits no longer 16-byte aligned
                logits = base.to(dtype).cuda()[offset : offset + num_tokens, offset : offset + 128]
                scale = torch.rand(128, generator=gen).cuda() + 0.5
                for _ in range(2):  # second call: a cache hit
                    weights, ids = gemma4_routing_triton(logits, 8, scale)
                ref_w = torch.empty_like(weights)
                ref_ids = torch.empty_like(ids)
                config = LaunchConfig(4, 1)
                enabled, launches.enabled = launches.enabled, False
                try:
                    routing_launcher.launch(logits, 8, scale, ref_w, ref_ids, config)
                finally:
                    launches.enabled = enabled
                assert torch.equal(ids, ref_ids)
                assert torch.equal(weights, ref_w)
    assert launches.hits > hits_before


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_experts", "topk"), [(128, 8), (64, 4), (256, 8), (60, 6)])
def test_gpu_row_groups_change_no_bit(dtype, num_experts, topk, gen):
    # Rows loaded in pieces (LaunchConfig.row_groups): a different register
    # layout on the GPU, bitwise the same outputs as plain rows.
    from vllm_gemma4_router.routing import launcher as routing_launcher
    from vllm_gemma4_router.routing.launch_table import LaunchConfig, check_launch_config

    logits = (torch.randn(5001, num_experts, generator=gen) * 2).to(dtype)
    logits[::3] = (torch.randint(-3, 4, (1667, num_experts), generator=gen) * 0.5).to(dtype)
    scale = torch.rand(num_experts, generator=gen) + 0.5
    gpu_logits, gpu_scale = logits.cuda(), scale.cuda()
    # the table's shapes and others, incl. ones that fall back to plain rows
    shapes = ((1, 1, True), (4, 2, True), (8, 1, True), (16, 2, True), (32, 2, True), (8, 1, False))
    for tokens, warps, register_picks in shapes:
        outputs = []
        for groups in (1, 2, 4, 8):
            config = LaunchConfig(tokens, warps, register_picks, groups)
            try:
                check_launch_config(
                    config, 1 << (num_experts - 1).bit_length(), dtype.itemsize, topk
                )
            except ValueError:
                continue  # cannot run as written (launch_table.check_launch_config)
            weights = torch.empty(5001, topk, device="cuda")
            ids = torch.empty(5001, topk, device="cuda", dtype=torch.int32)
            routing_launcher.launch(gpu_logits, topk, gpu_scale, weights, ids, config)
            outputs.append((weights.cpu(), ids.cpu()))
        assert_matches_oracle(*outputs[0], logits, topk, scale)
        for weights, ids in outputs[1:]:
            assert torch.equal(ids, outputs[0][1])
            assert torch.equal(weights, outputs[0][0])


@pytest.mark.parametrize("tokens_per_program", [1, 2, 8])
def test_gpu_fp32_bucket_faults_are_repaired_in_every_variant(tokens_per_program, gen):
    # The checked selection's repairs and the exact rounds, compiled for the GPU:
    # the oracle's answer, and the same bits as each row routed alone.
    from oracle import fp32_bucket_fault_rows

    from vllm_gemma4_router.routing import launcher as routing_launcher
    from vllm_gemma4_router.routing.launch_table import LaunchConfig

    logits = torch.cat([fp32_bucket_fault_rows(128, gen), torch.randn(300, 128, generator=gen)])
    scale = torch.rand(128, generator=gen) + 0.5
    gpu_logits, gpu_scale = logits.cuda(), scale.cuda()
    variants = [
        dict(),
        dict(scale_pick="in_row", values_by_reduction=True),
        dict(scale_pick="per_pick"),
        dict(fp32_select="exact"),
        dict(fp32_select="exact", scale_pick="in_row"),
        dict(fp32_select="checked_rows"),
        dict(fp32_select="checked_rows", scale_pick="in_row", values_by_reduction=True),
        dict(register_picks=False),
    ]
    if tokens_per_program == 8:
        variants += [dict(row_groups=8), dict(fp32_select="checked_rows", row_groups=8)]
    for variant in variants:
        config = LaunchConfig(tokens_per_program, 1, **variant)
        weights = torch.full((logits.shape[0], 8), float("nan"), device="cuda")
        ids = torch.full((logits.shape[0], 8), -1, dtype=torch.int32, device="cuda")
        routing_launcher.launch(gpu_logits, 8, gpu_scale, weights, ids, config)
        assert_matches_oracle(weights.cpu(), ids.cpu(), logits, 8, scale)
        for row in range(6):
            alone_w, alone_ids = gemma4_routing_triton(gpu_logits[row : row + 1], 8, gpu_scale)
            assert torch.equal(alone_ids[0], ids[row]), (variant, row)
            assert torch.equal(alone_w[0], weights[row]), (variant, row)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", [8197, 65541])  # buckets 4 and 5; no tile divides them
def test_gpu_large_t_rows_exact_with_ties_non_finite_and_the_mask(dtype, num_tokens, gen):
    # The table's rows above 8192 tokens (fp32: checked_rows, issue #38) as a prefill chunk
    # reaches them: the fp64 oracle on the finite rows, the reference on every row, and
    # vLLM 0.34's padding mask leaving the real rows' bits untouched.
    from oracle import fp32_bucket_fault_rows

    from vllm_gemma4_router.routing.launch_table import pick_launch_config

    platform = "cuda" if torch.version.hip is None else "hip"
    config = pick_launch_config(num_tokens, 128, platform, dtype == torch.float32)
    if dtype == torch.float32 and platform == "cuda":
        assert config.fp32_select == "checked_rows"
    assert num_tokens % config.tokens_per_program != 0
    logits = torch.randn(num_tokens, 128, generator=gen) * 2
    ties = torch.arange(num_tokens) % 3 == 1
    logits[ties] = torch.randint(-3, 4, (int(ties.sum()), 128), generator=gen) * 0.5
    logits[:6] = fp32_bucket_fault_rows(128, gen)
    finite = torch.ones(num_tokens, dtype=torch.bool)
    for start, step, column, value in (
        (7, 97, 5, float("nan")),
        (9, 101, None, float("nan")),
        (11, 103, 9, float("inf")),
        (13, 107, None, float("-inf")),
    ):
        if column is None:
            logits[start::step] = value
        else:
            logits[start::step, column] = value
        finite[start::step] = False
    logits = logits.to(dtype)
    scale = torch.rand(128, generator=gen) + 0.5
    gpu_logits, gpu_scale = logits.cuda(), scale.cuda()
    weights, ids = gemma4_routing_triton(gpu_logits, 8, gpu_scale)
    assert_ids_valid(ids.cpu(), 128)
    assert_matches_oracle(weights.cpu()[finite], ids.cpu()[finite], logits[finite], 8, scale)
    ref_w, ref_ids = gemma4_routing_reference(logits, 8, scale)
    assert torch.equal(ids.cpu(), ref_ids)
    torch.testing.assert_close(weights.cpu(), ref_w, equal_nan=True, rtol=2e-6, atol=1e-7)

    padding = torch.rand(num_tokens, generator=gen) < 0.25
    masked_w, masked_ids = gemma4_routing_triton(
        gpu_logits, 8, gpu_scale, is_padding=padding.cuda()
    )
    masked_w, masked_ids = masked_w.cpu(), masked_ids.cpu()
    assert bool((masked_ids[padding] == -1).all()) and bool((masked_w[padding] == 0).all())
    assert torch.equal(masked_ids[~padding], ids.cpu()[~padding])
    assert torch.equal(
        masked_w[~padding].view(torch.int32), weights.cpu()[~padding].view(torch.int32)
    )
