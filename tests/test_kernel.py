"""The Triton kernel under TRITON_INTERPRET=1 against the fp64 oracle.

Kept small: the interpreter pays ~0.3 s per program.
"""

import pytest
import torch
from oracle import assert_ids_valid, assert_matches_oracle

import vllm_gemma4_router.triton_routing as triton_routing
from vllm_gemma4_router import gemma4_routing_reference, gemma4_routing_triton

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("num_tokens", "num_experts", "topk"),
    [
        (1, 128, 8),
        (37, 128, 8),
        (33, 64, 4),
        (9, 256, 6),
        (5, 100, 6),
        (7, 60, 16),
        (3, 1, 1),
        (4, 7, 7),
        (6, 384, 1),
        (2, 1024, 8),
    ],
)
def test_kernel_matches_oracle(dtype, num_tokens, num_experts, topk, gen):
    logits = (torch.randn(num_tokens, num_experts, generator=gen) * 2).to(dtype)
    scale = torch.rand(num_experts, generator=gen) + 0.5
    weights, ids = gemma4_routing_triton(logits, topk, scale)
    assert_matches_oracle(weights, ids, logits, topk, scale)


@pytest.mark.parametrize("scale_dtype", [torch.bfloat16, torch.float16, None])
def test_kernel_scale_dtypes(scale_dtype, gen):
    logits = torch.randn(20, 128, generator=gen)
    scale = None if scale_dtype is None else (torch.rand(128, generator=gen) + 0.5).to(scale_dtype)
    weights, ids = gemma4_routing_triton(logits, 8, scale)
    assert_matches_oracle(weights, ids, logits, 8, scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_reads_strided_rows_without_copying(dtype, gen):
    storage = torch.randn(24, 200, generator=gen).to(dtype)
    logits = storage[:, 3:131]  # row stride 200, not E=128
    assert logits.stride() == (200, 1)
    transposed = torch.randn(128, 24, generator=gen).to(dtype).t()  # column stride 24
    for view in (logits, transposed, storage[::2, :128]):
        scale = torch.rand(128, generator=gen) + 0.5
        weights, ids = gemma4_routing_triton(view, 8, scale[::1])
        assert_matches_oracle(weights, ids, view, 8, scale)
    strided_scale = (torch.rand(256, generator=gen) + 0.5)[::2]
    weights, ids = gemma4_routing_triton(logits, 8, strided_scale)
    assert_matches_oracle(weights, ids, logits, 8, strided_scale)


def test_kernel_empty_batch_returns_empty_outputs_without_launching(monkeypatch):
    monkeypatch.setattr(triton_routing, "gemma4_routing_kernel", None)  # a launch would fail
    weights, ids = gemma4_routing_triton(torch.empty(0, 128), 8, torch.ones(128))
    assert weights.shape == (0, 8) and weights.dtype == torch.float32
    assert ids.shape == (0, 8) and ids.dtype == torch.int32


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_exact_ties_take_lowest_id(dtype, gen):
    logits = (torch.randint(-3, 4, (40, 128), generator=gen) * 0.5).to(dtype)
    logits[0] = 1.0  # all equal
    logits[1] = 0.0
    logits[1, 1::2] = -0.0  # -0.0 ties with +0.0
    weights, ids = gemma4_routing_triton(logits, 8, None)
    assert_matches_oracle(weights, ids, logits, 8, None)
    assert ids[0].tolist() == list(range(8)) and ids[1].tolist() == list(range(8))
    torch.testing.assert_close(weights[0], torch.full((8,), 1 / 8))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_non_finite_rows_keep_ids_valid_and_neighbours_intact(dtype, gen):
    clean = torch.randn(12, 64, generator=gen).to(dtype)
    logits = clean.clone()
    logits[1, 5] = float("nan")
    logits[3, :] = float("nan")
    logits[5, 9] = float("inf")
    logits[7, :] = float("-inf")
    logits[9, ::3] = float("-inf")
    logits[9, 1] = float("nan")
    logits[11, 2] = float("-inf")
    scale = torch.rand(64, generator=gen) + 0.5
    weights, ids = gemma4_routing_triton(logits, 6, scale)
    assert_ids_valid(ids, 64)
    # Documented behaviour (same as the reference): NaN ranks as -inf with
    # weight 0; a +inf maximum or an all -inf/NaN row gives NaN weights.
    assert_matches_oracle(weights, ids, logits, 6, scale)
    ref_w, ref_ids = gemma4_routing_reference(logits, 6, scale)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_w, equal_nan=True, rtol=2e-6, atol=1e-7)
    assert bool(weights[3].isnan().all()) and bool(weights[5].isnan().all())
    assert bool(torch.isfinite(weights[1]).all()) and 5 not in ids[1].tolist()
    # Rows without NaN/Inf route exactly as they do without bad neighbours.
    clean_w, clean_ids = gemma4_routing_triton(clean, 6, scale)
    for row in (0, 2, 4, 6, 8, 10):
        assert torch.equal(ids[row], clean_ids[row])
        assert torch.equal(weights[row], clean_w[row])


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_random_bit_patterns_give_valid_distinct_ids(dtype, gen):
    bits = torch.randint(-(2**31), 2**31, (32, 128), generator=gen, dtype=torch.int64)
    if dtype == torch.float32:
        logits = bits.to(torch.int32).view(torch.float32)
    else:
        logits = bits.to(torch.int16).view(dtype)
    weights, ids = gemma4_routing_triton(logits, 8, None)
    assert_ids_valid(ids, 128)
    assert_matches_oracle(weights, ids, logits, 8, None, rtol=1e-5, atol=1e-6)


