"""Launch parameters for the routing kernel, per platform, chosen offline.

No autotuning happens at run time (CUDA-graph capture must stay safe and the
first call must not stall): the launcher looks the parameters up here.

Provenance: PROVISIONAL, not from a sweep yet. The values keep a tile at about
4096 logits (32 tokens at E=128) and shrink it to the token count for small
batches. ``benchmarks/sweep_launch_table.py`` (performance issue) replaces
them with measured ones and records device and date here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchConfig:
    """How one launch is shaped."""

    tokens_per_program: int
    num_warps: int


#: Largest number of experts one program holds in a tile row.
MAX_EXPERTS = 4096

# platform -> logits per tile the kernel aims for. "interpreter" (TRITON_INTERPRET=1
# on CPU tensors) pays ~0.3 s per program, so it gets tiles as large as sensible.
_TILE_LOGITS = {"cuda": 4096, "hip": 4096, "xpu": 4096, "interpreter": 1 << 16}


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def pick_launch_config(num_tokens: int, block_e: int, platform: str) -> LaunchConfig:
    """Return the launch shape for ``num_tokens`` rows of ``block_e`` (a power of 2) logits."""
    tile = _TILE_LOGITS.get(platform, _TILE_LOGITS["cuda"])
    tokens = max(1, min(tile // block_e, 128, _next_power_of_2(num_tokens)))
    elements = tokens * block_e
    num_warps = 1 if elements <= 256 else 2 if elements <= 1024 else 4 if elements <= 8192 else 8
    return LaunchConfig(tokens_per_program=tokens, num_warps=num_warps)
