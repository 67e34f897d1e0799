"""Which token tile a token-tiled CUDA decode build launches with: the table's, or a
coarser one where the GPU cannot run all of the launch's clusters at once."""

import pytest
import torch

from vllm_gemma4_router.fused_router.cuda_decode.builds import (
    coarser_tiles,
    fitting_build,
    launch_shape,
    parse_build,
)
from vllm_gemma4_router.fused_router.launch_table import DECODE_PATH
from vllm_gemma4_router.fused_router.warmup import fused_warmup_token_counts


def test_coarser_tiles_double_the_tile_up_to_the_default():
    assert coarser_tiles("8x8cpt8") == ("8x8cpt8", "8x8cpt16", "8x8cpt")
    assert coarser_tiles("8x8cpt16") == ("8x8cpt16", "8x8cpt")
    assert coarser_tiles("8x8cpt") == ("8x8cpt",)
    assert coarser_tiles("8x8cp") == ("8x8cp",)
    assert coarser_tiles("8x1p") == ("8x1p",)
    for build in coarser_tiles("8x8cpt8"):
        assert parse_build(build)[:2] == (8, 8) and parse_build(build)[2]["cluster"]


@pytest.mark.parametrize("capacity", range(1, 9))
def test_the_fitting_tile_never_gets_finer_as_t_grows(capacity):
    # So the warm-up's call at a range's largest T compiles every tile a smaller T takes.
    chosen = [fitting_build("8x8cpt8", t, lambda name: capacity) for t in range(17, 65)]
    order = {name: i for i, name in enumerate(coarser_tiles("8x8cpt8"))}
    ranks = [len(order) if name is None else order[name] for name in chosen]
    assert ranks == sorted(ranks)
    for t, name in zip(range(17, 65), chosen, strict=True):
        if name is not None:
            assert launch_shape(t, parse_build(name)[2]["token_tiles"])[1] <= capacity


def test_an_unavailable_build_does_not_fit():
    assert fitting_build("8x8cpt8", 40, lambda name: None) is None
    assert fitting_build("8x8cp", 40, lambda name: 0) == "8x8cp"  # one cluster: not asked


@pytest.mark.parametrize("max_tokens", [20, 56, 60, 64, 8192])
def test_the_warmup_calls_each_decode_range_at_its_largest_t(max_tokens):
    counts = fused_warmup_token_counts(max_tokens)
    assert len(counts) == len(set(counts)) and max(counts) <= max_tokens
    for tokens, _ in DECODE_PATH.builds:
        if tokens.start <= max_tokens:
            assert min(tokens.stop - 1, max_tokens) in counts, tokens


def test_the_warmup_routes_from_the_operand_only_at_a_split_routers_own_counts(monkeypatch):
    # On the CPU as if it compiled: the calls recorded, each with its token count.
    from vllm_gemma4_router.fused_router import torch_library, warmup

    monkeypatch.setattr(warmup, "COMPILED_DEVICE_TYPES", ("cpu",))
    plain, operand = [], []

    def record(h, *args, operand=None):
        (plain if operand is None else operand_calls).append(h.shape[0])

    operand_calls = operand
    monkeypatch.setattr(torch_library, "fused_router_into", record)
    calls = warmup.warm_fused_router(
        256, 16, 4, max_tokens=80, device=torch.device("cpu"), operand_tokens=((17, 64),)
    )
    assert plain == fused_warmup_token_counts(80)
    assert operand == [t for t in plain if 17 <= t <= 64] and operand
    assert calls == len(plain) + len(operand)
