"""Compile the routing kernel before serving: every launch the op can make up to a token budget.

Triton compiles one kernel per set of constexprs (for this op: one launch-table
row) and per specialisation of its integer arguments: whether each is 1, a
multiple of 16, or neither. The token count ``T`` is such an argument. vLLM runs
the model eagerly only at the sizes it compiles and captures in CUDA graphs, so a
later prefill of another size, or one reaching another bucket, would compile in
the serving hot path (vLLM's JIT monitor logs it). Launching once per
(bucket, specialisation) pair up to ``max_tokens`` covers every later call of the
same shapes, strides and dtypes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

SPECIALISATION_MULTIPLE = 16
#: Device types whose kernels Triton compiles (elsewhere the ops run the interpreter or torch).
COMPILED_DEVICE_TYPES = ("cuda", "xpu")


def specialisation_token_counts(first: int, last: int) -> list[int]:
    """The fewest token counts in ``first..last`` (inclusive, ``1 <= first``) that reach
    every specialisation Triton makes of an integer there: 1, a multiple of 16, and any
    other count; each the smallest of its class in the range. Empty when ``last < first``."""
    if first < 1:
        raise ValueError(f"first must be >= 1, got {first}")
    counts = []
    if first == 1 <= last:
        counts.append(1)
    multiple = -(-first // SPECIALISATION_MULTIPLE) * SPECIALISATION_MULTIPLE
    if multiple <= last:
        counts.append(multiple)
    other = max(first, 2)
    while other <= last and other % SPECIALISATION_MULTIPLE == 0:
        other += 1
    if other <= last:
        counts.append(other)
    return sorted(counts)


def warmup_token_counts(bounds: Iterable[int], max_tokens: int) -> list[int]:
    """Token counts ``1..max_tokens`` that reach every (bucket, specialisation) pair.

    ``bounds``: the inclusive upper token bounds of consecutive buckets (any order;
    the last bucket, above them, is open); each bucket is cut at ``max_tokens``."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    edges = sorted({b for b in bounds if 1 <= b < max_tokens} | {max_tokens})
    counts: list[int] = []
    first = 1
    for last in edges:
        counts += specialisation_token_counts(first, last)
        first = last + 1
    return counts


def warmup_masks(
    num_tokens: int, paddings: Sequence[bool], generator: torch.Generator
) -> Iterator[torch.Tensor | None]:
    """Per entry of ``paddings``: ``None`` (no mask) or a fresh random ``[T]`` bool mask on
    ``generator``'s device (a launch with ``HAS_PADDING``)."""
    for padding in paddings:
        yield (
            torch.rand(num_tokens, generator=generator, device=generator.device) < 0.25
            if padding
            else None
        )


def warm_routing(
    num_experts: int,
    topk: int,
    *,
    max_tokens: int,
    device: torch.device,
    scale_dtype: torch.dtype | None = torch.float32,
    logit_dtype: torch.dtype = torch.float32,
    paddings: Sequence[bool] = (False,),
) -> int:
    """Launch ``gemma4_routing_triton`` once per (bucket, specialisation, padding) up to
    ``max_tokens`` rows, on fresh random ``[T, num_experts]`` contiguous logits of
    ``logit_dtype`` (and a ``[E]`` scale of ``scale_dtype``, or none), so that no later
    call of those shapes compiles. ``paddings``: warm without (False) and/or with (True) a
    padding mask. Returns the number of launches; 0 on a device Triton does not compile
    for (CPU, interpreter). Raises what the launcher raises for bad arguments."""
    from vllm_gemma4_router.routing.launch_table import bucket_bounds
    from vllm_gemma4_router.routing.launcher import gemma4_routing_triton

    if device.type not in COMPILED_DEVICE_TYPES:
        return 0
    generator = torch.Generator(device=device).manual_seed(0)
    scale = None
    if scale_dtype is not None:
        scale = torch.rand(num_experts, generator=generator, device=device).to(scale_dtype) + 0.5
    launches = 0
    for num_tokens in warmup_token_counts(bucket_bounds(), max_tokens):
        logits = torch.randn((num_tokens, num_experts), generator=generator, device=device).to(
            logit_dtype
        )
        for is_padding in warmup_masks(num_tokens, paddings, generator):
            gemma4_routing_triton(logits, topk, scale, is_padding=is_padding)
            launches += 1
    return launches
