"""The fused router (norm, scale, gate GEMM, routing) on the CPU: the torch chain, the
Triton kernel under the interpreter, the torch op and its hand-over."""

import pytest
import torch
from fused_oracle import assert_fused_contract, router_inputs
from oracle import assert_ids_valid, assert_matches_oracle, fp32_bucket_fault_rows

from benchmarks.tuning.candidates import ROUTING_VARIANTS, candidate_configs
from vllm_gemma4_router.fused_router import handover
from vllm_gemma4_router.fused_router import launch_table as fused_table
from vllm_gemma4_router.fused_router.checks import fused_router_supports
from vllm_gemma4_router.fused_router.handover import logits_view
from vllm_gemma4_router.fused_router.launch_table import (
    FusedLaunchConfig,
    check_fused_launch_config,
    clip_config,
    fused_launch_config,
    is_split,
    pdl_override,
    pdl_supported,
)
from vllm_gemma4_router.fused_router.launcher import (
    gemma4_fused_router_triton,
    launch_with_config,
)
from vllm_gemma4_router.fused_router.reference import gemma4_fused_router_reference
from vllm_gemma4_router.fused_router.torch_library import gemma4_fused_router

EPS = 1e-6
SPLIT = FusedLaunchConfig(16, 16, 64, 128, 4, 2)  # expert and H slices: the counter path
WHOLE_ROWS = FusedLaunchConfig(32, 128, 64, 2**31, 4, 2, 8)  # routing in the epilogue
# Split, and its last program routes its 32 rows 8 at a time, read back from the store.
SPLIT_ROUTED_IN_CHUNKS = FusedLaunchConfig(32, 32, 64, 128, 4, 2, 8)
ROUTINGS = [("exact", "per_pick"), *ROUTING_VARIANTS]  # the default first
# block_t < 16: the register GEMM. Four rows, four experts, two H slices per program...
REGISTER_SPLIT = FusedLaunchConfig(4, 4, 64, 128, 4, 2)
# ... and one row, one expert, the whole H: a program per expert per token.
REGISTER_PER_EXPERT = FusedLaunchConfig(1, 1, 64, 2**31, 2, 2)


def _launch(config, h, s, w, pes, topk, eps=EPS):
    t, e = h.shape[0], w.shape[0]
    out = (torch.empty(t, e), torch.empty(t, topk), torch.empty(t, topk, dtype=torch.int32))
    launch_with_config(clip_config(config, h.shape[1], e), h, s, w, pes, eps, topk, out)
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_reference_chain_matches_fp64(dtype, gen):
    h, s, w, pes = router_inputs(37, 320, 128, dtype, gen)
    logits, weights, ids = gemma4_fused_router_reference(h, s, w, pes, EPS, 8)
    assert_fused_contract(logits, weights, ids, h, s, w, pes, EPS, 8)


@pytest.mark.parametrize(
    ("num_tokens", "hidden", "num_experts", "topk", "dtype", "config"),
    [
        (1, 192, 128, 8, torch.bfloat16, SPLIT),
        (19, 200, 128, 8, torch.bfloat16, SPLIT),
        (5, 192, 100, 6, torch.float32, SPLIT),
        (33, 192, 128, 8, torch.bfloat16, WHOLE_ROWS),
        (40, 136, 64, 1, torch.float16, WHOLE_ROWS),
        (40, 192, 128, 8, torch.bfloat16, SPLIT_ROUTED_IN_CHUNKS),
        (3, 256, 128, 8, torch.float32, None),
        (1, 192, 128, 8, torch.bfloat16, REGISTER_SPLIT),
        (7, 200, 128, 8, torch.bfloat16, REGISTER_SPLIT),
        (5, 192, 100, 6, torch.float32, REGISTER_SPLIT),
        (3, 136, 64, 4, torch.float16, REGISTER_PER_EXPERT),
        (2, 192, 128, 8, torch.bfloat16, REGISTER_PER_EXPERT),
    ],
)
def test_kernel_matches_fp64_chain(num_tokens, hidden, num_experts, topk, dtype, config, gen):
    h, s, w, pes = router_inputs(num_tokens, hidden, num_experts, dtype, gen)
    if config is None:
        logits, weights, ids = gemma4_fused_router_triton(h, s, w, pes, EPS, topk)
    else:
        logits, weights, ids = _launch(config, h, s, w, pes, topk)
    assert_fused_contract(logits, weights, ids, h, s, w, pes, EPS, topk)


