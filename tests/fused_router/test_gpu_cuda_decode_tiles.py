"""GPU: a token-tiled CUDA decode launch on the GPU it runs on. The driver says how many
of a build's 16-block clusters run at once; a launch that would need more takes a
coarser tile and still meets the fused router's contract."""

import pytest
import torch
from fused_oracle import assert_fused_contract, router_inputs

from vllm_gemma4_router.fused_router import (
    handover,
    launch_table,
    torch_library,  # noqa: F401 (registers the op)
)
from vllm_gemma4_router.fused_router.cuda_decode import launcher
from vllm_gemma4_router.fused_router.cuda_decode.builds import (
    fitting_build,
    launch_shape,
    parse_build,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.version.hip is not None,
        reason="needs an NVIDIA GPU",
    ),
]
EPS = 1e-6
HIDDEN, EXPERTS, TOPK = 2816, 128, 8
TILED = ("8x8cpt8", "8x8cpt16", "8x8cpt")


@pytest.fixture(autouse=True)
def sm90(fresh_padding_state):
    if not launcher.device_runs_decode_path(torch.device("cuda")):
        pytest.skip("the decode path needs sm_90+")


def _capacity(build: str) -> int:
    macros = launcher._macros(build, 64, HIDDEN, EXPERTS, TOPK, torch.bfloat16)
    return launcher.clusters_at_once(macros, torch.cuda.current_device())


@pytest.mark.parametrize("build", TILED)
def test_gpu_the_driver_says_how_many_clusters_run_at_once(build):
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    capacity = _capacity(build)
    assert capacity != launcher.UNKNOWN_CAPACITY, "the driver answered"
    assert 1 <= capacity <= sms // 16, (build, capacity, sms)


def _launched(monkeypatch) -> list[tuple[int, int, int]]:
    grids = []
    real = launcher.launch

    def spy(kernel, grid, block, args, *, pdl=False):
        grids.append(tuple(grid))
        return real(kernel, grid, block, args, pdl=pdl)

    monkeypatch.setattr(launcher, "launch", spy)
    return grids


def _op(h, s, w, pes):
    packed = torch.ops.vllm_gemma4_router.fused_router(h, s, w, pes, EPS, TOPK)
    return handover.unpack(packed, h.shape[0], EXPERTS, TOPK)


@pytest.mark.parametrize("num_tokens", [17, 56, 57, 64])
def test_gpu_the_table_tile_or_a_coarser_one_fits_this_gpu(num_tokens, monkeypatch, gen):
    monkeypatch.setattr(
        launch_table, "DECODE_PATH", launch_table.DecodePath(((range(17, 65), "8x8cpt8"),))
    )
    grids = _launched(monkeypatch)
    h, s, w, pes = router_inputs(num_tokens, HIDDEN, EXPERTS, torch.bfloat16, gen, device="cuda")
    out = _op(h, s, w, pes)
    torch.cuda.synchronize()
    expected = fitting_build("8x8cpt8", num_tokens, _capacity)
    assert expected is not None  # one 32-token tile fits any sm_90 GPU that clusters 16
    tile = parse_build(expected)[2]["token_tiles"]
    assert grids == [(16, launch_shape(num_tokens, tile)[1], 1)]
    assert grids[0][1] <= _capacity(expected)
    assert_fused_contract(*out, h, s, w, pes, EPS, TOPK)


@pytest.mark.parametrize(("capacity", "clusters"), [(3, 3), (2, 2)])
def test_gpu_a_smaller_gpu_takes_a_coarser_tile_and_meets_the_contract(
    capacity, clusters, monkeypatch, gen
):
    # As if on a GPU (or MIG slice) that runs only `capacity` 16-block clusters at once.
    monkeypatch.setattr(
        launch_table, "DECODE_PATH", launch_table.DecodePath(((range(17, 65), "8x8cpt8"),))
    )
    monkeypatch.setattr(launcher, "clusters_at_once", lambda macros, index: capacity)
    grids = _launched(monkeypatch)
    h, s, w, pes = router_inputs(40, HIDDEN, EXPERTS, torch.bfloat16, gen, device="cuda")
    out = _op(h, s, w, pes)
    torch.cuda.synchronize()
    assert grids == [(16, clusters, 1)]  # 40 tokens: 16-token tiles (3), 32-token (2)
    assert_fused_contract(*out, h, s, w, pes, EPS, TOPK)