def test_kernel_writes_every_element_of_preallocated_outputs(gen):
    logits = torch.randn(19, 128, generator=gen)
    out_w = torch.full((19, 8), float("nan"))
    out_ids = torch.full((19, 8), -12345, dtype=torch.int32)
    weights, ids = gemma4_routing_triton(logits, 8, None, topk_weights=out_w, topk_ids=out_ids)
    assert weights is out_w and ids is out_ids
    assert_matches_oracle(out_w, out_ids, logits, 8, None)


def test_kernel_writes_into_strided_output_views(gen):
    logits = torch.randn(10, 32, generator=gen)
    w_storage = torch.full((10, 12), -7.0)
    id_storage = torch.full((10, 12), -7, dtype=torch.int32)
    weights, ids = gemma4_routing_triton(
        logits, 4, None, topk_weights=w_storage[:, 2:6], topk_ids=id_storage[:, 5:9]
    )
    assert_matches_oracle(weights, ids, logits, 4, None)
    assert bool((w_storage[:, :2] == -7).all()) and bool((w_storage[:, 6:] == -7).all())
    assert bool((id_storage[:, :5] == -7).all()) and bool((id_storage[:, 9:] == -7).all())


def test_kernel_is_deterministic_and_batch_independent(gen):
    logits = torch.randn(70, 128, generator=gen)
    first = gemma4_routing_triton(logits, 8, None)
    again = gemma4_routing_triton(logits, 8, None)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    for lo, hi in ((0, 1), (3, 5), (10, 43)):
        part = gemma4_routing_triton(logits[lo:hi], 8, None)
        assert torch.equal(part[0], first[0][lo:hi]) and torch.equal(part[1], first[1][lo:hi])


def _near_ties(logits: torch.Tensor, rows: range, gen: torch.Generator) -> torch.Tensor:
    """Put neighbours of each row's top logits 1..200 ulps apart: equal in the
    narrow keys' truncated bits, different in the exact value."""
    out = logits.clone()
    for row in rows:
        top = float(out[row].max())
        cols = torch.randperm(out.shape[1], generator=gen)[:12]
        ulps = torch.randint(-200, 200, (len(cols),), generator=gen)
        base = torch.tensor(top, dtype=torch.float32)
        for col, ulp in zip(cols.tolist(), ulps.tolist(), strict=True):
            value = base
            step = torch.tensor(float("inf") if ulp > 0 else float("-inf"))
            for _ in range(abs(ulp)):
                value = torch.nextafter(value, step)
            out[row, col] = value
    return out


def _adversarial_rows(num_tokens: int, num_experts: int, gen) -> torch.Tensor:
    """fp32 [num_tokens >= 8, E] rows of the hard cases: fp32 near ties every
    third row, exact ties on a 0.5 grid, NaN, -inf, +0.0/-0.0, all negative."""
    logits = _near_ties(
        torch.randn(num_tokens, num_experts, generator=gen), range(0, num_tokens, 3), gen
    )
    logits[1::4] = (logits[1::4] * 2).round() / 2
    logits[2, 0] = float("nan")
    logits[5, 1] = float("-inf")
    logits[6] = 0.0
    logits[6, ::2] = -0.0
    logits[7] = -(torch.rand(num_experts, generator=gen) * 50)  # all negative
    return logits


@pytest.mark.parametrize("num_experts", [128, 60])
def test_kernel_fp32_near_ties_are_exact(num_experts, gen):
    # Rows 0..4 collide in the truncated keys (the tile falls back to 64-bit
    # keys); the same rows routed alone, in a clean tile, must come out the same.
    logits = _near_ties(torch.randn(40, num_experts, generator=gen), range(5), gen)
    weights, ids = gemma4_routing_triton(logits, 8, None)
    assert_matches_oracle(weights, ids, logits, 8, None)
    for row in (0, 3, 7, 39):
        alone = gemma4_routing_triton(logits[row : row + 1], 8, None)
        assert torch.equal(alone[1][0], ids[row]) and torch.equal(alone[0][0], weights[row])


