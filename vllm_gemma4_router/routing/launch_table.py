"""Launch parameters for the routing kernel, per platform, chosen offline.

No autotuning happens at run time (CUDA-graph capture must stay safe and the
first call must not stall): the launcher looks the parameters up here, in rows
read once at import from ``tables/cuda.json`` and ``tables/hip.json`` (package
data). Each row names the sweep it comes from (command, device, versions, date,
raw results under ``benchmarks/results/``); ``benchmarks/results/launch_tables.md``
tells the history. XPU reuses the CUDA rows until swept on its hardware; ROCm has
its own rows, reasoned from offline gfx942 compiles (a ROCm "warp" is 64 lanes, so
the same ``num_warps`` means twice the threads there).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from importlib.resources import files

from vllm_gemma4_router.routing.table_files import (
    Source,
    config_from,
    fail,
    read_table,
)

#: Register picks unroll their K rounds and hold [tokens, K] tiles: above this K
#: the memory path's runtime loop is used (E=256, K=256 took minutes to compile
#: with register picks on an H100).
MAX_REGISTER_PICKS = 16

FP32_SELECTS = ("checked", "exact", "checked_rows")
SCALE_PICKS = ("after", "per_pick", "in_row")


@dataclass(frozen=True)
class LaunchConfig:
    """How one launch is shaped: exactly what the kernel compiles (see
    :func:`check_launch_config`)."""

    tokens_per_program: int
    num_warps: int
    #: keep the K picks in registers (no store/barrier/reload before the weights);
    #: False stores each pick and reads them back (any K)
    register_picks: bool = True
    #: load each row as this many pieces (kernel._load_rows_grouped): fewer lanes
    #: per row, more rows per instruction; 1 is a plain row
    row_groups: int = 1
    #: fp32 logits: "checked" narrow rounds with in-register repair, "checked_rows"
    #: the same rounds with faulty rows redone one at a time from memory (fewer
    #: registers), or "exact" rounds (two reductions each); the memory path is always
    #: exact for fp32
    fp32_select: str = "checked"
    #: how each pick's per_expert_scale is read (kernel_select.SCALE_*)
    scale_pick: str = "after"
    #: checked fp32: take each pick's exact logit by a row reduction, not a load
    values_by_reduction: bool = False


def check_launch_config(config: LaunchConfig, block_e: int, logit_bytes: int, topk: int) -> None:
    """Raise ``ValueError`` if ``config`` cannot run as written for this shape.

    Row groups must leave each piece at least one 16-byte load wide and give the
    pieces' lanes to tokens only: when lanes are left over for the groups axis
    (tokens x lanes per piece < 32), triton 3.6 miscompiles the rounds on the GPU
    (wrong ids on an H100; the interpreter is right)."""
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

#: The BLOCK_E widths a table holds rows for (narrower and wider ones are derived).
TABLE_WIDTHS = (64, 128, 256)

Table = dict[tuple[bool, int], tuple[LaunchConfig, ...]]

_ROW_FIELDS = {"fp32_logits": bool, "block_e": int, "bucket": int, "config": dict}


def table_file(platform: str) -> Source:
    """The packaged table file of a GPU ``platform``'s rows (xpu: the CUDA rows)."""
    return files(__package__) / "tables" / ("hip.json" if platform == "hip" else "cuda.json")


def load_launch_table(source: Source) -> tuple[tuple[int, ...], Table]:
    """``(token bucket bounds, {(fp32 logits?, BLOCK_E): one LaunchConfig per bucket})``
    read from the table file ``source``; raises ``LaunchTableError`` (a ``ValueError``)
    naming the file if it is missing or breaks its schema: every (dtype, width, bucket)
    exactly once, each config complete and valid for its width and dtype (any
    ``topk <= MAX_REGISTER_PICKS``)."""
    name = str(source)
    data = read_table(source, "routing", _ROW_FIELDS)
    bounds = tuple(data["token_bucket_bounds"])
    num_buckets = len(bounds) + 1
    cells: dict[tuple[bool, int, int], LaunchConfig] = {}
    for index, row in enumerate(data["rows"]):
        where = f"rows[{index}]"
        fp32, block_e, bucket = row["fp32_logits"], row["block_e"], row["bucket"]
        if block_e not in TABLE_WIDTHS or not 0 <= bucket < num_buckets:
            fail(
                name,
                where,
                f"block_e must be one of {TABLE_WIDTHS}, bucket in 0..{num_buckets - 1}",
            )
        if (fp32, block_e, bucket) in cells:
            fail(name, where, f"a second row for {(fp32, block_e, bucket)}")
        config = config_from(name, f"{where}.config", row["config"], LaunchConfig)
        try:
            check_launch_config(config, block_e, 4 if fp32 else 2, 1)
        except ValueError as exc:
            fail(name, f"{where}.config", str(exc))
        cells[fp32, block_e, bucket] = config
    keys = [(fp32, e) for fp32 in (True, False) for e in TABLE_WIDTHS]
    missing = [(*k, b) for k in keys for b in range(num_buckets) if (*k, b) not in cells]
    if missing:
        fail(name, "rows", f"no row for (fp32_logits, block_e, bucket) {missing}")
    return bounds, {k: tuple(cells[(*k, b)] for b in range(num_buckets)) for k in keys}


def _load_tables() -> tuple[tuple[int, ...], Table, Table]:
    cuda_bounds, cuda = load_launch_table(table_file("cuda"))
    hip_bounds, hip = load_launch_table(table_file("hip"))
    if hip_bounds != cuda_bounds:
        fail(
            str(table_file("hip")), "token_bucket_bounds", f"must be the CUDA table's {cuda_bounds}"
        )
    return cuda_bounds, cuda, hip


# Upper token bounds of the buckets (tiny decode, decode, small prefill in two
# buckets, prefill, large prefill) and the rows: read once, here, never on a call.
_BUCKET_BOUNDS, _CUDA_TABLE, _HIP_TABLE = _load_tables()

#: Number of token buckets (valid bucket indices are 0 .. NUM_BUCKETS - 1).
NUM_BUCKETS = len(_BUCKET_BOUNDS) + 1

# TRITON_INTERPRET=1 on CPU tensors pays ~0.3 s per program: as few programs as sensible.
_INTERPRETER_TILE = 1 << 16


def token_bucket(num_tokens: int) -> int:
    """Index of the launch-table bucket that ``num_tokens`` falls in (GPU platforms)."""
    for index, bound in enumerate(_BUCKET_BOUNDS):
        if num_tokens <= bound:
            return index
    return len(_BUCKET_BOUNDS)


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
    return bucket_launch_config(token_bucket(num_tokens), block_e, platform, fp32_logits, topk)


@functools.lru_cache(maxsize=256)
def bucket_launch_config(
    bucket: int, block_e: int, platform: str, fp32_logits: bool, topk: int = 8
) -> LaunchConfig:
    """The launch shape for a :func:`token_bucket` on a GPU ``platform`` (cuda and xpu:
    the swept rows; hip: its own rows, ``tables/hip.json``), valid for ``topk`` (see
    :func:`check_launch_config`)."""
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


def bucket_bounds() -> tuple[int, ...]:
    """Upper token bounds of the GPU buckets (the last bucket, above them, is open)."""
    return _BUCKET_BOUNDS
