"""The fused router's CUDA C++ decode path on the CPU: which calls it refuses (each falls
back to the Triton kernel), the one log line when its build fails, the driver's argument
packing, and the op's dispatch to it. It compiles offline in
tests/benchmarks/test_cuda_decode.py and runs in tests/fused_router/test_gpu_cuda_decode_path.py."""

import logging

import pytest
import torch
from fused_oracle import router_inputs

from vllm_gemma4_router.fused_router.cuda_decode import launcher
from vllm_gemma4_router.fused_router.cuda_decode.builds import build_macros
from vllm_gemma4_router.fused_router.cuda_decode.driver import launch
from vllm_gemma4_router.fused_router.handover import new_packed, unpack
from vllm_gemma4_router.log_contract import (
    LOGGER_NAME,
    cluster_query_failed_line,
    decode_build_unavailable_line,
)

EPS = 1e-6


def _inputs(num_tokens, gen):
    return router_inputs(num_tokens, 2816, 128, torch.bfloat16, gen)


def _shifted(t):
    # the same values two bytes further on: rows no longer 16-byte aligned
    flat = torch.empty(t.numel() + 1, dtype=t.dtype)[1:]
    return flat.view(t.shape).copy_(t)


def test_no_call_on_a_cpu_tensor_takes_the_decode_path(gen):
    h, s, w, pes = _inputs(16, gen)
    assert not launcher.device_runs_decode_path(h.device)
    assert not launcher.decode_path_takes("8x8c", h, s, w, pes, 8)
    out = unpack(new_packed(16, 128, 8, h.device), 16, 128, 8)
    assert launcher.launch_decode("8x8c", h, s, w, pes, EPS, 8, out) is False


def test_the_checks_refuse_what_the_kernel_cannot_read(monkeypatch, gen):
    # As if on an sm_90 GPU: only the layout, dtypes and token builds decide.
    monkeypatch.setattr(launcher, "device_runs_decode_path", lambda device: True)
    h, s, w, pes = _inputs(64, gen)
    assert launcher.decode_path_takes("8x8c", h, s, w, pes, 8)
    assert launcher.decode_path_takes("8x8c", h, s, w, None, 8)
    assert launcher.decode_path_takes("8x8c", h, s.float(), w, pes, 8)
    # bf16 expert scales, as vLLM loads them: the p builds widen them in shared memory
    assert launcher.decode_path_takes("8x8cp", h[:32], s, w, pes.bfloat16(), 8)
    refused = {
        "65 tokens": ("8x8c", torch.cat([h, h[:1]]), s, w, pes),
        "a CUDA-core build at 17": ("8x1", h[:17], s, w, pes),
        "64 tokens on a build without room": ("8x16c", h, s.float(), w, pes),
        "fp16 hidden states": ("8x8c", h.half(), s, w, pes),
        "a strided gate": ("8x8c", h, s, w.t().contiguous().t(), pes),
        "rows off 16-byte alignment": ("8x8c", _shifted(h), s, w, pes),
        "a bf16 expert scale outside shared memory": ("8x8c", h, s, w, pes.bfloat16()),
        "an fp16 expert scale": ("8x8cp", h, s, w, pes.half()),
        "an fp16 scale": ("8x8c", h, s.half(), w, pes),
        "a hidden size the warps do not split": ("8x8c", h[:, :2808], s[:2808], w[:, :2808], pes),
    }
    for what, (build, *args) in refused.items():
        assert not launcher.decode_path_takes(build, *args, 8), what


