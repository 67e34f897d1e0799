"""vLLM's padding mask in the fused router, on the CPU (Triton kernels under the
interpreter): padding rows get ids -1 and weights 0 and keep their logits, the other
rows keep the unmasked call's bits; the ops read the mask from the run-time padding
source (``vllm_gemma4_router.routing.padding``), so a buffer rewritten between two calls (a
CUDA graph's replay) gives the new mask's routing."""

import pytest
import torch
from fused_oracle import assert_fused_contract, router_inputs
from oracle import assert_matches_oracle

from benchmarks.tuning.candidates import ROUTING_VARIANTS
from vllm_gemma4_router.fused_router import (
    handover,
    torch_library,  # noqa: F401 (registers the op)
)
from vllm_gemma4_router.fused_router.gemm_path import route_by_gemm
from vllm_gemma4_router.fused_router.handover import logits_view, unpack
from vllm_gemma4_router.fused_router.launch_table import (
    GEMM_PATH_CONFIG,
    FusedLaunchConfig,
    GemmPathConfig,
    clip_config,
)
from vllm_gemma4_router.fused_router.launcher import (
    gemma4_fused_router_triton,
    kernel_launch,
    launch_with_config,
)
from vllm_gemma4_router.fused_router.reference import gemma4_fused_router_reference
from vllm_gemma4_router.routing.padding import set_padding_source
from vllm_gemma4_router.routing.reference import gemma4_routing_reference

EPS = 1e-6
HIDDEN, EXPERTS, TOPK = 192, 128, 8
SPLIT = FusedLaunchConfig(16, 16, 64, 128, 4, 2)  # expert and H slices: the counter path
WHOLE_ROWS = FusedLaunchConfig(32, 128, 64, 2**31, 4, 2, 8)  # routed 8 rows at a time
SPLIT_ROUTED_IN_CHUNKS = FusedLaunchConfig(32, 32, 64, 128, 4, 2, 8)
GEMM_FOUR_ROWS = GemmPathConfig(1, 256, 4, 4, 2)  # four rows per epilogue program
REGISTER_SPLIT = FusedLaunchConfig(4, 4, 64, 128, 4, 2)  # block_t < 16: the register GEMM
PATHS = {
    "split": SPLIT,
    "register_split": REGISTER_SPLIT,
    "whole_rows": WHOLE_ROWS,
    "split_in_chunks": SPLIT_ROUTED_IN_CHUNKS,
    "gemm": GEMM_PATH_CONFIG,
    "gemm_four_rows": GEMM_FOUR_ROWS,
}
MASKS = ("none", "all", "every_other", "random")
ROUTINGS = [("exact", "per_pick"), *ROUTING_VARIANTS]


@pytest.fixture(autouse=True)
def _no_padding_source(fresh_padding_state):
    """Every test starts and ends without a padding source (conftest)."""


def _mask(kind, num_tokens, gen):
    if kind == "none":
        return torch.zeros(num_tokens, dtype=torch.bool)
    if kind == "all":
        return torch.ones(num_tokens, dtype=torch.bool)
    if kind == "every_other":
        return torch.arange(num_tokens) % 2 == 1
    return torch.rand(num_tokens, generator=gen) < 0.5


def _empty_out(t, e=EXPERTS, k=TOPK):
    # Garbage everywhere: every element must be written.
    return (
        torch.full((t, e), float("nan")),
        torch.full((t, k), float("nan")),
        torch.full((t, k), 12345, dtype=torch.int32),
    )


def _run(config, h, s, w, pes, topk=TOPK, is_padding=None):
    out = _empty_out(h.shape[0], w.shape[0], topk)
    if isinstance(config, GemmPathConfig):
        route_by_gemm(h, s, w, pes, EPS, topk, out, config, is_padding=is_padding)
    else:
        config = clip_config(config, h.shape[1], w.shape[0])
        launch_with_config(config, h, s, w, pes, EPS, topk, out, is_padding=is_padding)
    return out


