"""Launch parameters for the routing kernel, per platform, chosen offline.

No autotuning happens at run time (CUDA-graph capture must stay safe and the
first call must not stall): the launcher looks the parameters up here.

Provenance of ``_CUDA_TABLE``:

* E=128 (``BLOCK_E`` 128) rows: ``benchmarks/tuning/sweep_launch_table.py --shapes 128x8
  --dtypes bfloat16,float32 --fp32-keys checked --tokens 1,16,256,4096,32768,262144
  --tokens-per-program 1,2,4,8,16,32 --warps 1,2,4`` on an NVIDIA H100 80GB HBM3
  (driver 580.159.04, torch 2.11.0+cu130, triton 3.6.0), 2026-11-23, kernel as of
  "next pick by an unsigned min"; raw numbers in
  ``benchmarks/results/launch_sweep_NVIDIA_H100_80GB_HBM3_128x8_unsigned_min.csv``.
  Where a tl.topk selection was within noise (< 2 %) of the rounds, the rounds
  were kept. The T <= 8192 entries (and the register picks) come from a third
  sweep that day, kernel as of "optional register picks": ``--shapes 128x8
  --dtypes bfloat16,float32 --fp32-keys checked --selects rounds --picks
  memory,registers --tokens 1,4,16,64,256,1024,4096,16384 --tokens-per-program
  1,2,4,8 --warps 1,2,4``, raw numbers in
  ``benchmarks/results/launch_sweep_NVIDIA_H100_80GB_HBM3_128x8_register_picks.csv``
  (register picks were not swept above T=16384, where they tied the memory path).
  The bf16/fp16 E=128 entries above T=1024 (row groups) come from a fourth sweep,
  2026-11-24 ~00:50 UTC, kernel as of "row_groups": ``--shapes 128x8 --dtypes
  bfloat16 --selects rounds --row-groups 1,4,8 --picks memory,registers --tokens
  16384,65536,262144 --tokens-per-program 4,8,16,32 --warps 1,2`` (and ``--tokens
  1,16,256,1024,4096 --tokens-per-program 1,2,4,8 --warps 1,2,4 --picks registers``),
  raw numbers in ``benchmarks/results/launch_sweep_NVIDIA_H100_80GB_HBM3_128x8_row_groups_*.csv``:
  T=262144 40.2 us (plain rows: 54.8), 65536 12.3 (16.8), 16384 5.29 (6.38), 4096 3.09
  (3.20).
* fp32 E=128 above T=4096 (row groups; the bucket bound at 4096 was added for
  them): fifth sweep, same machine, 2026-11-24 ~02:20 UTC, kernel as of "row_groups":
  ``--shapes 128x8 --dtypes float32 --fp32-keys checked --selects rounds --picks
  memory,registers --row-groups 1,4,8 --tokens 4096,8192,16384,65536,262144
  --tokens-per-program 1,2,4,8,16,32 --warps 1,2 --tag 128x8_fp32_large``: T=262144
  58.4 us (plain rows 4 tokens: 71.9), 65536 18.7 (21.3), 16384 7.84 (8.95), 8192
  5.92 (6.91); at T=4096 one token per warp stays best (4.52 vs 4.89). The fp32
  T <= 4096 entries were re-checked with row groups the same day (``--tag
  128x8_fp32_small``: no gain). A sweep of register picks two per reduction
  (``128x8_fp32_small``, ``128x8_bf16_paired``, code since removed) was 5-10 %
  slower at every T: one pick per round is a single warp REDUX on sm_90.
* E=64 and E=256 rows: sixth and seventh sweeps, same machine and day, kernel as
  of "row_groups": ``--shapes 64x6,64x4,256x8 --dtypes float32,bfloat16 --selects
  rounds --picks memory,registers --tokens 1,16,256,1024 --tokens-per-program
  1,2,4,8 --warps 1,2 --tag variants_small`` and ``--shapes 64x6,256x8 --row-groups
  1,2,4 --tokens 4096,65536,262144 --tokens-per-program 1,2,4,8,16,32 --warps 1,2
  --tag variants_large``, raw numbers in
  ``benchmarks/results/launch_sweep_NVIDIA_H100_80GB_HBM3_variants_*.csv``; each
  entry minimises the geometric mean of time over best time across the bucket's
  swept T and shapes (the 4097..8192 bucket, not swept, takes the 4096 entry).

* fp32 E=128 (all six buckets), kernel as of "checked and exact fp32 selections"
  (this file's ``fp32_select``/``scale_pick``/``values_by_reduction`` knobs): NVIDIA
  H200 (driver 580.159.04, torch 2.11.0+cu130, triton 3.6.0), 2026-12-01 ~08:50 UTC,
  L2-hot timing (``common.bench_hot``), three fp32 logit families (randn, router GEMM
  with fp32 output, the same GEMM in bf16 cast to fp32), vLLM 0.33.0 / SGLang 0.5.23
  timed alongside: ``python -m benchmarks.tuning.sweep_launch_table --tokens 1,16,256,512,1024
  --tokens-per-program 1,2 --warps 1,2 --scale-picks after,in_row,per_pick --values
  gather,reduction --peers --tag h200_fp32_small`` and ``--tokens
  2048,4096,16384,65536,262144 --tokens-per-program 1,2,4,8 --warps 1,2 --row-groups
  1,4,8 --peers --tag h200_fp32_large``; raw numbers in
  ``benchmarks/results/launch_sweep_NVIDIA_H200_h200_fp32_{small,large}.csv``. Each
  entry minimises the geometric mean, over the bucket's swept T and the three
  families, of time over the best time at that point (T=1: 1.70-1.79 us; 1024:
  2.29-2.40; 2048: 2.65-2.72 exact; 4096: 3.10-3.34; 262144: 64.7-68.9). The bucket
  bound moved from 4096 to 2048 for it: exact rounds win at 2048 (2.72 us vs 2.96
  checked), checked row groups at 4096 (3.10 vs 3.81 exact). The other rows kept
  their entries (their 1025..4096 and 4097..8192 entries were equal). Bucket
  2049..8192 runs the exact rounds although checked ones won the sweep at 4096: in
  the bench that followed (``bench_kernel_NVIDIA_H200_h200_fp32.*``) a tile whose
  checked picks need the exact redo made the whole launch ~2 us slower at 4096-8192
  tokens (randn and fp32 GEMM logits: 5.1 us vs 3.1-3.4 without a fault; exact: 3.8
  in the sweep), while above 8192 the redo hides among many waves. The H100 rows
  are not kept apart: the H200 is the same sm_90 chip, and at T <= 1024, where
  bandwidth does not matter, the new picks were within 5 % of the H100 ones.

* fp32 E=64, buckets 0 and 1: same machine and day, ``--shapes 64x6,64x4 --families
  randn,gemm_fp32 --tokens 1,16,256,1024 --tokens-per-program 1,2,4 --warps 1,2
  --scale-picks after,in_row,per_pick --values gather,reduction --peers --tag
  h200_fp32_e64`` (``launch_sweep_NVIDIA_H200_h200_fp32_e64.csv``), after the bench
  showed 64x6 at 0.98-1.01x of vLLM there with the H100 entries.

Each entry is the fastest (or within 2 % of it) CUDA-graph median at that point.
XPU reuses the table until swept on its hardware; ROCm has its own rows
(``_HIP_TABLE``, reasoned from offline gfx942 compiles: a ROCm "warp" is 64 lanes,
so the same ``num_warps`` means twice the threads there).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

#: Register picks unroll their K rounds and hold [tokens, K] tiles: above this K
#: the memory path's runtime loop is used (E=256, K=256 took minutes to compile
#: with register picks on the H100 machine, 2026-11-24).
MAX_REGISTER_PICKS = 16

FP32_SELECTS = ("checked", "exact")
SCALE_PICKS = ("after", "per_pick", "in_row")


@dataclass(frozen=True)
class LaunchConfig:
    """How one launch is shaped: exactly what the kernel compiles (see :func:`check_config`)."""

    tokens_per_program: int
    num_warps: int
    #: keep the K picks in registers (no store/barrier/reload before the weights);
    #: False stores each pick and reads them back (any K)
    register_picks: bool = True
    #: load each row as this many pieces (kernel._load_rows_grouped): fewer lanes
    #: per row, more rows per instruction; 1 is a plain row
    row_groups: int = 1
    #: fp32 logits: "checked" narrow rounds with in-register repair, or "exact"
    #: rounds (two reductions each); the memory path is always exact for fp32
    fp32_select: str = "checked"
    #: how each pick's per_expert_scale is read (kernel_select.SCALE_*)
    scale_pick: str = "after"
    #: checked fp32: take each pick's exact logit by a row reduction, not a load
    values_by_reduction: bool = False


def check_config(config: LaunchConfig, block_e: int, logit_bytes: int, topk: int) -> None:
    """Raise ``ValueError`` if ``config`` cannot run as written for this shape.

    Row groups must leave each piece at least one 16-byte load wide and give the
    pieces' lanes to tokens only: when lanes are left over for the groups axis
    (tokens x lanes per piece < 32), triton 3.6 miscompiles the rounds on the GPU
    (wrong ids, H100 2026-11-24; the interpreter is right)."""
    tpp = config.tokens_per_program
    if tpp < 1 or tpp & (tpp - 1) or config.num_warps not in (1, 2, 4, 8):
        raise ValueError(f"config: tokens_per_program and num_warps must be powers of 2: {config}")
    if config.fp32_select not in FP32_SELECTS or config.scale_pick not in SCALE_PICKS:
        raise ValueError(f"config: unknown fp32_select or scale_pick: {config}")
    if config.register_picks and topk > MAX_REGISTER_PICKS:
        raise ValueError(f"config: register picks need topk <= {MAX_REGISTER_PICKS}, got {topk}")
    groups = config.row_groups
    if groups != 1:
        per_load = 16 // logit_bytes
        lanes_per_piece = min(32, max(1, block_e // groups // per_load))
        if groups & (groups - 1) or block_e // groups < per_load or tpp * lanes_per_piece < 32:
            raise ValueError(f"config: row_groups={groups} would share lanes here: {config}")


#: Largest number of experts one program holds in a tile row.
MAX_EXPERTS = 4096

# Upper token bounds of the buckets: tiny decode, decode, small prefill (two buckets:
# fp32 E=128 changes shape at 2048), prefill, large prefill.
_TOKEN_BUCKETS = (4, 1024, 2048, 8192, 65536)

#: Number of token buckets (valid bucket indices are 0 .. NUM_BUCKETS - 1).
NUM_BUCKETS = len(_TOKEN_BUCKETS) + 1

_C = LaunchConfig
_MEM = dict(register_picks=False)

# (fp32 logits?, BLOCK_E) -> one LaunchConfig per token bucket.
_CUDA_TABLE: dict[tuple[bool, int], tuple[LaunchConfig, ...]] = {
    # buckets 0-1: H200 sweep 2026-12-01 (h200_fp32_e64, see the module docstring)
    (True, 64): (
        _C(1, 1, scale_pick="in_row", values_by_reduction=True),
        _C(2, 2, fp32_select="exact", scale_pick="in_row"),
        _C(4, 1, row_groups=2, **_MEM),
        _C(4, 1, row_groups=2, **_MEM),
        _C(8, 1, row_groups=4),
        _C(8, 1, row_groups=4),
    ),
    # H200 sweep 2026-12-01 (see the module docstring).
    (True, 128): (
        _C(1, 1, scale_pick="in_row", values_by_reduction=True),
        _C(1, 1, scale_pick="in_row", values_by_reduction=True),
        _C(2, 2, fp32_select="exact"),
        _C(8, 1, row_groups=8, fp32_select="exact"),
        _C(8, 1, row_groups=8),
        _C(8, 1, row_groups=8),
    ),
    (True, 256): (
        _C(1, 1),
        _C(1, 1),
        _C(1, 1),
        _C(1, 1),
        _C(2, 1, row_groups=2, **_MEM),
        _C(4, 1, **_MEM),
    ),
    (False, 64): (
        _C(2, 2),
        _C(2, 2),
        _C(16, 2, row_groups=2),
        _C(16, 2, row_groups=2),
        _C(16, 1, row_groups=4),
        _C(32, 2, row_groups=4),
    ),
    (False, 128): (
        _C(2, 2),
        _C(4, 4),
        _C(8, 1, row_groups=4),
        _C(8, 1, row_groups=4),
        _C(16, 2, row_groups=4),
        _C(32, 2, row_groups=4),
    ),
    (False, 256): (
        _C(1, 1),
        _C(2, 2),
        _C(4, 1, row_groups=4),
        _C(4, 1, row_groups=4),
        _C(4, 1, row_groups=4),
        _C(4, 1, row_groups=4),
    ),
}

# ROCm rows: reasoned from offline gfx942 compiles (triton 3.9.0, 2026-12-01; ci/offline_compile.py,
# numbers for every row in benchmarks/results/compile_resources_triton3.9.0.md), not from AMD
# timings (none exist). A CDNA wave has 64 lanes, so the same num_warps is twice the threads:
# * Triton leaves no lane idle there: it narrows the per-lane vector instead. A CUDA decode row
#   (one token per 32-lane warp) becomes one token per 64-lane wave: fp32 E=128 loads 2 values
#   per lane (sizePerThread [1, 2], threadsPerWarp [1, 64]) where sm_90 loads 4. That is the
#   cheap case on AMD: a whole-wave reduction lowers to DPP row ops + v_readlane (fp32 E=128
#   K=8: 0 ds_bpermute, 24 VGPRs, occupancy 8), while two tokens per wave (32 lanes a row)
#   need LDS permutes (67 ds_bpermute, 64 VGPRs; that and the other alternatives below were
#   compiled the same way with the row changed). So every one-token-per-warp row (buckets 0-1,
#   and fp32 E=128/E=256 up to 4096/8192 tokens) is kept as it is.
# * Multi-token rows (the throughput buckets): each lane of a wave holds half the rows a CUDA
#   lane holds (fp32 E=64 4 tokens: threadsPerWarp [4, 2, 8] vs sm_90 [2, 2, 8]), so the
#   per-row work (selection rounds, picks) is amortised over half the rows. Those rows double
#   tokens_per_program, restoring the rows per lane the H100 sweep chose, wherever the doubled
#   kernel stays at <= 128 VGPRs (occupancy >= 4 waves per SIMD, far from the 256-VGPR spill
#   edge): e.g. fp32 E=64 4 -> 8 tokens: 31 -> 52 VGPRs, static instructions per token
#   282 -> 120, ds_bpermute per token 4.8 -> 2.6; bf16 E=128 8 -> 16: 52 -> 79 VGPRs.
# * Kept where doubling would cross that line: fp32 E=64 8 tokens (16: 161 VGPRs, occupancy
#   3), fp32 E=128 4 and 8 tokens (8: 154, occupancy 3; 16: 274, occupancy 1), bf16 E=128
#   32 tokens (64: 148).
# * fp32 E=128 above 8192 tokens (the checked rounds of 2026-12-01): the CUDA row, 8 tokens
#   with 8 row groups, spills SGPRs on every AMD target (gfx942: 27, gfx90a: 32, gfx950: 25,
#   it also keeps a 144-byte stack on sm_90), so hip halves it to 4 tokens with 4 groups
#   (no spill on gfx90a/942/950; on the H200 that row ran 74.8 us at T=262144 vs 64.7).
#   With these rows no gfx90a/gfx942/gfx950 compile spills or uses scratch
#   (the table above; tests/routing/test_compile_matrix.py re-checks every CI run). Not covered: an
#   E that is not a multiple of 16 (E=100) loses the vector loads and spills in the large
#   buckets with these rows and with the CUDA ones (compile_resources_..._unaligned_E100.md).
_HIP_TABLE: dict[tuple[bool, int], tuple[LaunchConfig, ...]] = {
    (True, 64): (
        _C(1, 1, scale_pick="in_row", values_by_reduction=True),
        _C(2, 2, fp32_select="exact", scale_pick="in_row"),
        _C(8, 1, row_groups=2, **_MEM),
        _C(8, 1, row_groups=2, **_MEM),
        _C(8, 1, row_groups=4),
        _C(8, 1, row_groups=4),
    ),
    (True, 128): (
        _C(1, 1, scale_pick="in_row", values_by_reduction=True),
        _C(1, 1, scale_pick="in_row", values_by_reduction=True),
        _C(2, 2, fp32_select="exact"),
        _C(8, 1, row_groups=8, fp32_select="exact"),
        _C(4, 1, row_groups=4),
        _C(4, 1, row_groups=4),
    ),
    (True, 256): (
        _C(1, 1),
        _C(1, 1),
        _C(1, 1),
        _C(1, 1),
        _C(4, 1, row_groups=2, **_MEM),
        _C(8, 1, **_MEM),
    ),
    (False, 64): (
        _C(2, 2),
        _C(2, 2),
        _C(32, 2, row_groups=2),
        _C(32, 2, row_groups=2),
        _C(32, 1, row_groups=4),
        _C(64, 2, row_groups=4),
    ),
    (False, 128): (
        _C(2, 2),
        _C(4, 4),
        _C(16, 1, row_groups=4),
        _C(16, 1, row_groups=4),
        _C(32, 2, row_groups=4),
        _C(32, 2, row_groups=4),
    ),
    (False, 256): (
        _C(1, 1),
        _C(2, 2),
        _C(8, 1, row_groups=4),
        _C(8, 1, row_groups=4),
        _C(8, 1, row_groups=4),
        _C(8, 1, row_groups=4),
    ),
}

# TRITON_INTERPRET=1 on CPU tensors pays ~0.3 s per program: as few programs as sensible.
_INTERPRETER_TILE = 1 << 16


def token_bucket(num_tokens: int) -> int:
    """Index of the launch-table bucket that ``num_tokens`` falls in (GPU platforms)."""
    for index, bound in enumerate(_TOKEN_BUCKETS):
        if num_tokens <= bound:
            return index
    return len(_TOKEN_BUCKETS)


def pick_launch_config(
    num_tokens: int, block_e: int, platform: str, fp32_logits: bool = True, topk: int = 8
) -> LaunchConfig:
    """Return the launch shape for ``num_tokens`` rows of ``block_e`` (a power of 2) logits.

    On GPU platforms it depends on ``num_tokens`` only through
    :func:`token_bucket` (the launcher caches per bucket)."""
    if platform == "interpreter":
        tokens = max(1, min(_INTERPRETER_TILE // block_e, 128, num_tokens))
        return LaunchConfig(
            1 << (tokens - 1).bit_length(), 4, register_picks=topk <= MAX_REGISTER_PICKS
        )
    return table_config(token_bucket(num_tokens), block_e, platform, fp32_logits, topk)


@functools.lru_cache(maxsize=256)
def table_config(
    bucket: int, block_e: int, platform: str, fp32_logits: bool, topk: int = 8
) -> LaunchConfig:
    """The launch shape for a :func:`token_bucket` on a GPU ``platform`` (cuda and xpu:
    the swept table; hip: its own rows, see ``_HIP_TABLE``), valid for ``topk`` (see
    :func:`check_config`)."""
    table = _HIP_TABLE if platform == "hip" else _CUDA_TABLE
    if block_e < 64:
        # Fewer experts than swept: keep the E=64 work per program, more tokens.
        base = table[(fp32_logits, 64)][bucket]
        config = LaunchConfig(
            min(128, base.tokens_per_program * (64 // block_e)),
            base.num_warps,
            base.register_picks,
        )
    elif block_e > 256:
        # Wider rows than swept: one token per program, ~256 logits per warp.
        config = LaunchConfig(1, min(8, block_e // 256))
    else:
        config = table[(fp32_logits, block_e)][bucket]
    if topk > MAX_REGISTER_PICKS:
        config = replace(config, register_picks=False)
    return config
