"""The fused router's launch table: which launch each token count gets, chosen offline.

The rows are gemma-4-26B-A4B's router (H=2816, E=128, K=8, bf16), read once at
import from ``tables/fused.json`` (package data), each naming the sweep it comes
from (command, device, versions, date, raw results under ``benchmarks/results/``).
No autotuning at run time: CUDA-graph capture stays safe and the first call does
not stall. The file also holds the token range where the op computes its contract
with a vendor GEMM plus the routing kernel instead (``GEMM_PATH_TOKENS``: there
whole-row launches stream the whole gate weight per program and lose to the GEMM
path), and that path's launch config (``GEMM_PATH_CONFIG``).
"""

from __future__ import annotations

import bisect
import functools
import math
import os
from collections.abc import Sequence
from importlib.resources import files
from typing import NamedTuple

import torch
import triton

from vllm_gemma4_router.fused_router.cuda_decode.builds import (
    MAX_TOKENS_MMA,
    most_tokens,
    parse_build,
)
from vllm_gemma4_router.routing.kernels.select import FP32_SELECT_VALUES, SCALE_PICK_VALUES
from vllm_gemma4_router.routing.table_files import (
    Source,
    check_fields,
    check_provenance,
    config_from,
    fail,
    read_table,
    sweep_ids,
)

#: Token blocks one counter buffer serves (the split launches are for small T).
MAX_SPLIT_BLOCKS = 1024
#: The register GEMM's product tile (``block_t < 16``): 64 fp32 per thread at 4 warps.
REGISTER_GEMM_MAX_TILE = 8192


class FusedLaunchConfig(NamedTuple):
    """One launch of the fused router: exactly what runs.

    ``block_e < E`` or ``h_slice < H`` splits the GEMM over programs whose
    partial sums the last program per token block adds up and routes;
    otherwise each program owns whole rows. ``block_t < 16`` sums the products in
    registers instead of ``tl.dot`` (any power-of-two ``block_e``, a bounded tile).
    """

    block_t: int
    block_e: int
    block_h: int
    h_slice: int
    num_warps: int
    num_stages: int
    route_t: int = 16
    #: Programmatic dependent launch (NVIDIA sm_90+): the program loads its gate
    #: weight and scale tiles before waiting for the kernel ahead of it, so it
    #: may only serve weights that kernel does not write (vLLM's: loaded once).
    pdl: bool = False
    #: The routing kernel's fp32 selection ("exact" or "checked") and per-pick scale
    #: fetch ("per_pick", "in_row" or "after"): ``routing_constexprs``.
    select: str = "exact"
    scale_pick: str = "per_pick"


class GemmPathConfig(NamedTuple):
    """The GEMM path's two Triton launches: the prologue's rows x H step and warps, the
    epilogue's rows per program, warps and routing (``FusedLaunchConfig.select`` and
    ``scale_pick``)."""

    operand_block_t: int
    operand_block_h: int
    operand_warps: int
    finish_block_t: int
    finish_warps: int
    finish_select: str = "exact"
    finish_scale_pick: str = "per_pick"


def routing_constexprs(select: str, scale_pick: str) -> dict[str, int]:
    """The fused kernels' ``SELECT`` and ``SCALE_PICK`` for a config's names; raises
    ``ValueError`` for a name the routing kernel does not have."""
    if select not in FP32_SELECT_VALUES or scale_pick not in SCALE_PICK_VALUES:
        raise ValueError(
            f"select must be one of {sorted(FP32_SELECT_VALUES)} and scale_pick one of "
            f"{sorted(SCALE_PICK_VALUES)}, got {select!r}, {scale_pick!r}"
        )
    return {"SELECT": FP32_SELECT_VALUES[select], "SCALE_PICK": SCALE_PICK_VALUES[scale_pick]}


def _power_of_two(value: int, least: int = 1) -> bool:
    return value >= least and not value & (value - 1)