@pytest.mark.parametrize("key_mode", ["WIDE", "NARROW_CHECKED"])
def test_kernel_fp32_key_modes_agree(key_mode, gen):
    from vllm_gemma4_router import kernel
    from vllm_gemma4_router.launch_table import LaunchConfig

    logits = _near_ties(torch.randn(24, 128, generator=gen), range(0, 24, 5), gen)
    scale = torch.rand(128, generator=gen) + 0.5
    weights = torch.full((24, 8), float("nan"))
    ids = torch.full((24, 8), -1, dtype=torch.int32)
    triton_routing.launch(
        logits, 8, scale, weights, ids, LaunchConfig(8, 4), int(getattr(kernel, key_mode))
    )
    assert_matches_oracle(weights, ids, logits, 8, scale)


def test_fp32_near_ties_defeat_unchecked_narrow_keys(gen):
    # Shows the near-tie inputs above are adversarial: without the check, 32-bit
    # keys on fp32 logits order some of those rows by id instead of by value.
    from oracle import oracle_fp64

    from vllm_gemma4_router import kernel
    from vllm_gemma4_router.launch_table import LaunchConfig

    logits = _near_ties(torch.randn(24, 128, generator=gen), range(24), gen)
    weights = torch.empty(24, 8)
    ids = torch.empty(24, 8, dtype=torch.int32)
    triton_routing.launch(logits, 8, None, weights, ids, LaunchConfig(8, 4), int(kernel.NARROW))
    _, ref_ids = oracle_fp64(logits, 8, None)
    assert (ids.numpy() != ref_ids).any(axis=1).sum() >= 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_huge_and_tiny_magnitudes(dtype, gen):
    info = torch.finfo(dtype)
    logits = torch.randn(12, 64, generator=gen)
    logits[0] = logits[0].sign() * info.max * torch.rand(64, generator=gen)  # near overflow
    logits[1] = logits[1] * info.tiny  # subnormal/tiny: many collapse onto ties
    logits[2, :8] = info.max
    logits[2, 8:] = -info.max
    logits[3] = torch.where(torch.rand(64, generator=gen) < 0.5, info.max, info.tiny)
    logits = logits.to(dtype)
    scale = torch.rand(64, generator=gen) + 0.5
    weights, ids = gemma4_routing_triton(logits, 8, scale)
    assert_ids_valid(ids, 64)
    assert_matches_oracle(weights, ids, logits, 8, scale)
    assert bool(torch.isfinite(weights).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_experts", "topk"), [(128, 8), (64, 4), (60, 6), (16, 8), (8, 8)])
def test_kernel_sorted_selection_matches_oracle(dtype, num_experts, topk, gen):
    # The tl.topk selection path (LaunchConfig.sort_select), incl. ties, near ties
    # (fp32 fallback) and K too large for it (falls back to rounds).
    from vllm_gemma4_router.launch_table import LaunchConfig

    logits = _near_ties(torch.randn(16, num_experts, generator=gen), range(0, 16, 3), gen)
    logits[1::4] = (logits[1::4] * 2).round() / 2
    logits = logits.to(dtype)
    scale = torch.rand(num_experts, generator=gen) + 0.5
    weights = torch.full((16, topk), float("nan"))
    ids = torch.full((16, topk), -1, dtype=torch.int32)
    triton_routing.launch(logits, topk, scale, weights, ids, LaunchConfig(4, 1, True))
    assert_matches_oracle(weights, ids, logits, topk, scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_experts", "topk"), [(128, 8), (64, 4), (60, 6), (16, 8), (8, 8)])
def test_kernel_register_picks_match_oracle_and_memory_path(dtype, num_experts, topk, gen):
    # Picks kept in registers (LaunchConfig.register_picks): same contract, incl.
    # ties, NaN/Inf, -0.0, fp32 near ties (wide fallback), and bitwise the same
    # weights and ids as the memory path, so launch buckets cannot disagree.
    from vllm_gemma4_router.launch_table import LaunchConfig

    logits = _adversarial_rows(16, num_experts, gen)
    logits = logits.to(dtype)
    scale = torch.rand(num_experts, generator=gen) + 0.5
    outputs = {}
    for register_picks in (True, False):
        weights = torch.full((16, topk), float("nan"))
        ids = torch.full((16, topk), -1, dtype=torch.int32)
        config = LaunchConfig(4, 1, register_picks=register_picks)
        triton_routing.launch(logits, topk, scale, weights, ids, config)
        outputs[register_picks] = (weights, ids)
    weights, ids = outputs[True]
    assert_ids_valid(ids, num_experts)
    assert_matches_oracle(weights, ids, logits, topk, scale)
    assert torch.equal(ids, outputs[False][1])
    assert torch.equal(weights, outputs[False][0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_experts", "topk"), [(128, 8), (60, 6), (256, 8), (16, 8)])
@pytest.mark.parametrize("register_picks", [False, True])
def test_kernel_row_groups_change_no_bit(dtype, num_experts, topk, register_picks, gen):
    # Rows loaded in pieces (LaunchConfig.row_groups) only change which lane
    # holds which logit: same ids and bitwise the same weights as plain rows,
    # incl. ties, NaN/Inf, -0.0, padding columns (E=60) and pieces clamped to
    # one 16-byte load (E=16), for a partial program (13 rows, 32 per program).
    from vllm_gemma4_router import kernel
    from vllm_gemma4_router.launch_table import LaunchConfig

    logits = _adversarial_rows(13, num_experts, gen)
    logits = logits.to(dtype)
    scale = torch.rand(num_experts, generator=gen) + 0.5
    key_mode = triton_routing.key_mode_for(dtype)
    block_e = 1 << (num_experts - 1).bit_length()
    outputs = []
    for groups in (1, 2, 4, 8):
        config = LaunchConfig(32, 1, register_picks=register_picks, row_groups=groups)
        if groups > 1:  # the launch really loads pieces (not the plain-row fallback)
            assert triton_routing._row_groups(config, block_e, key_mode) > 1
        weights = torch.full((13, topk), float("nan"))
        ids = torch.full((13, topk), -1, dtype=torch.int32)
        triton_routing.launch(logits, topk, scale, weights, ids, config)
        outputs.append((weights, ids))
    assert key_mode != int(kernel.WIDE)
    assert_matches_oracle(*outputs[0], logits, topk, scale)
    for weights, ids in outputs[1:]:
        assert torch.equal(ids, outputs[0][1])
        assert torch.equal(weights, outputs[0][0])


def test_row_groups_fall_back_where_pieces_would_share_lanes():
    # triton 3.6 miscompiles the rounds when lanes are left for the groups axis
    # (H100, 2026-11-24): those launches must load plain rows.
    from vllm_gemma4_router import kernel
    from vllm_gemma4_router.launch_table import LaunchConfig

    bf16, fp32 = int(kernel.NARROW), int(kernel.NARROW_CHECKED)
    # wrong ids on the H100 with pieces: bf16 (4 tokens, 4 groups), (8, 8); fp32 (2, 4)
    assert triton_routing._row_groups(LaunchConfig(4, 1, row_groups=4), 128, bf16) == 1
    assert triton_routing._row_groups(LaunchConfig(8, 2, row_groups=8), 128, bf16) == 1
    assert triton_routing._row_groups(LaunchConfig(2, 1, row_groups=4), 128, fp32) == 1
    # right on the H100: bf16 (8, 4), (16, 8), (32, 4); and by the same rule fp32 (4, 4)
    assert triton_routing._row_groups(LaunchConfig(8, 1, row_groups=4), 128, bf16) == 4
    assert triton_routing._row_groups(LaunchConfig(16, 2, row_groups=8), 128, bf16) == 8
    assert triton_routing._row_groups(LaunchConfig(32, 2, row_groups=4), 128, bf16) == 4
    assert triton_routing._row_groups(LaunchConfig(4, 1, row_groups=4), 128, fp32) == 4
    # never narrower than one 16-byte load
    assert triton_routing._row_groups(LaunchConfig(32, 1, row_groups=8), 16, bf16) == 2


def test_register_picks_only_for_small_k():
    # Register picks unroll K rounds: K=128 took ~98 s to compile for sm_90
    # (triton 3.6, 2026-11-24), so large K takes the memory path's runtime loop.
    from vllm_gemma4_router.launch_table import LaunchConfig

    config = LaunchConfig(1, 1, register_picks=True)
    fp32 = triton_routing.key_mode_for(torch.float32)
    limit = triton_routing.MAX_REGISTER_PICKS
    assert triton_routing._compile_time_args(8, 128, config, fp32, True)["REGISTER_PICKS"]
    assert triton_routing._compile_time_args(limit, 256, config, fp32, True)["REGISTER_PICKS"]
    assert not triton_routing._compile_time_args(limit + 1, 256, config, fp32, True)[
        "REGISTER_PICKS"
    ]
    assert not triton_routing._compile_time_args(256, 256, config, fp32, False)["REGISTER_PICKS"]
