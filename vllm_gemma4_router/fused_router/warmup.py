"""Compile the fused router's kernels before serving, as ``routing.warmup`` does for the
routing op: once per (table row, GEMM path or CUDA decode token build, specialisation of
``T``) up to a token budget, through the op's own launch path, so that no later call of
the same shapes compiles in the serving hot path."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vllm_gemma4_router.routing.warmup import (
    COMPILED_DEVICE_TYPES,
    warmup_masks,
    warmup_token_counts,
)


def fused_warmup_token_counts(max_tokens: int) -> list[int]:
    """The token counts ``1..max_tokens`` the warm-up calls the op with: one per (table
    row or GEMM-path range, specialisation of T), one per CUDA decode token build, and
    each decode range's largest T (cut at ``max_tokens``)."""
    from vllm_gemma4_router.fused_router.cuda_decode.builds import TOKEN_BUILDS
    from vllm_gemma4_router.fused_router.launch_table import (
        DECODE_PATH,
        GEMM_PATH_TOKENS,
        fused_bucket_bounds,
    )

    bounds = (*fused_bucket_bounds(), GEMM_PATH_TOKENS.start - 1, GEMM_PATH_TOKENS.stop - 1)
    # the CUDA decode path compiles one kernel per build and token build
    for decode, _ in DECODE_PATH.builds:
        bounds += (decode.start - 1, decode.stop - 1,
                   *(t for t in TOKEN_BUILDS if t in decode))  # fmt: skip
    counts = warmup_token_counts(bounds, max_tokens)
    # At a range's largest T a token-tiled build walks to the coarsest tile this GPU needs
    # (launcher.fitting_build), compiling every tile a smaller T of the range may take.
    largest = {min(decode.stop - 1, max_tokens) for decode, _ in DECODE_PATH.builds
               if decode.start <= max_tokens}  # fmt: skip
    return counts + sorted(largest - set(counts))


def warm_fused_router(
    hidden: int,
    num_experts: int,
    topk: int,
    *,
    max_tokens: int,
    device: torch.device,
    dtype: torch.dtype = torch.bfloat16,
    scale_dtype: torch.dtype = torch.float32,
    per_expert_scale_dtype: torch.dtype | None = torch.float32,
    eps: float = 1e-6,
    paddings: Sequence[bool] = (False,),
    operand_tokens: Sequence[tuple[int, int | None]] = (),
) -> int:
    """Run the fused router once per (token bucket or GEMM-path range, specialisation,
    padding) up to ``max_tokens`` rows: fresh random hidden states ``[T, hidden]`` and
    gate weight ``[num_experts, hidden]`` of ``dtype``, scale ``[hidden]`` of
    ``scale_dtype``, per-expert scale ``[num_experts]`` of ``per_expert_scale_dtype`` (or
    none), outputs laid out as the op lays them out (``handover``). ``paddings``: without
    (False) and/or with (True) a padding mask. ``operand_tokens``: inclusive token ranges
    (``last`` ``None``: unbounded) where a split router routes from the gate's operand;
    each call there also routes from an operand as it does
    (``fused_router_into``'s ``operand``), which builds the decode path's operand kernels.
    Returns the number of calls; 0 on a device Triton does not compile for (CPU,
    interpreter)."""
    from vllm_gemma4_router.fused_router.handover import new_packed, unpack
    from vllm_gemma4_router.fused_router.torch_library import fused_router_into

    if device.type not in COMPILED_DEVICE_TYPES:
        return 0
    generator = torch.Generator(device=device).manual_seed(0)

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device)

    weight = (random(num_experts, hidden) * hidden**-0.5).to(dtype)
    scale = (random(hidden).abs() + 0.5).to(scale_dtype)
    pes = None
    if per_expert_scale_dtype is not None:
        pes = (random(num_experts).abs() + 0.5).to(per_expert_scale_dtype)
    calls = 0
    for num_tokens in fused_warmup_token_counts(max_tokens):
        hidden_states = random(num_tokens, hidden).to(dtype)
        for is_padding in warmup_masks(num_tokens, paddings, generator):
            packed = new_packed(num_tokens, num_experts, topk, device)
            out = unpack(packed, num_tokens, num_experts, topk)
            fused_router_into(hidden_states, scale, weight, pes, eps, topk, out, is_padding)
            calls += 1
            if any(first <= num_tokens and (last is None or num_tokens <= last)
                   for first, last in operand_tokens):  # fmt: skip
                x_gate = (hidden_states.float() * hidden**-0.5).to(dtype)
                fused_router_into(hidden_states, scale, weight, pes, eps, topk, out,
                                  is_padding, operand=x_gate)  # fmt: skip
                calls += 1
    return calls
