"""GPU: the fused router op through its CUDA C++ decode path (``launch_table.DECODE_PATH``
set here, for each build the packaged table names, to every T that build holds): the
contract against the fp64
chain, the path really taken, the fallback to the Triton kernel where the build cannot
read the inputs, the warm-up compiling every token build before a capture, and CUDA-graph
replays of a rewritten padding mask."""

import pytest
import torch
from fused_oracle import assert_fused_contract, assert_gate_contract, router_inputs

from vllm_gemma4_router.fused_router import (
    handover,
    launch_table,
    torch_library,  # noqa: F401 (registers the op)
)
from vllm_gemma4_router.fused_router.cuda_decode import launcher
from vllm_gemma4_router.fused_router.cuda_decode.builds import (
    TOKEN_BUILDS,
    launch_shape,
    most_tokens,
    parse_build,
)
from vllm_gemma4_router.fused_router.torch_library import fused_router_into
from vllm_gemma4_router.fused_router.warmup import warm_fused_router
from vllm_gemma4_router.routing.padding import set_padding_source

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.version.hip is not None,
        reason="needs an NVIDIA GPU",
    ),
]
EPS = 1e-6
HIDDEN, EXPERTS, TOPK = 2816, 128, 8
PACKAGED_BUILDS = sorted({build for _, build in launch_table.DECODE_PATH.builds})


def _most_tokens(build: str) -> int:
    return most_tokens(parse_build(build)[1])


def _path(build: str) -> launch_table.DecodePath:
    return launch_table.DecodePath(((range(1, _most_tokens(build) + 1), build),))


@pytest.fixture(autouse=True, params=PACKAGED_BUILDS)
def build(request, monkeypatch, fresh_padding_state):
    """Each packaged build, routing every T it holds."""
    if not launcher.device_runs_decode_path(torch.device("cuda")):
        pytest.skip("the decode path needs sm_90+")
    monkeypatch.setattr(launch_table, "DECODE_PATH", _path(request.param))
    return request.param