def _check_blocks(config: FusedLaunchConfig) -> None:
    if not _power_of_two(config.block_h, 16):
        raise ValueError(f"config.block_h must be a power of two >= 16, got {config.block_h}")
    # Below 16 rows the GEMM runs in registers (no tensor-core tile): any power of two.
    least = 1 if config.block_t < 16 else 16
    for name in ("block_t", "block_e"):
        value = getattr(config, name)
        if not _power_of_two(value, least):
            raise ValueError(f"config.{name} must be a power of two >= {least}, got {value}")
    tile = config.block_t * config.block_h * config.block_e
    if config.block_t < 16 and tile > REGISTER_GEMM_MAX_TILE:
        raise ValueError(
            f"a register GEMM (block_t < 16) holds block_t * block_h * block_e products, "
            f"at most {REGISTER_GEMM_MAX_TILE}; got {tile}"
        )


def _check_shape(config: FusedLaunchConfig) -> None:
    if config.h_slice < config.block_h or config.h_slice % config.block_h:
        raise ValueError(
            f"config.h_slice={config.h_slice} must be a multiple of block_h={config.block_h}"
        )
    if config.num_warps not in (1, 2, 4, 8, 16) or config.num_stages < 1:
        raise ValueError(f"bad num_warps/num_stages in {config}")
    routing_constexprs(config.select, config.scale_pick)


def check_fused_launch_config(
    config: FusedLaunchConfig, num_tokens: int, hidden: int, num_experts: int
) -> None:
    """Raise ``ValueError`` unless ``config`` is a valid launch for this problem."""
    block_e_all = triton.next_power_of_2(num_experts)
    _check_blocks(config)
    if config.block_e > block_e_all:
        raise ValueError(f"config.block_e={config.block_e} exceeds the padded E={block_e_all}")
    _check_shape(config)
    blocks = triton.cdiv(num_tokens, config.block_t)
    if is_split(config, hidden, num_experts) and blocks > MAX_SPLIT_BLOCKS:
        raise ValueError(
            f"a split launch serves at most {MAX_SPLIT_BLOCKS} token blocks, "
            f"got T={num_tokens} with block_t={config.block_t}"
        )


def is_split(config: FusedLaunchConfig, hidden: int, num_experts: int) -> bool:
    """Whether ``config`` splits the GEMM over programs (the last per token block routes)."""
    return config.block_e < triton.next_power_of_2(num_experts) or config.h_slice < hidden


def clip_config(config: FusedLaunchConfig, hidden: int, num_experts: int) -> FusedLaunchConfig:
    """``config`` with its H slice and expert slice no wider than the problem."""
    block_e_all = triton.next_power_of_2(num_experts)
    h_slice = min(config.h_slice, _round_up(hidden, config.block_h))
    return config._replace(block_e=min(config.block_e, block_e_all), h_slice=h_slice)


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def _check_gemm_path_config(config: GemmPathConfig) -> None:
    for name in ("operand_block_t", "operand_block_h", "finish_block_t"):
        if not _power_of_two(getattr(config, name)):
            raise ValueError(f"config.{name} must be a power of two, got {getattr(config, name)}")
    if config.operand_warps not in (1, 2, 4, 8, 16) or config.finish_warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"bad warps in {config}")
    routing_constexprs(config.finish_select, config.finish_scale_pick)


class DecodePath(NamedTuple):
    """The CUDA C++ decode path's share of the table: which build (a
    ``cuda_decode.builds.parse_build`` name) routes which token counts on sm_90+ NVIDIA
    GPUs, as ``(tokens, build)`` pairs in ascending, disjoint token ranges (none: the
    path is off)."""

    builds: tuple[tuple[range, str], ...]

    @property
    def tokens(self) -> range:
        """Every token count some build routes (the ranges join without gaps)."""
        if not self.builds:
            return range(0)
        return range(self.builds[0][0].start, self.builds[-1][0].stop)

    def build_for(self, num_tokens: int) -> str | None:
        """The build that routes ``num_tokens`` rows, or ``None``."""
        for tokens, build in self.builds:
            if num_tokens in tokens:
                return build
        return None


class FusedTable(NamedTuple):
    """A checked fused table file: bucket bounds, one row per bucket, the GEMM path, the
    CUDA decode path."""

    bucket_bounds: tuple[int, ...]
    rows: tuple[FusedLaunchConfig, ...]
    gemm_path_tokens: range
    gemm_path_config: GemmPathConfig
    decode_path: DecodePath