@pytest.mark.parametrize("config", [SPLIT, WHOLE_ROWS, REGISTER_SPLIT])
def test_equal_logits_tie_to_the_lowest_id(config, gen):
    # Small integers and eighths: every product and partial sum is exact in fp32,
    # so equal gate rows give bitwise equal logits whatever the summation order.
    h = torch.randint(-2, 3, (20, 128), generator=gen).to(torch.bfloat16)
    s = torch.ones(128, dtype=torch.bfloat16)
    w = (torch.randint(-1, 2, (128, 128), generator=gen) * 0.125).to(torch.bfloat16)
    w[64:] = w[:64]
    logits, weights, ids = _launch(config, h, s, w, None, 8)
    assert torch.equal(logits[:, :64], logits[:, 64:])
    assert_fused_contract(logits, weights, ids, h, s, w, None, EPS, 8)
    for row in ids.tolist():  # an expert's lower twin is always picked before it
        for slot, expert in enumerate(row):
            if expert >= 64:
                assert expert - 64 in row[:slot]


@pytest.mark.parametrize("routing", ROUTINGS[1:], ids="-".join)
@pytest.mark.parametrize("config", [SPLIT, WHOLE_ROWS], ids=["split", "whole_rows"])
def test_every_routing_gives_the_default_routings_bits(config, routing, gen):
    # 33 rows: two token blocks of WHOLE_ROWS, routed 8 rows at a time from the store.
    h, s, w, pes = router_inputs(33, 192, 128, torch.bfloat16, gen)
    select, scale_pick = routing
    out = _launch(config._replace(select=select, scale_pick=scale_pick), h, s, w, pes, 8)
    assert_fused_contract(*out, h, s, w, pes, EPS, 8)
    for mine, default in zip(out, _launch(config, h, s, w, pes, 8), strict=True):
        assert torch.equal(mine, default)


@pytest.mark.parametrize("routing", ROUTINGS, ids="-".join)
@pytest.mark.parametrize(
    "config", [SPLIT, WHOLE_ROWS, REGISTER_SPLIT], ids=["split", "whole_rows", "register"]
)
def test_fp32_bucket_faults_are_routed_exactly(config, routing, gen):
    # fp32 rows built to defeat narrow keys (tests/oracle.py), as the fused kernel's own
    # logits: hidden states 8 * one-hot at column j (RMS 1) and eps=1e-12 make the norm
    # factor exactly 1/8, so row t's logits are gate column j bit for bit.
    rows = fp32_bucket_fault_rows(128, gen)
    picks = torch.arange(18) % rows.shape[0]
    h = torch.zeros(18, 64)
    h[torch.arange(18), picks] = 8.0
    w = torch.zeros(128, 64)
    w[:, : rows.shape[0]] = rows.t()
    pes = torch.rand(128, generator=gen) + 0.5
    select, scale_pick = routing
    config = config._replace(select=select, scale_pick=scale_pick)
    logits, weights, ids = _launch(config, h, torch.ones(64), w, pes, 8, eps=1e-12)
    assert torch.equal(logits, rows[picks])
    assert_matches_oracle(weights, ids, logits, 8, pes)