def assert_masked(masked, plain, is_padding, topk=TOPK, pes=None):
    """``masked`` is ``plain`` with ``is_padding``'s rows as ids -1 and weights +0.0."""
    pad = is_padding.cpu().bool()
    logits, weights, ids = masked
    assert torch.equal(logits, plain[0]), "padding changed the logits"
    assert torch.equal(weights[~pad], plain[1][~pad]) and torch.equal(ids[~pad], plain[2][~pad])
    assert (ids[pad] == -1).all(), ids[pad]
    assert (weights[pad] == 0).all() and not weights[pad].signbit().any(), weights[pad]
    if (~pad).any():  # the real rows: the routing of their own logits, ties lowest id first
        assert_matches_oracle(weights[~pad], ids[~pad], logits[~pad], topk, pes)


@pytest.mark.parametrize("num_tokens", [1, 7, 17])
@pytest.mark.parametrize("path", PATHS)
def test_kernels_mask_padding_rows(path, num_tokens, gen):
    h, s, w, pes = router_inputs(num_tokens, HIDDEN, EXPERTS, torch.bfloat16, gen)
    plain = _run(PATHS[path], h, s, w, pes)
    assert_fused_contract(*plain, h, s, w, pes, EPS, TOPK)
    for kind in MASKS:
        mask = _mask(kind, num_tokens, gen)
        masked = _run(PATHS[path], h, s, w, pes, is_padding=mask)
        assert_masked(masked, plain, mask, pes=pes)