_GEMM_PATH_FIELDS = {"tokens": dict, "tokens_provenance": str, "config": dict, "provenance": str}
_DECODE_BUILD_FIELDS = {"tokens": dict, "build": str, "provenance": str}


def _decode_path(name: str, data: dict, ids: set[str], gemm_tokens: range) -> DecodePath:
    decode = check_fields(name, "cuda_decode", data["cuda_decode"], {"builds": list},
                          {"notes": str})  # fmt: skip
    builds = []
    for index, entry in enumerate(decode["builds"]):
        where = f"cuda_decode.builds[{index}]"
        entry = check_fields(name, where, entry, _DECODE_BUILD_FIELDS)
        check_provenance(name, f"{where}.provenance", entry["provenance"], ids)
        try:
            per_block = parse_build(entry["build"])[1]
        except ValueError as exc:
            fail(name, f"{where}.build", str(exc))
        tokens = check_fields(name, f"{where}.tokens", entry["tokens"], {"first": int, "last": int})
        first, last = tokens["first"], tokens["last"]
        start = builds[-1][0].stop if builds else 1
        if not (start <= first <= last <= MAX_TOKENS_MMA) or (builds and first != start):
            expected = (f"first = {start} (where the last range stopped)" if builds
                        else "1 <= first") + f" <= last <= {MAX_TOKENS_MMA}"  # fmt: skip
            fail(name, f"{where}.tokens", f"expected {expected}, got {tokens}")
        most = most_tokens(per_block)
        if last > most:
            fail(name, f"{where}.tokens", f"build {entry['build']} takes at most {most} tokens")
        builds.append((range(first, last + 1), entry["build"]))
    path = DecodePath(tuple(builds))
    if path.tokens and gemm_tokens and path.tokens.stop > gemm_tokens.start:
        fail(name, "cuda_decode.builds", "must lie below gemm_path.tokens")
    return path


def load_fused_table(source: Source) -> FusedTable:
    """The fused table in the file ``source``; raises ``LaunchTableError`` (a ``ValueError``)
    naming the file if it is missing or breaks its schema: one complete, valid row per
    bucket in order, ``gemm_path`` with ``tokens`` ``{"first", "last"}`` (inclusive)
    and a valid config, ``cuda_decode`` with ``builds``, a list (empty: the path off) of
    token ranges (``{"first", "last"}``, inclusive, the first from 1, each starting where
    the one before stopped, within what the build holds and below the GEMM path's), the
    build that routes each and the sweep that chose it, ``pdl`` (why no row
    sets it), every ``provenance`` naming one of the file's sweeps."""
    name = str(source)
    more = {"gemm_path": dict, "pdl": dict, "cuda_decode": dict}
    data = read_table(source, "fused_router", {"bucket": int, "config": dict}, more)
    bounds = tuple(data["token_bucket_bounds"])
    rows = []
    for index, row in enumerate(data["rows"]):
        where = f"rows[{index}]"
        if row["bucket"] != index:
            fail(name, f"{where}.bucket", f"rows must list buckets in order: expected {index}")
        config = config_from(name, f"{where}.config", row["config"], FusedLaunchConfig)
        try:  # what check_fused_launch_config asks at any problem size
            _check_blocks(config)
            _check_shape(config)
        except ValueError as exc:
            fail(name, f"{where}.config", str(exc))
        if not _power_of_two(config.route_t):
            fail(name, f"{where}.config", f"route_t must be a power of two, got {config.route_t}")
        rows.append(config)
    if len(rows) != len(bounds) + 1:
        fail(name, "rows", f"expected {len(bounds) + 1} rows (one per bucket), got {len(rows)}")
    gemm = check_fields(name, "gemm_path", data["gemm_path"], _GEMM_PATH_FIELDS, {"notes": str})
    ids = sweep_ids(data)
    pdl = check_fields(name, "pdl", data["pdl"], {"provenance": str, "notes": str})
    check_provenance(name, "pdl", pdl["provenance"], ids)
    check_provenance(name, "gemm_path.tokens", gemm["tokens_provenance"], ids)
    check_provenance(name, "gemm_path", gemm["provenance"], ids)
    tokens = check_fields(name, "gemm_path.tokens", gemm["tokens"], {"first": int, "last": int})
    if not 1 <= tokens["first"] <= tokens["last"]:
        fail(name, "gemm_path.tokens", f"expected 1 <= first <= last, got {tokens}")
    config = config_from(name, "gemm_path.config", gemm["config"], GemmPathConfig)
    try:
        _check_gemm_path_config(config)
    except ValueError as exc:
        fail(name, "gemm_path.config", str(exc))
    gemm_tokens = range(tokens["first"], tokens["last"] + 1)
    decode = _decode_path(name, data, ids, gemm_tokens)
    return FusedTable(bounds, tuple(rows), gemm_tokens, config, decode)