@pytest.mark.parametrize("config", [SPLIT, REGISTER_SPLIT], ids=["split", "register"])
def test_split_counters_reset_between_launches(config, gen):
    h, s, w, pes = router_inputs(18, 192, 128, torch.bfloat16, gen)
    first = _launch(config, h, s, w, pes, 8)
    second = _launch(config, h[:5], s, w, pes, 8)  # fewer token blocks, same counters
    third = _launch(config, h, s, w, pes, 8)
    for a, b in zip(first, third, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(second[2], first[2][:5])


def test_non_finite_hidden_states_give_valid_ids(gen):
    h, s, w, pes = router_inputs(6, 128, 128, torch.float32, gen)
    h[0, 3] = float("nan")
    h[1] = float("inf")
    h[2, :] = 0.0  # rms 0: factor 1/sqrt(eps), finite logits of 0
    for config in (SPLIT, WHOLE_ROWS, REGISTER_SPLIT):
        _, weights, ids = _launch(config, h, s, w, pes, 8)
        assert_ids_valid(ids, 128)
        assert torch.isfinite(weights[3:]).all()


def test_table_configs_are_valid_for_every_bucket():
    for t in (1, 16, 17, 64, 65, 256, 257, 1024, 4097, 70000):
        check_fused_launch_config(fused_launch_config(t, 2816, 128), t, 2816, 128)
        assert candidate_configs(t, 2816, 128, 8, torch.bfloat16)


def test_pdl_needs_an_nvidia_sm90_device(gen):
    # The CPU (interpreter) has no programmatic dependent launch: refused before any launch.
    h, s, w, pes = router_inputs(4, 128, 16, torch.bfloat16, gen)
    out = (torch.empty(4, 16), torch.empty(4, 4), torch.empty(4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="config.pdl"):
        launch_with_config(SPLIT._replace(pdl=True), h, s, w, pes, EPS, 4, out)
    assert not pdl_supported(torch.device("cpu"))
    # Measured without gain on the H200 (fused_table.PDL_ENV): no longer swept.
    for t in (1, 64, 256):
        assert not any(c.pdl for c in candidate_configs(t, 2816, 128, 8, torch.bfloat16))


def test_pdl_switch_reads_only_0_1_or_empty():
    assert pdl_override(None) is None and pdl_override("") is None
    assert pdl_override("1") is True and pdl_override("0") is False
    for bad in ("yes", "true", " 1"):
        with pytest.raises(ValueError, match="VLLM_GEMMA4_FUSED_PDL"):
            pdl_override(bad)


@pytest.mark.parametrize("override", [None, True, False])
def test_table_pdl_only_on_split_rows_of_a_supporting_device(monkeypatch, override):
    monkeypatch.setattr(fused_table, "_PDL_OVERRIDE", override)
    monkeypatch.setattr(fused_table, "pdl_supported", lambda device: device.type == "meta")
    for t in (1, 16, 64, 256, 1024, 70000):
        plain = fused_launch_config(t, 2816, 128)
        # The CPU launches as the table row says; a device without PDL never gets it.
        assert fused_launch_config(t, 2816, 128, torch.device("cpu")) == plain._replace(pdl=False)
        on_device = fused_launch_config(t, 2816, 128, torch.device("meta"))
        asked = plain.pdl if override is None else override
        assert on_device == plain._replace(pdl=asked and is_split(plain, 2816, 128))
    assert is_split(fused_launch_config(16, 2816, 128), 2816, 128)
    assert not is_split(fused_launch_config(70000, 2816, 128), 2816, 128)


def test_supports_and_bad_configs():
    assert fused_router_supports(128, 8)
    assert not fused_router_supports(512, 8) and not fused_router_supports(128, 17)
    with pytest.raises(ValueError, match="block_h"):
        check_fused_launch_config(FusedLaunchConfig(16, 16, 24, 128, 4, 2), 4, 128, 128)
    with pytest.raises(ValueError, match="h_slice"):
        check_fused_launch_config(FusedLaunchConfig(16, 16, 64, 96, 4, 2), 4, 128, 128)
    with pytest.raises(ValueError, match="token blocks"):
        check_fused_launch_config(SPLIT, 16 * 1025, 2816, 128)
    with pytest.raises(ValueError, match="block_e must be a power of two >= 16"):
        check_fused_launch_config(SPLIT._replace(block_e=4), 4, 128, 128)
    with pytest.raises(ValueError, match="block_t must be a power of two >= 1"):
        check_fused_launch_config(REGISTER_SPLIT._replace(block_t=3), 4, 128, 128)
    with pytest.raises(ValueError, match="register GEMM"):
        check_fused_launch_config(FusedLaunchConfig(8, 8, 256, 256, 4, 2), 4, 2816, 128)
    with pytest.raises(ValueError, match="select"):
        check_fused_launch_config(SPLIT._replace(select="narrow"), 4, 128, 128)
    with pytest.raises(ValueError, match="scale_pick"):
        check_fused_launch_config(SPLIT._replace(scale_pick="per-pick"), 4, 128, 128)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: a.update(hidden_states=a["hidden_states"][0]), ValueError, "hidden_states"),
        (lambda a: a.update(scale=a["scale"][:-1]), ValueError, "scale"),
        (lambda a: a.update(gate_weight=a["gate_weight"].float()), TypeError, "gate_weight"),
        (lambda a: a.update(gate_weight=a["gate_weight"][:, :-1]), ValueError, "gate_weight"),
        (lambda a: a.update(per_expert_scale=a["per_expert_scale"][:3]), ValueError, "per_exp"),
        (lambda a: a.update(eps=0.0), ValueError, "eps"),
        (lambda a: a.update(eps="1e-6"), TypeError, "eps"),
        (lambda a: a.update(topk=0), ValueError, "topk"),
        (lambda a: a.update(topk=True), TypeError, "topk"),
    ],
)
def test_bad_arguments_are_named(change, error, match, gen):
    h, s, w, pes = router_inputs(2, 64, 16, torch.bfloat16, gen)
    args = dict(hidden_states=h, scale=s, gate_weight=w, per_expert_scale=pes, eps=EPS, topk=4)
    change(args)
    for fn in (gemma4_fused_router_triton, gemma4_fused_router_reference, gemma4_fused_router):
        with pytest.raises(error, match=match):
            fn(**args)


