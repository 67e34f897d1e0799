"""The CUDA C++ decode prototype (benchmarks/kernel/cuda_decode) on the CPU: it compiles
offline for sm_90a with nvcc, every build bench_cuda_decode makes, without spills and
with its PDL wait; its build constants are checked. It runs on the GPU only
(tests/benchmarks/test_gpu_cuda_decode.py)."""

import shutil
import subprocess

import pytest
import torch

from benchmarks.kernel.cuda_decode import (
    BUILDS,
    MAX_TOKENS,
    SOURCE,
    TOKEN_BUILDS,
    build_macros,
    launch_shape,
    parse_build,
    takes,
    token_build,
)

NVCC = shutil.which("nvcc")


def _nvcc(macros: dict[str, int], out, *flags: str) -> str:
    assert NVCC, "nvcc (CUDA toolkit) is on this project's CI machines; put it on PATH"
    defines = [f"-D{name}={value}" for name, value in macros.items()]
    result = subprocess.run(
        [NVCC, "-arch=sm_90a", *flags, "-o", str(out), *defines, str(SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


# each build with each token build it takes: above MAX_TOKENS, tensor-core builds only;
# above 32, those whose gate rows and scales leave room for the accumulators; a
# token-tiled build only up to its tile
BUILD_TOKENS = [
    (build, max_tokens, scale_dtype)
    for build in BUILDS
    for max_tokens in TOKEN_BUILDS
    for scale_dtype in (torch.bfloat16, torch.float32)
    if takes(build, max_tokens, scale_dtype)
    and launch_shape(max_tokens, parse_build(build)[2]["token_tiles"])[0] == max_tokens
]


def test_the_builds_that_take_64_tokens():
    takes_64 = {(b, str(d)[6:]) for b, t, d in BUILD_TOKENS if t == 64}
    assert {("8x8c", "bfloat16"), ("8x8c", "float32"), ("8x16c", "bfloat16")} <= takes_64
    assert not {b for b, _ in takes_64} & {"4x8", "4x8c", "8x1"}
    assert ("8x16c", "float32") not in takes_64
    assert all(t <= MAX_TOKENS or parse_build(b)[1] >= 8 for b, t, _ in BUILD_TOKENS)


@pytest.mark.parametrize(("build", "max_tokens", "scale_dtype"), BUILD_TOKENS)
def test_each_build_compiles_for_sm90a_without_spills(build, max_tokens, scale_dtype, tmp_path):
    warps, per_block, flags = parse_build(build)
    cluster = flags["cluster"]
    macros = build_macros(warps, 2816, 128, 8, scale_dtype, per_block, max_tokens=max_tokens,
                          **flags)  # fmt: skip
    # every thread's chunks cover H's 352 16-byte chunks; the routing warps cover the tokens
    assert macros["CH"] * 32 * warps >= 352 > (macros["CH"] - 1) * 32 * warps
    tensor_cores = per_block >= 8
    assert macros["MMA"] == tensor_cores and macros["KB"] * 32 * warps == 2816 * tensor_cores
    assert macros["CS"] == (128 // per_block if cluster else 1)
    assert macros["RT"] * warps >= macros["TMAX"] == max_tokens and macros["E_PER_LANE"] == 4
    log = _nvcc(macros, tmp_path / "k.cubin", "-cubin", "-Xptxas", "-v")
    assert "0 bytes spill stores, 0 bytes spill loads" in log, log
    assert "0 bytes stack frame" in log, log
    _nvcc(macros, tmp_path / "k.ptx", "-ptx")
    ptx = (tmp_path / "k.ptx").read_text()
    assert ".entry gemma4_router_decode" in ptx
    assert "griddepcontrol.wait" in ptx  # weights load before it, x after it
    assert ("mma.sync.aligned.m16n8k16" in ptx) == tensor_cores
    # the cluster builds: one cluster of CS blocks, a barrier, DSMEM reads; the others a counter
    assert (f".reqnctapercluster {macros['CS']}, 1, 1" in ptx) == cluster
    assert ("ld.shared::cluster.f32" in ptx) == ("barrier.cluster.wait" in ptx) == cluster
    assert ("atom.global.add" in ptx) != cluster
    assert macros["PES_SMEM"] == flags["pes_shared"]
    # a token-tiled build finds its tile by the cluster's y index; the others never read it
    assert ("%ctaid.y" in ptx) == bool(flags["token_tiles"]) == bool(macros["TOKEN_TILES"])


@pytest.mark.parametrize(
    ("build", "max_tokens"), [("8x8cp", 16), ("8x8cp", 32), ("8x1p", 4), ("8x1p", 16)]
)
def test_the_p_builds_read_bf16_expert_scales_through_shared_memory(build, max_tokens, tmp_path):
    # vLLM loads per_expert_scale in the model's dtype: bf16; both packaged builds
    warps, per_block, flags = parse_build(build)
    macros = build_macros(warps, 2816, 128, 8, torch.bfloat16, per_block, max_tokens=max_tokens,
                          pes_dtype=torch.bfloat16, **flags)  # fmt: skip
    assert macros["PES_BF16"] == 1 and macros["PES_SMEM"] == 1
    log = _nvcc(macros, tmp_path / "k.cubin", "-cubin", "-Xptxas", "-v")
    assert "0 bytes spill stores, 0 bytes spill loads" in log, log
    _nvcc(macros, tmp_path / "k.ptx", "-ptx")
    ptx = (tmp_path / "k.ptx").read_text()
    assert "ld.global.nc.u16" in ptx and "st.shared.f32" in ptx
    fp32 = dict(macros, PES_BF16=0)
    _nvcc(fp32, tmp_path / "f.ptx", "-ptx")
    assert "ld.global.nc.u16" not in (tmp_path / "f.ptx").read_text()
    with pytest.raises(ValueError, match="pes_shared"):
        build_macros(8, 2816, 128, 8, torch.bfloat16, 8, cluster=True, pes_dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="per_expert_scale"):
        build_macros(8, 2816, 128, 8, torch.bfloat16, 8, pes_shared=True, pes_dtype=torch.half)


@pytest.mark.parametrize(
    ("build", "max_tokens"), [("8x8cp", 16), ("8x8cpt8", 8), ("8x8cpt16", 16), ("8x8cpt", 32)]
)
def test_the_prenormed_builds_read_no_scale_and_take_no_norm(build, max_tokens, tmp_path):
    # the split router's own counts: x is the gate's operand, the logit its dot product
    warps, per_block, flags = parse_build(build)
    macros = build_macros(warps, 2816, 128, 8, torch.bfloat16, per_block, max_tokens=max_tokens,
                          pes_dtype=torch.bfloat16, prenormed=True, **flags)  # fmt: skip
    assert macros["PRENORMED"] == 1
    log = _nvcc(macros, tmp_path / "k.cubin", "-cubin", "-Xptxas", "-v")
    assert "0 bytes spill stores, 0 bytes spill loads" in log, log
    _nvcc(macros, tmp_path / "k.ptx", "-ptx")
    ptx = (tmp_path / "k.ptx").read_text()
    normed = dict(macros, PRENORMED=0)
    _nvcc(normed, tmp_path / "n.ptx", "-ptx")
    plain = (tmp_path / "n.ptx").read_text()
    # the norm's rsqrt and the operand's bf16 product are gone; the MMAs stay
    assert "rsqrt" in plain and "rsqrt" not in ptx
    assert "mul.rn.bf16x2" in plain and "mul.rn.bf16x2" not in ptx
    assert ptx.count("mma.sync.aligned.m16n8k16") == plain.count("mma.sync.aligned.m16n8k16")
    with pytest.raises(ValueError, match="prenormed needs a tensor-core build"):
        build_macros(8, 2816, 128, 8, torch.bfloat16, 1, max_tokens=4, prenormed=True)


def test_build_macros_rejects_what_the_kernel_cannot_take():
    with pytest.raises(ValueError, match="warps"):
        build_macros(3, 2816, 128, 8, torch.bfloat16)
    with pytest.raises(ValueError, match="experts_per_block"):
        build_macros(4, 2816, 128, 8, torch.bfloat16, 3)
    with pytest.raises(ValueError, match="tensor-core"):
        build_macros(8, 2816 + 8, 128, 8, torch.bfloat16, 8)
    with pytest.raises(ValueError, match="cluster"):
        build_macros(8, 2816, 128, 8, torch.bfloat16, 4, cluster=True)  # 32 blocks
    with pytest.raises(ValueError, match="cluster"):
        build_macros(8, 2816, 256, 8, torch.bfloat16, 8, cluster=True)
    with pytest.raises(ValueError, match="max_tokens"):
        build_macros(4, 2816, 128, 8, torch.bfloat16, max_tokens=5)
    with pytest.raises(ValueError, match="tensor-core"):
        build_macros(8, 2816, 128, 8, torch.bfloat16, 1, max_tokens=32)
    with pytest.raises(ValueError, match="registers"):
        build_macros(4, 2816, 128, 8, torch.bfloat16, 8, max_tokens=64)
    with pytest.raises(ValueError, match="multiple of 8"):
        build_macros(1, 2817, 128, 8, torch.bfloat16)
    with pytest.raises(ValueError, match="topk"):
        build_macros(1, 2816, 300, 8, torch.bfloat16)
    with pytest.raises(TypeError, match="scale"):
        build_macros(1, 2816, 128, 8, torch.float16)


def test_a_launch_takes_the_smallest_token_build_that_fits():
    assert [token_build(t) for t in (1, 4, 5, 16, 17, 33, 64)] == [4, 4, 8, 16, 32, 64, 64]
    with pytest.raises(ValueError, match="at most 64"):
        token_build(65)
    assert [launch_shape(t) for t in (5, 33)] == [(8, 1), (64, 1)]
    # a token-tiled build: the tile's token build, one cluster per tile
    tiled = [launch_shape(t, token_tiles=32) for t in (1, 17, 32, 33, 64)]
    assert tiled == [(4, 1), (32, 1), (32, 1), (32, 2), (32, 2)]
    tiled = [launch_shape(t, token_tiles=16) for t in (5, 16, 17, 33, 64)]
    assert tiled == [(8, 1), (16, 1), (16, 2), (16, 3), (16, 4)]
    with pytest.raises(ValueError, match="at most 64"):
        launch_shape(65, token_tiles=32)
    for bad in (dict(max_tokens=64, cluster=True, token_tiles=32),  # past the tile
                dict(max_tokens=32, token_tiles=32),  # no cluster
                dict(max_tokens=16, cluster=True, token_tiles=12),  # not a token build
                dict(max_tokens=32, cluster=True, token_tiles=16)):  # fmt: skip
        with pytest.raises(ValueError, match="token_tiles"):
            build_macros(8, 2816, 128, 8, torch.bfloat16, 8, **bad)


def test_parse_build_names_each_flag_and_refuses_the_rest():
    off = dict(cluster=False, pes_shared=False, token_tiles=0)
    assert parse_build("8x1") == (8, 1, off)
    assert parse_build("4x16cp") == (4, 16, dict(off, cluster=True, pes_shared=True))
    assert parse_build("8x8cpt") == (8, 8, dict(cluster=True, pes_shared=True, token_tiles=32))
    assert parse_build("8x8ct16")[2] == dict(cluster=True, pes_shared=False, token_tiles=16)
    for bad in ("8x8q", "8x8pc", "8x8cr", "8x8tc"):
        with pytest.raises(ValueError, match="WARPS"):
            parse_build(bad)


def test_the_launch_structs_match_cuda_h():
    """cuLaunchKernelEx reads the config through these ctypes mirrors of cuda.h's
    CUlaunchConfig and CUlaunchAttribute (x86-64: 56 and 72 bytes)."""
    import ctypes

    from vllm_gemma4_router.fused_router.cuda_decode.driver import _Attribute, _Config

    assert ctypes.sizeof(_Attribute) == 72 and _Attribute.value.offset == 8
    assert ctypes.sizeof(_Config) == 56
    assert (_Config.shared_mem.offset, _Config.stream.offset) == (24, 32)
    assert (_Config.attrs.offset, _Config.num_attrs.offset) == (40, 48)