@pytest.mark.parametrize("routing", ROUTINGS, ids="-".join)
@pytest.mark.parametrize("config", [SPLIT, WHOLE_ROWS], ids=["split", "whole_rows"])
def test_every_routing_masks_after_its_scale_pick(config, routing, gen):
    # "after" gathers per_expert_scale at the picked ids: the mask goes on after it.
    h, s, w, pes = router_inputs(17, HIDDEN, EXPERTS, torch.bfloat16, gen)
    config = config._replace(select=routing[0], scale_pick=routing[1])
    mask = _mask("random", 17, gen)
    mask[0], mask[-1] = True, False
    plain = _run(config, h, s, w, pes)
    assert_masked(_run(config, h, s, w, pes, is_padding=mask), plain, mask, pes=pes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_masks_without_per_expert_scale_and_other_shapes(dtype, gen):
    # E=100, K=6: padded expert columns and slots.
    h, s, w, _ = router_inputs(9, 136, 100, dtype, gen)
    mask = _mask("every_other", 9, gen)
    for config in (SPLIT, WHOLE_ROWS, GEMM_FOUR_ROWS):
        plain = _run(config, h, s, w, None, topk=6)
        assert_fused_contract(*plain, h, s, w, None, EPS, 6)
        assert_masked(_run(config, h, s, w, None, 6, mask), plain, mask, topk=6)


def test_uint8_mask_at_an_offset_counts_any_nonzero_byte(gen):
    h, s, w, pes = router_inputs(7, HIDDEN, EXPERTS, torch.bfloat16, gen)
    storage = torch.tensor([9, 9, 9, 0, 1, 0, 255, 7, 0, 2, 9], dtype=torch.uint8)
    mask = storage[3:10]  # storage offset 3: the kernels index from the view's pointer
    for config in (SPLIT, WHOLE_ROWS, GEMM_FOUR_ROWS):
        plain = _run(config, h, s, w, pes)
        assert_masked(_run(config, h, s, w, pes, is_padding=mask), plain, mask != 0, pes=pes)


def test_mask_buffer_rewritten_between_launches(gen):
    # The CPU stand-in for a CUDA graph replayed after its mask buffer was rewritten:
    # the same view (same pointer) passed twice, the buffer's values read each time.
    h, s, w, pes = router_inputs(17, HIDDEN, EXPERTS, torch.bfloat16, gen)
    buffer = torch.zeros(32, dtype=torch.bool)
    for config in (SPLIT, WHOLE_ROWS, GEMM_PATH_CONFIG):
        plain = _run(config, h, s, w, pes)
        view = buffer[:17]
        for kind in ("all", "random", "none"):
            buffer[:17] = _mask(kind, 17, gen)
            assert_masked(_run(config, h, s, w, pes, is_padding=view), plain, view.clone(), pes=pes)


def test_no_mask_launches_the_unmasked_kernel(gen):
    h, s, w, pes = router_inputs(5, HIDDEN, EXPERTS, torch.bfloat16, gen)
    out = _empty_out(5)
    config = clip_config(SPLIT, HIDDEN, EXPERTS)
    _, args, kwargs = kernel_launch(config, h, s, w, pes, EPS, TOPK, out)
    assert kwargs["HAS_PADDING"] is False
    mask = torch.zeros(5, dtype=torch.bool)
    _, masked_args, kwargs = kernel_launch(config, h, s, w, pes, EPS, TOPK, out, is_padding=mask)
    assert kwargs["HAS_PADDING"] is True
    # A bool mask goes in as its own bytes (a uint8 view), never copied.
    (pointer,) = [a for a in masked_args if isinstance(a, torch.Tensor) and a.dtype == torch.uint8]
    assert pointer.data_ptr() == mask.data_ptr()
    (dummy,) = [a for a in args if isinstance(a, torch.Tensor) and a.dtype == torch.uint8]
    assert dummy.data_ptr() != mask.data_ptr()


def test_public_launch_checks_the_mask(gen):
    h, s, w, pes = router_inputs(7, HIDDEN, EXPERTS, torch.bfloat16, gen)
    mask = _mask("every_other", 7, gen)
    plain = gemma4_fused_router_triton(h, s, w, pes, EPS, TOPK)
    masked = gemma4_fused_router_triton(h, s, w, pes, EPS, TOPK, is_padding=mask)
    assert_masked(masked, plain, mask, pes=pes)
    for bad, error in (
        (mask[:6], ValueError),
        (mask.int(), TypeError),
        (mask[:, None], ValueError),
        (torch.zeros(14, dtype=torch.bool)[::2], ValueError),
    ):
        with pytest.raises(error, match="is_padding"):
            gemma4_fused_router_triton(h, s, w, pes, EPS, TOPK, is_padding=bad)


# The op: on the CPU its torch chain; the mask from the padding source.

H_OP, E_OP, K_OP = 96, 32, 4


def _op(h, s, w, pes):
    packed = torch.ops.vllm_gemma4_router.fused_router(h, s, w, pes, EPS, K_OP)
    return tuple(t.clone() for t in unpack(packed, h.shape[0], E_OP, K_OP))


@pytest.mark.parametrize("num_tokens", [1, 7, 17])
def test_op_reads_the_padding_source_each_call(num_tokens, gen):
    h, s, w, pes = router_inputs(num_tokens, H_OP, E_OP, torch.bfloat16, gen)
    plain = _op(h, s, w, pes)
    assert_fused_contract(*plain, h, s, w, pes, EPS, K_OP)
    buffer = torch.zeros(64, dtype=torch.bool)
    seen = []

    def source(t):
        seen.append(t)
        return buffer[:t]

    set_padding_source(source)
    for kind in MASKS:
        buffer[:num_tokens] = _mask(kind, num_tokens, gen)  # rewritten in place
        mask = buffer[:num_tokens].clone()
        masked = _op(h, s, w, pes)
        assert_masked(masked, plain, mask, K_OP, pes)
        ref = gemma4_fused_router_reference(h, s, w, pes, EPS, K_OP, is_padding=mask)
        for a, b in zip(masked, ref, strict=True):
            assert torch.equal(a, b)
    assert seen == [num_tokens] * len(MASKS)


def test_op_without_a_source_or_with_a_source_of_none_is_unchanged(gen):
    h, s, w, pes = router_inputs(9, H_OP, E_OP, torch.bfloat16, gen)
    ref = gemma4_fused_router_reference(h, s, w, pes, EPS, K_OP)
    for source in (None, lambda t: None):
        set_padding_source(source)
        for a, b in zip(_op(h, s, w, pes), ref, strict=True):
            assert torch.equal(a, b)


def test_op_under_torch_compile_reads_the_source_at_run_time(gen):
    # The mask is no traced argument: the compiled graph calls the op, and the op asks
    # the source when it runs, so a rewritten buffer changes the next call's routing.
    h, s, w, pes = router_inputs(7, H_OP, E_OP, torch.bfloat16, gen)
    plain = _op(h, s, w, pes)
    buffer = torch.zeros(7, dtype=torch.bool)
    set_padding_source(lambda t: buffer[:t])

    def router(x):
        return torch.ops.vllm_gemma4_router.fused_router(x, s, w, pes, EPS, K_OP)

    compiled = torch.compile(router, fullgraph=True)
    for kind in ("every_other", "all", "random", "none"):
        buffer.copy_(_mask(kind, 7, gen))
        masked = tuple(t.clone() for t in unpack(compiled(h), 7, E_OP, K_OP))
        assert_masked(masked, plain, buffer.clone(), K_OP, pes)


@pytest.mark.parametrize(
    ("returned", "error", "match"),
    [
        (lambda t: torch.zeros(t + 1, dtype=torch.bool), ValueError, "7 elements"),
        (lambda t: torch.zeros(t, dtype=torch.int32), TypeError, "bool or uint8"),
        (lambda t: torch.zeros(t, 1, dtype=torch.bool), ValueError, "1-D"),
        (lambda t: torch.zeros(2 * t, dtype=torch.bool)[::2], ValueError, "contiguous"),
        (lambda t: torch.zeros(t, dtype=torch.bool, device="meta"), ValueError, "device"),
        (lambda t: [False] * t, TypeError, "torch.Tensor"),
    ],
)
def test_a_bad_mask_from_the_source_is_a_clear_error(returned, error, match, gen):
    h, s, w, pes = router_inputs(7, H_OP, E_OP, torch.bfloat16, gen)
    set_padding_source(returned)
    with pytest.raises(error, match=match) as raised:
        torch.ops.vllm_gemma4_router.fused_router(h, s, w, pes, EPS, K_OP)
    assert "padding source" in str(raised.value)
    logits = torch.randn(7, E_OP, generator=gen)
    with pytest.raises(error, match="padding source"):
        torch.ops.vllm_gemma4_router.claimed_routing(logits, K_OP, pes)


# claimed_routing: a missed claim routes the logits itself, with the source's mask.


def test_missed_claim_routes_with_the_sources_mask(gen):
    logits = torch.randn(17, E_OP, generator=gen) * 2
    logits[3, 5] = logits[3, 9]  # a tie: the lowest id first
    pes = torch.rand(E_OP, generator=gen) + 0.5
    plain = gemma4_routing_reference(logits, K_OP, pes)
    buffer = torch.zeros(17, dtype=torch.uint8)
    set_padding_source(lambda t: buffer[:t])
    before = handover.claim_counts["missed"]
    for kind in MASKS:
        buffer.copy_(_mask(kind, 17, gen))
        weights, ids = torch.ops.vllm_gemma4_router.claimed_routing(logits, K_OP, pes)
        assert_masked((logits, weights, ids), (logits, *plain), buffer.clone(), K_OP, pes)
    assert handover.claim_counts["missed"] == before + len(MASKS)


def test_missed_claim_without_a_source_is_unchanged(gen):
    logits = torch.randn(5, E_OP, generator=gen)
    weights, ids = torch.ops.vllm_gemma4_router.claimed_routing(logits, K_OP, None)
    ref = gemma4_routing_reference(logits, K_OP, None)
    assert torch.equal(weights, ref[0]) and torch.equal(ids, ref[1])


def test_claim_hands_over_the_ops_masked_routing(gen):
    h, s, w, pes = router_inputs(9, H_OP, E_OP, torch.bfloat16, gen)
    plain = _op(h, s, w, pes)
    mask = _mask("every_other", 9, gen)
    set_padding_source(lambda t: mask[:t])
    packed = torch.ops.vllm_gemma4_router.fused_router(h, s, w, pes, EPS, K_OP)
    before = handover.claim_counts["claimed"]
    weights, ids = torch.ops.vllm_gemma4_router.claimed_routing(
        logits_view(packed, 9, E_OP), K_OP, pes
    )
    assert handover.claim_counts["claimed"] == before + 1
    assert_masked((plain[0], weights, ids), plain, mask, K_OP, pes)