def test_unsupported_shape_is_a_clear_error(gen):
    h, s, w, pes = router_inputs(2, 64, 300, torch.float32, gen)
    with pytest.raises(ValueError, match="E <= 256"):
        gemma4_fused_router_triton(h, s, w, pes, EPS, 8)


def test_op_hands_its_routing_over_once(gen):
    h, s, w, pes = router_inputs(9, 96, 32, torch.bfloat16, gen)
    packed = torch.ops.vllm_gemma4_router.fused_router(h, s, w, pes, EPS, 4)
    logits = logits_view(packed, 9, 32)
    ref = gemma4_fused_router_reference(h, s, w, pes, EPS, 4)
    assert handover.claim_routing(logits.clone(), 4) is None  # a copy is not ours
    assert handover.claim_routing(logits, 5) is None  # another K
    claimed = handover.claim_routing(logits, 4)
    assert claimed is not None
    assert torch.equal(claimed[0], ref[1]) and torch.equal(claimed[1], ref[2])
    assert handover.claim_routing(logits, 4) is None  # taken once


def test_op_under_torch_compile_keeps_the_hand_over(gen):
    h, s, w, pes = router_inputs(7, 96, 32, torch.bfloat16, gen)

    def router(x):
        packed = torch.ops.vllm_gemma4_router.fused_router(x, s, w, pes, EPS, 4)
        return logits_view(packed, x.shape[0], 32)

    logits = torch.compile(router, fullgraph=True, dynamic=True)(h)
    claimed = handover.claim_routing(logits, 4)
    assert claimed is not None
    ref = gemma4_fused_router_reference(h, s, w, pes, EPS, 4)
    assert torch.equal(claimed[1], ref[2])
    torch.testing.assert_close(logits, ref[0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gemm_path_keeps_the_contract(dtype, gen):
    from vllm_gemma4_router.fused_router.gemm_path import route_by_gemm

    h, s, w, pes = router_inputs(21, 192, 128, dtype, gen)
    out = (torch.empty(21, 128), torch.empty(21, 8), torch.empty(21, 8, dtype=torch.int32))
    route_by_gemm(h, s, w, pes, EPS, 8, out)
    assert_fused_contract(*out, h, s, w, pes, EPS, 8)


def test_every_gemm_path_candidate_keeps_the_contract(gen):
    from benchmarks.tuning.candidates import gemm_path_candidates
    from vllm_gemma4_router.fused_router.gemm_path import route_by_gemm
    from vllm_gemma4_router.fused_router.launch_table import GEMM_PATH_CONFIG, GemmPathConfig

    candidates = gemm_path_candidates(192)
    assert GEMM_PATH_CONFIG in gemm_path_candidates(2816) and len(set(candidates)) == 27
    assert {c.operand_block_h for c in candidates} >= {256, 1024}  # a whole row in one step
    # The routing kernel's own fp32 E=128 decode choice: one row per one-warp program.
    assert GemmPathConfig(1, 256, 4, 1, 1, "checked", "in_row") in candidates
    h, s, w, pes = router_inputs(21, 192, 128, torch.bfloat16, gen)
    for config in candidates:
        out = (torch.empty(21, 128), torch.empty(21, 8), torch.empty(21, 8, dtype=torch.int32))
        route_by_gemm(h, s, w, pes, EPS, 8, out, config)
        assert_fused_contract(*out, h, s, w, pes, EPS, 8)


def test_split_candidates_reach_the_gemm_path_range():
    def split(t):
        configs = candidate_configs(t, 2816, 128, 8, torch.bfloat16)
        return [c for c in configs if is_split(c, 2816, 128)]

    for t in (512, 1024):
        assert {c.block_t for c in split(t)} == {16, 32, 64}
        assert all(c.block_e == 128 for c in split(t))
    assert not split(2048)


def test_sweep_tries_each_routing_on_the_table_row():
    for t in (1, 64, 256, 1024):
        configs = candidate_configs(t, 2816, 128, 8, torch.bfloat16)
        row = fused_launch_config(t, 2816, 128)
        assert row in configs
        for select, scale_pick in ROUTING_VARIANTS:
            assert row._replace(select=select, scale_pick=scale_pick) in configs
    assert all(c.select == "exact" for c in candidate_configs(2048, 2816, 128, 8, torch.bfloat16))


def test_gemm_path_covers_the_slow_kernel_range():
    from vllm_gemma4_router.fused_router.launch_table import GEMM_PATH_TOKENS

    assert 256 not in GEMM_PATH_TOKENS and 512 in GEMM_PATH_TOKENS
    assert 8192 in GEMM_PATH_TOKENS and 16384 not in GEMM_PATH_TOKENS