@pytest.fixture
def taken(monkeypatch):
    """The builds the op launched, in call order (False where the path declined)."""
    seen = []
    real = launcher.launch_decode

    def spy(build, *args, **kwargs):
        seen.append(real(build, *args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(launcher, "launch_decode", spy)
    return seen


def _op(h, s, w, pes):
    packed = torch.ops.vllm_gemma4_router.fused_router(h, s, w, pes, EPS, TOPK)
    return handover.unpack(packed, h.shape[0], EXPERTS, TOPK)


@pytest.mark.parametrize("num_tokens", [1, 5, 16, 17, 32, 33, 48, 64])
@pytest.mark.parametrize(
    ("scale_dtype", "pes_dtype"),
    [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32), (torch.bfloat16, None)],
    ids=["bf16_scales", "fp32_scales", "no_expert_scale"],
)
def test_gpu_op_on_the_decode_path_meets_the_contract(
    num_tokens, scale_dtype, pes_dtype, build, taken, gen
):
    num_tokens = min(num_tokens, _most_tokens(build))  # a CUDA-core build holds 16
    # bf16 scales: as vLLM loads them; fp32: as the warm-up's defaults
    h, s, w, pes = router_inputs(num_tokens, HIDDEN, EXPERTS, torch.bfloat16, gen, device="cuda")
    s = s.to(scale_dtype)
    pes = None if pes_dtype is None else pes.to(pes_dtype)
    out = _op(h, s, w, pes)
    torch.cuda.synchronize()
    assert taken == [True]
    assert_fused_contract(*out, h, s, w, pes, EPS, TOPK)
    again = _op(h, s, w, pes)
    assert all(torch.equal(a, b) for a, b in zip(out, again, strict=True))


def test_gpu_op_falls_back_where_the_build_cannot_read_the_inputs(monkeypatch, taken, gen):
    monkeypatch.setattr(launch_table, "DECODE_PATH", _path("8x8c"))
    h, s, w, pes = router_inputs(24, HIDDEN, EXPERTS, torch.bfloat16, gen, device="cuda")
    out = _op(h, s, w, pes.bfloat16())  # 8x8c reads fp32 expert scales only
    torch.cuda.synchronize()
    assert taken == [False]
    assert_fused_contract(*out, h, s, w, pes.bfloat16(), EPS, TOPK)


def test_gpu_warmup_builds_every_token_build_before_a_capture(build, gen):
    launcher.decode_kernel.cache_clear()
    calls = warm_fused_router(HIDDEN, EXPERTS, TOPK, max_tokens=64, device=torch.device("cuda"),
                              paddings=(False, True))  # fmt: skip
    assert calls > 0
    # the token builds a launch of this build uses (a token-tiled one: up to its tile)
    tiles = parse_build(build)[2]["token_tiles"]
    held = {launch_shape(t, tiles)[0] for t in TOKEN_BUILDS if t <= _most_tokens(build)}
    built = {dict(macros)["TMAX"] for macros in _cached_builds(build, held)}
    assert built == held


def _cached_builds(build, token_builds):
    # functools.cache keeps no key list: ask for each token build's macros again and
    # see that nothing compiles (cache hits only).
    before = launcher.decode_kernel.cache_info()
    found = []
    for t in sorted(token_builds):
        macros = launcher._macros(build, t, HIDDEN, EXPERTS, TOPK, torch.float32)
        assert launcher.decode_kernel(macros, torch.cuda.current_device()) is not None
        found.append(macros)
    assert launcher.decode_kernel.cache_info().misses == before.misses
    return found


@pytest.mark.parametrize("num_tokens", [3, 40])
def test_gpu_op_graph_on_the_decode_path_replays_a_rewritten_mask(num_tokens, build, taken, gen):
    num_tokens = min(num_tokens, _most_tokens(build) - 1)
    h, s, w, pes = router_inputs(num_tokens, HIDDEN, EXPERTS, torch.bfloat16, gen, device="cuda")
    plain = tuple(t.clone() for t in _op(h, s, w, pes))
    buffer = torch.ones(64, dtype=torch.bool, device="cuda")
    set_padding_source(lambda t: buffer[:t])
    _op(h, s, w, pes)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        packed = _op(h, s, w, pes)
    assert all(taken), taken
    mixed = torch.rand(num_tokens, generator=gen) < 0.5
    mixed[0], mixed[-1] = False, True
    for mask in (mixed, ~mixed, torch.zeros(num_tokens, dtype=torch.bool)):
        buffer[:num_tokens].copy_(mask)
        graph.replay()
        torch.cuda.synchronize()
        logits, weights, ids = packed
        pad = mask.cuda()
        assert torch.equal(logits, plain[0])
        assert torch.equal(ids[~pad], plain[2][~pad]) and torch.equal(weights[~pad], plain[1][~pad])
        assert bool((ids[pad] == -1).all()) and bool((weights[pad] == 0).all())


def _operand(h, s):
    # vLLM's router operand: RMSNorm without weight in fp32, back to bf16, * H**-0.5, * scale
    x = h.float()
    normed = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)).to(h.dtype)
    return normed * torch.tensor(HIDDEN**-0.5, dtype=h.dtype) * s.to(h.dtype)


@pytest.mark.parametrize("num_tokens", [1, 16, 17, 40, 57, 64])
@pytest.mark.parametrize("padded", [False, True], ids=["no_mask", "mask"])
def test_gpu_the_gate_operand_takes_the_build_and_gives_the_gates_logits(
    num_tokens, padded, build, taken, gen
):
    num_tokens = min(num_tokens, _most_tokens(build))
    h, s, w, pes = router_inputs(num_tokens, HIDDEN, EXPERTS, torch.bfloat16, gen, device="cuda")
    s, pes = s.to(torch.bfloat16), pes.to(torch.bfloat16)  # as vLLM loads them
    x_gate = _operand(h, s)
    mask = (torch.rand(num_tokens, generator=gen) < 0.3).cuda() if padded else None
    out = handover.unpack(
        handover.new_packed(num_tokens, EXPERTS, TOPK, h.device), num_tokens, EXPERTS, TOPK
    )
    fused_router_into(h, s, w, pes, EPS, TOPK, out, mask, operand=x_gate)
    torch.cuda.synchronize()
    live = torch.ones(num_tokens, dtype=torch.bool) if mask is None else ~mask.cpu()
    logits, weights, ids = (t.cpu()[live] for t in out)
    if parse_build(build)[1] >= 8:  # a tensor-core build takes the operand
        assert taken == [True]
        assert_gate_contract(logits, weights, ids, x_gate.cpu()[live], w, pes, TOPK)
    else:  # refused: the op's own launch on the hidden states, the same build
        assert taken == [False, True]
        assert_fused_contract(logits, weights, ids, h.cpu()[live], s, w, pes, EPS, TOPK)
    if mask is not None:
        ids, weights = out[2], out[1]
        assert bool((ids[mask] == -1).all()) and bool((weights[mask] == 0).all())
