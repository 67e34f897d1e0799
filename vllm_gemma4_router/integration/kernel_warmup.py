"""Compile the plugin's Triton kernels when vLLM builds a Gemma 4 model, before it serves.

vLLM runs the model eagerly only at the batch sizes it compiles for and captures
in CUDA graphs. A Triton kernel first met at another size (a prefill chunk of an
odd length, a bucket no capture size reaches) would compile in the serving hot
path: seconds for that request, and vLLM's JIT monitor logs it. So at model
construction each op's kernels are launched once per launch-table row and
specialisation of the token count, up to ``max_num_batched_tokens``
(``routing.warmup``, ``fused_router.warmup``): once per process and shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from vllm_gemma4_router.integration.gemma4_layouts import (
    FUSED_PLAN_ATTRIBUTE,
    OP_ATTRIBUTE,
    PADDING_MASK_ATTRIBUTE,
)
from vllm_gemma4_router.log_contract import (
    kernels_warmed_line,
    kernels_warmup_failed_line,
    logger,
)
from vllm_gemma4_router.routing.warmup import COMPILED_DEVICE_TYPES

_TRITON_FORWARDS = ("forward_cuda", "forward_hip", "forward_xpu")
_GPU_DEVICES = COMPILED_DEVICE_TYPES
# (op, its warm-up's keywords) pairs this process has warmed.
_warmed: set[tuple] = set()


def _keyed(op: str, kwargs: dict) -> tuple[tuple, dict]:
    """``(key, kwargs)``: a warm-up keyed by its op and every keyword it takes."""
    return (op, *sorted(kwargs.items())), kwargs


def routing_warmups(model: torch.nn.Module, topk: int) -> dict[tuple, dict]:
    """The distinct ``routing.warmup.warm_routing`` keyword sets ``model``'s routing ops
    need: per ``per_expert_scale`` owner whose op runs a Triton forward on a GPU device,
    keyed by what the launches depend on (experts, scale dtype, device, padding)."""
    calls: dict[tuple, dict] = {}
    for owner in model.modules():
        op = getattr(owner, OP_ATTRIBUTE, None)
        scale = getattr(owner, "per_expert_scale", None)
        if getattr(op, "dispatch", None) not in _TRITON_FORWARDS or not isinstance(
            scale, torch.Tensor
        ):
            continue
        if scale.device.type not in _GPU_DEVICES:
            continue
        padding = PADDING_MASK_ATTRIBUTE in owner.__dict__
        key, kwargs = _keyed(
            "gemma4_routing",
            dict(
                num_experts=scale.numel(),
                topk=topk,
                device=scale.device,
                scale_dtype=scale.dtype,
                paddings=(False, True) if padding else (False,),
            ),
        )
        calls[key] = kwargs
    return calls


def _own_tokens(router: torch.nn.Module, plan) -> tuple[tuple[int, int | None], ...]:
    """The token counts at which a split router (its gate registered) runs its own
    kernels; ``()`` for a router that does not split."""
    from vllm_gemma4_router.integration.fused_or_gate import OWN_TOKENS_ATTRIBUTE

    if plan.gate_name is None:
        return ()
    return tuple(getattr(getattr(router, "proj", None), OWN_TOKENS_ATTRIBUTE, ()))


def fused_warmups(model: torch.nn.Module, padding: bool) -> dict[tuple, dict]:
    """The distinct ``fused_router.warmup.warm_fused_router`` keyword sets ``model``'s
    fused routers need (routers with a fused plan, gate weight on a GPU device)."""
    calls: dict[tuple, dict] = {}
    for router in model.modules():
        plan = router.__dict__.get(FUSED_PLAN_ATTRIBUTE)
        if plan is None:
            continue
        weight = plan.loaded_gate_weight
        scale = getattr(router, "scale", None)
        if weight.device.type not in _GPU_DEVICES or not isinstance(scale, torch.Tensor):
            continue
        pes = plan.per_expert_scale()
        num_experts, hidden = weight.shape
        key, kwargs = _keyed(
            "gemma4_fused_router",
            dict(
                hidden=hidden,
                num_experts=num_experts,
                topk=plan.topk,
                device=weight.device,
                dtype=weight.dtype,
                scale_dtype=scale.dtype,
                per_expert_scale_dtype=None if pes is None else pes.dtype,
                eps=plan.eps,
                paddings=(False, True) if padding else (False,),
                # a split router routes its own counts from the gate's operand
                operand_tokens=_own_tokens(router, plan),
            ),
        )
        calls[key] = kwargs
    return calls


def _run(key: tuple, warm: Callable[..., int], kwargs: dict, max_tokens: int) -> None:
    if key in _warmed:
        return
    _warmed.add(key)
    op = key[0]
    start = time.perf_counter()
    try:
        calls = warm(max_tokens=max_tokens, **kwargs)
        if kwargs["device"].type == "cuda":
            torch.cuda.synchronize(kwargs["device"])
    except (RuntimeError, ValueError, TypeError, ImportError) as exc:
        logger.warning(kernels_warmup_failed_line(op, repr(exc)))
        return
    if calls:
        logger.info(kernels_warmed_line(op, calls, max_tokens, time.perf_counter() - start))


def warm_model_kernels(model: torch.nn.Module, max_tokens: int) -> None:
    """Compile every Triton kernel ``model``'s plugin ops can launch for up to
    ``max_tokens`` rows (vLLM's ``max_num_batched_tokens``); one log line per op and
    shape, a warning (and a compile at first use) if it fails. Does nothing for a model
    without a ``config.top_k_experts`` or on a device Triton does not compile for."""
    from vllm_gemma4_router.fused_router.warmup import warm_fused_router
    from vllm_gemma4_router.routing.padding import padding_source
    from vllm_gemma4_router.routing.warmup import warm_routing

    topk = getattr(getattr(model, "config", None), "top_k_experts", None)
    if not isinstance(topk, int) or max_tokens < 1:
        return
    for key, kwargs in routing_warmups(model, topk).items():
        _run(key, warm_routing, kwargs, max_tokens)
    for key, kwargs in fused_warmups(model, padding_source() is not None).items():
        _run(key, warm_fused_router, kwargs, max_tokens)