def test_a_build_that_fails_to_compile_is_logged_once_and_falls_back(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("nvrtc: error: no such option\nmore detail")

    monkeypatch.setattr(torch.cuda, "_compile_kernel", broken)
    macros = tuple(build_macros(8, 2816, 128, 8, torch.float32, 8, max_tokens=32,
                                cluster=True).items())  # fmt: skip
    launcher.decode_kernel.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
            assert launcher.decode_kernel(macros) is None
            assert launcher.decode_kernel(macros) is None
    finally:
        launcher.decode_kernel.cache_clear()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert lines[0] == decode_build_unavailable_line(
        str(dict(macros)), "RuntimeError: nvrtc: error: no such option"
    )
    assert lines[0].startswith("gemma4_fused_router: the CUDA decode build {'NW': 8")


def test_the_driver_packs_tensors_ints_and_floats_only():
    with pytest.raises(TypeError, match="tensors, ints or floats, got str"):
        launch(None, (1, 1, 1), (32, 1, 1), [1, 2.5, "x"])


@pytest.mark.parametrize(
    ("build", "num_tokens", "tmax", "grid"),
    [
        ("8x8cp", 40, 64, (16, 1, 1)),  # one cluster, the 64-token build
        ("8x8cpt", 17, 32, (16, 1, 1)),  # one tile
        ("8x8cpt", 40, 32, (16, 2, 1)),  # a cluster per 32 tokens along y
        ("8x8cpt16", 64, 16, (16, 4, 1)),
        ("8x1p", 3, 4, (128, 1, 1)),
    ],
)
def test_a_launch_takes_its_token_build_and_a_cluster_per_tile(
    monkeypatch, build, num_tokens, tmax, grid, gen
):
    # As if on an sm_90 GPU; the NVRTC build and the driver stubbed, the launch recorded.
    monkeypatch.setattr(launcher, "device_runs_decode_path", lambda device: True)
    built, launched = [], []

    def kernel(macros, device_index=None):
        built.append(dict(macros))
        return object()

    monkeypatch.setattr(launcher, "decode_kernel", kernel)
    monkeypatch.setattr(launcher, "clusters_at_once", lambda macros, device_index: 7)
    monkeypatch.setattr(launcher, "launch", lambda k, g, b, args, pdl: launched.append(g))
    h, s, w, pes = _inputs(num_tokens, gen)
    out = unpack(new_packed(num_tokens, 128, 8, h.device), num_tokens, 128, 8)
    assert launcher.launch_decode(build, h, s, w, pes.bfloat16(), EPS, 8, out)
    assert [m["TMAX"] for m in built] == [tmax]
    assert launched == [grid]


@pytest.mark.parametrize(
    ("capacity", "num_tokens", "grid", "asked"),
    [
        (7, 56, (16, 7, 1), [8]),  # seven 8-token clusters fit
        (7, 57, (16, 4, 1), [8, 16]),  # eight do not: 16-token tiles
        (2, 40, (16, 2, 1), [8, 16, 32]),  # a small GPU: 32-token tiles
        (1, 8, (16, 1, 1), []),  # one cluster always fits: nothing asked
        (1, 40, None, [8, 16, 32]),  # no tile fits: the Triton kernel
    ],
)
def test_a_tiled_launch_takes_the_finest_tile_whose_clusters_fit_at_once(
    monkeypatch, capacity, num_tokens, grid, asked, gen
):
    monkeypatch.setattr(launcher, "device_runs_decode_path", lambda device: True)
    monkeypatch.setattr(launcher, "decode_kernel", lambda macros, device_index=None: object())
    seen, launched = [], []

    def clusters_at_once(macros, device_index):
        seen.append(dict(macros)["TMAX"])
        return capacity

    monkeypatch.setattr(launcher, "clusters_at_once", clusters_at_once)
    monkeypatch.setattr(launcher, "launch", lambda k, g, b, args, pdl: launched.append(g))
    h, s, w, pes = _inputs(num_tokens, gen)
    out = unpack(new_packed(num_tokens, 128, 8, h.device), num_tokens, 128, 8)
    took = launcher.launch_decode("8x8cpt8", h, s, w, pes, EPS, 8, out)
    assert took == (grid is not None)
    assert launched == ([] if grid is None else [grid])
    assert seen == asked


def test_where_the_driver_cannot_say_the_table_tile_is_launched(monkeypatch, caplog):
    macros = tuple(build_macros(8, 2816, 128, 8, torch.float32, 8, max_tokens=8,
                                cluster=True, token_tiles=8).items())  # fmt: skip
    monkeypatch.setattr(launcher, "decode_kernel", lambda macros, device_index=None: object())

    def no_driver(kernel, grid, block):
        raise OSError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(launcher, "max_active_clusters", no_driver)
    launcher.clusters_at_once.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
            assert launcher.clusters_at_once(macros, None) == launcher.UNKNOWN_CAPACITY
            assert launcher.clusters_at_once(macros, None) == launcher.UNKNOWN_CAPACITY
    finally:
        launcher.clusters_at_once.cache_clear()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        cluster_query_failed_line(
            str(dict(macros)), "OSError: libcuda.so.1: cannot open shared object file"
        )
    ]
