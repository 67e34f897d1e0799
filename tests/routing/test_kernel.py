"""The Triton kernel under TRITON_INTERPRET=1 against the fp64 oracle.

Kept small: the interpreter pays ~0.3 s per program.
"""

import pytest
import torch
from oracle import assert_ids_valid, assert_matches_oracle

import vllm_gemma4_router.routing.launcher as routing_launcher
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
    monkeypatch.setattr(routing_launcher, "gemma4_routing_kernel", None)  # a launch would fail
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


FP32_VARIANTS = [
    dict(fp32_select="checked"),
    dict(fp32_select="checked", scale_pick="in_row", values_by_reduction=True),
    dict(fp32_select="checked", scale_pick="per_pick"),
    dict(fp32_select="exact"),
    dict(fp32_select="exact", scale_pick="in_row"),
    dict(fp32_select="checked_rows"),
    dict(fp32_select="checked_rows", scale_pick="in_row", values_by_reduction=True),
    dict(fp32_select="checked_rows", scale_pick="per_pick"),
    dict(register_picks=False),
]


@pytest.mark.parametrize("variant", FP32_VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
@pytest.mark.parametrize("tokens_per_program", [1, 4])
def test_kernel_fp32_bucket_faults_are_repaired(variant, tokens_per_program, gen):
    # Rows built so that narrow keys pick wrongly (misordered picks, an expert
    # left out of the last bucket) next to ones where they are right (crowded
    # last bucket, ties); every variant must give the oracle's answer and the
    # same bits as the row routed alone, in a tile of its own.
    from oracle import fp32_bucket_fault_rows

    from vllm_gemma4_router.routing.launch_table import LaunchConfig

    logits = fp32_bucket_fault_rows(128, gen)
    scale = torch.rand(128, generator=gen) + 0.5
    weights = torch.full((logits.shape[0], 8), float("nan"))
    ids = torch.full((logits.shape[0], 8), -1, dtype=torch.int32)
    routing_launcher.launch(
        logits, 8, scale, weights, ids, LaunchConfig(tokens_per_program, 1, **variant)
    )
    assert_matches_oracle(weights, ids, logits, 8, scale)
    for row in range(logits.shape[0]):
        alone_w, alone_ids = gemma4_routing_triton(logits[row : row + 1], 8, scale)
        assert torch.equal(alone_ids[0], ids[row]) and torch.equal(alone_w[0], weights[row]), row


def test_fp32_bucket_fault_rows_defeat_plain_narrow_keys(gen):
    # The rows above are adversarial: ranking by narrow keys alone (the bucket,
    # then the lowest id) gets the first two wrong.
    from oracle import fp32_bucket_fault_rows, narrow_key_ranking, oracle_fp64

    logits = fp32_bucket_fault_rows(128, gen)
    _, ref_ids = oracle_fp64(logits, 8, None)
    narrow = narrow_key_ranking(logits, 8)
    wrong = (narrow != ref_ids).any(axis=1)
    assert wrong.tolist() == [True, True, False, False, False, True]


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
def test_kernel_register_picks_match_oracle_and_memory_path(dtype, num_experts, topk, gen):
    # Picks kept in registers (LaunchConfig.register_picks): same contract, incl.
    # ties, NaN/Inf, -0.0, fp32 near ties (repaired), and bitwise the same
    # weights and ids as the memory path, so launch buckets cannot disagree.
    from vllm_gemma4_router.routing.launch_table import LaunchConfig

    logits = _adversarial_rows(16, num_experts, gen)
    logits = logits.to(dtype)
    scale = torch.rand(num_experts, generator=gen) + 0.5
    outputs = {}
    for register_picks in (True, False):
        weights = torch.full((16, topk), float("nan"))
        ids = torch.full((16, topk), -1, dtype=torch.int32)
        config = LaunchConfig(4, 1, register_picks=register_picks)
        routing_launcher.launch(logits, topk, scale, weights, ids, config)
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
    from vllm_gemma4_router.routing.launch_table import LaunchConfig

    logits = _adversarial_rows(13, num_experts, gen)
    logits = logits.to(dtype)
    scale = torch.rand(num_experts, generator=gen) + 0.5
    outputs = []
    for groups in (1, 2, 4, 8):
        per_load = 16 // dtype.itemsize
        block_e = 1 << (num_experts - 1).bit_length()
        groups = min(groups, max(1, block_e // per_load))  # a piece: >= one 16-byte load
        config = LaunchConfig(32, 1, register_picks=register_picks, row_groups=groups)
        weights = torch.full((13, topk), float("nan"))
        ids = torch.full((13, topk), -1, dtype=torch.int32)
        routing_launcher.launch(logits, topk, scale, weights, ids, config)
        outputs.append((weights, ids))
    assert_matches_oracle(*outputs[0], logits, topk, scale)
    for weights, ids in outputs[1:]:
        assert torch.equal(ids, outputs[0][1])
        assert torch.equal(weights, outputs[0][0])


@pytest.mark.parametrize(("num_experts", "topk", "tokens_per_program", "row_groups"),
                         [(128, 8, 8, 8), (128, 8, 4, 1), (60, 6, 4, 2), (128, 8, 32, 8),
                          (128, 1, 8, 8)])  # fmt: skip
def test_checked_rows_give_the_checked_bits(num_experts, topk, tokens_per_program, row_groups, gen):
    # The row-at-a-time repair (fp32_select="checked_rows") against the tile-wide one:
    # the same ids and bitwise the same weights on the hard rows (near ties, ties, NaN,
    # -inf, signed zeros) and the bucket-fault rows, in partial programs and pieces.
    from oracle import fp32_bucket_fault_rows

    from vllm_gemma4_router.routing.launch_table import LaunchConfig

    faults = fp32_bucket_fault_rows(128, gen)[:, :num_experts]
    logits = torch.cat([_adversarial_rows(13, num_experts, gen), faults.contiguous()])
    scale = torch.rand(num_experts, generator=gen) + 0.5
    outputs = []
    for select in ("checked", "checked_rows"):
        weights = torch.full((logits.shape[0], topk), float("nan"))
        ids = torch.full((logits.shape[0], topk), -1, dtype=torch.int32)
        config = LaunchConfig(tokens_per_program, 1, row_groups=row_groups, fp32_select=select)
        routing_launcher.launch(logits, topk, scale, weights, ids, config)
        outputs.append((weights, ids))
    assert_matches_oracle(*outputs[1], logits, topk, scale)
    assert torch.equal(outputs[1][1], outputs[0][1])
    assert torch.equal(outputs[1][0], outputs[0][0])


def test_configs_that_cannot_run_as_written_are_refused():
    # What the table says is what runs: a config the kernel would have to change
    # is an error, not a silent fallback. triton 3.6 miscompiles the rounds when
    # lanes are left for the groups axis (H100, 2026-11-24).
    from vllm_gemma4_router.routing.launch_table import LaunchConfig, check_launch_config

    def refused(config, block_e, logit_bytes, topk=8):
        with pytest.raises(ValueError, match="config"):
            check_launch_config(config, block_e, logit_bytes, topk)

    # wrong ids on the H100 with pieces: bf16 (4 tokens, 4 groups), (8, 8); fp32 (2, 4)
    refused(LaunchConfig(4, 1, row_groups=4), 128, 2)
    refused(LaunchConfig(8, 2, row_groups=8), 128, 2)
    refused(LaunchConfig(2, 1, row_groups=4), 128, 4)
    refused(LaunchConfig(32, 1, row_groups=16), 16, 2)  # narrower than one 16-byte load
    refused(LaunchConfig(1, 1, register_picks=True), 256, 4, topk=17)
    refused(LaunchConfig(3, 1), 128, 4)
    refused(LaunchConfig(1, 1, fp32_select="wide"), 128, 4)
    # right on the H100: bf16 (8, 4), (16, 8), (32, 4); by the same rule fp32 (4, 4)
    for config, logit_bytes in (
        (LaunchConfig(8, 1, row_groups=4), 2),
        (LaunchConfig(16, 2, row_groups=8), 2),
        (LaunchConfig(32, 2, row_groups=4), 2),
        (LaunchConfig(4, 1, row_groups=4), 4),
    ):
        check_launch_config(config, 128, logit_bytes, 8)
    with pytest.raises(ValueError, match="config"):
        routing_launcher.launch(
            torch.randn(4, 128),
            8,
            None,
            torch.empty(4, 8),
            torch.empty(4, 8, dtype=torch.int32),
            LaunchConfig(2, 1, row_groups=4),
        )


def test_register_picks_only_for_small_k():
    # Register picks unroll K rounds: K=128 took ~98 s to compile for sm_90
    # (triton 3.6, 2026-11-24), so the table hands large K the memory path.
    from vllm_gemma4_router.routing.launch_table import (
        MAX_REGISTER_PICKS,
        NUM_BUCKETS,
        bucket_launch_config,
    )

    for bucket in range(NUM_BUCKETS):
        for fp32 in (True, False):
            assert not bucket_launch_config(
                bucket, 256, "cuda", fp32, MAX_REGISTER_PICKS + 1
            ).register_picks
    assert bucket_launch_config(0, 128, "cuda", True, 8).register_picks