def fused_table_file() -> Source:
    """The packaged fused table file."""
    return files(__package__) / "tables" / "fused.json"


# Read once, here: lookups are tuple indexing, no file I/O on a call.
_FUSED_BUCKET_BOUNDS, _FUSED_TABLE, GEMM_PATH_TOKENS, GEMM_PATH_CONFIG, DECODE_PATH = (
    load_fused_table(fused_table_file())
)
#: ``GEMM_PATH_TOKENS``: token counts where the fused op computes its contract with
#: cuBLAS plus the routing kernel instead of this kernel; ``GEMM_PATH_CONFIG``: what
#: that path launches. ``DECODE_PATH``: the token counts the CUDA C++ decode builds
#: route on sm_90+ (the Triton kernel where they cannot), and which build takes which.


def fused_bucket(num_tokens: int, bounds: Sequence[int] | None = None) -> int:
    """Index of the fused table's row for ``num_tokens``; ``bounds``: another table's
    sorted upper token bounds (a sweep's base file) instead of the packaged table's."""
    return bisect.bisect_left(_FUSED_BUCKET_BOUNDS if bounds is None else bounds, num_tokens)


#: Programmatic dependent launch of the table's split rows: "1" on, "0" off, unset
#: (or empty) the table's own choice (no row uses it: measured in CUDA graphs behind
#: a producer kernel it did not pay, see the table file's provenance). Read once, at
#: import. PDL applies only on devices where ``pdl_supported``.
PDL_ENV = "VLLM_GEMMA4_FUSED_PDL"


def pdl_override(value: str | None) -> bool | None:
    """``PDL_ENV``'s value as ``True``/``False``, or ``None`` (unset or empty: the table's)."""
    if value is None or value == "":
        return None
    if value not in ("0", "1"):
        raise ValueError(f"{PDL_ENV} must be '0', '1' or empty, got {value!r}")
    return value == "1"


_PDL_OVERRIDE = pdl_override(os.environ.get(PDL_ENV))


@functools.cache
def pdl_supported(device: torch.device) -> bool:
    """Whether launches on ``device`` can use programmatic dependent launch (CUDA sm_90+)."""
    return (
        device.type == "cuda"
        and torch.version.hip is None
        and torch.cuda.get_device_capability(device)[0] >= 9
    )


def fused_launch_config(
    num_tokens: int, hidden: int, num_experts: int, device: torch.device | None = None
) -> FusedLaunchConfig:
    """The launch config the table gives ``T`` tokens (clipped to ``H``).

    With ``device``, a split row launches with programmatic dependent launch
    when the table (or ``PDL_ENV``) asks for it and ``device`` supports it;
    without ``device``, as the table row says."""
    config = clip_config(_FUSED_TABLE[fused_bucket(num_tokens)], hidden, num_experts)
    if device is None:
        return config
    pdl = config.pdl if _PDL_OVERRIDE is None else _PDL_OVERRIDE
    # Short-circuits: with PDL off (the default) the launch path does no more work.
    pdl = pdl and is_split(config, hidden, num_experts) and pdl_supported(device)
    return config if pdl == config.pdl else config._replace(pdl=pdl)


def fused_bucket_bounds() -> tuple[int, ...]:
    """Upper token bounds of the fused table's rows (the last row, above them, is open)."""
    return _FUSED_BUCKET_BOUNDS
