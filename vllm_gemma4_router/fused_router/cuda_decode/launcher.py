"""The CUDA C++ decode path on the host: which calls it takes, its build (NVRTC through
torch, once per build and shape, cached), and the launch.

Only torch is needed: ``torch.cuda._compile_kernel`` runs NVRTC from the CUDA runtime
torch ships with, and the launch goes through the driver (``driver``). Where anything of
that is missing or fails (an older torch, no NVRTC, a compile error, a device without
thread-block clusters), :func:`decode_kernel` says so in one log line per build and
returns ``None``, and the caller runs the Triton kernel instead.
"""

from __future__ import annotations

import functools
import math
from contextlib import nullcontext

import torch

from vllm_gemma4_router.fused_router.cuda_decode.builds import (
    KERNEL_NAME,
    MAX_CLUSTER,
    SOURCE,
    build_macros,
    fitting_build,
    launch_shape,
    parse_build,
)
from vllm_gemma4_router.fused_router.cuda_decode.driver import (
    allow_large_clusters,
    launch,
    max_active_clusters,
)
from vllm_gemma4_router.fused_router.launch_table import pdl_supported
from vllm_gemma4_router.log_contract import (
    cluster_query_failed_line,
    decode_build_unavailable_line,
    logger,
)


def device_runs_decode_path(device: torch.device) -> bool:
    """Whether ``device`` is an NVIDIA GPU of sm_90 or later: thread-block clusters,
    distributed shared memory and ``griddepcontrol`` came with sm_90, as PDL did (the
    launch table's cached ``pdl_supported``)."""
    return pdl_supported(device)


def decode_path_takes(
    build: str,
    hidden_states: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    topk: int,
    *,
    prenormed: bool = False,
) -> bool:
    """Whether ``build`` (a :func:`~.builds.parse_build` name) can route this call: an
    sm_90+ device; ``hidden_states`` [T, H] and ``gate_weight`` [E, H] bf16 with unit
    column stride and 16-byte aligned rows; ``scale`` [H] contiguous bf16 or fp32, 16-byte
    aligned; ``per_expert_scale`` [E] contiguous fp32 (bf16 too for the ``p`` builds) or
    ``None``; and a token build of
    ``build`` that holds T rows of this shape (``prenormed``: a tensor-core build, taking
    the gate's operand for ``hidden_states``). Host-side checks only: no device sync."""
    if not device_runs_decode_path(hidden_states.device):
        return False
    for tensor in (hidden_states, gate_weight):
        if (
            tensor.dtype != torch.bfloat16
            or tensor.stride(1) != 1
            or tensor.stride(0) % 8
            or tensor.data_ptr() % 16
        ):
            return False
    if scale.dtype not in (torch.bfloat16, torch.float32):
        return False
    if not scale.is_contiguous() or scale.data_ptr() % 16:
        return False
    if per_expert_scale is not None and not per_expert_scale.is_contiguous():
        return False
    shape = (hidden_states.shape[0], *gate_weight.shape[::-1], topk)
    pes_dtype = _pes_dtype(per_expert_scale)
    return _macros(build, *shape, scale.dtype, pes_dtype, prenormed) is not None


def _pes_dtype(per_expert_scale: torch.Tensor | None) -> torch.dtype:
    return torch.float32 if per_expert_scale is None else per_expert_scale.dtype


@functools.cache
def _macros(
    build: str,
    num_tokens: int,
    hidden: int,
    num_experts: int,
    topk: int,
    scale_dtype: torch.dtype,
    pes_dtype: torch.dtype = torch.float32,
    prenormed: bool = False,
) -> tuple[tuple[str, int], ...] | None:
    warps, per_block, flags = parse_build(build)
    try:
        macros = build_macros(warps, hidden, num_experts, topk, scale_dtype, per_block,
                              max_tokens=launch_shape(num_tokens, flags["token_tiles"])[0],
                              pes_dtype=pes_dtype, prenormed=prenormed, **flags)  # fmt: skip
    except (ValueError, TypeError):
        return None
    return tuple(macros.items())


@functools.cache
def decode_kernel(macros: tuple[tuple[str, int], ...], device_index: int | None = None):
    """The kernel of one build (``build_macros`` items), compiled with NVRTC and loaded on
    CUDA device ``device_index`` (the current one if ``None``: a loaded kernel belongs to
    one device's context); ``None``, logged once, where it cannot be built or loaded."""
    options = [f"-D{name}={value}" for name, value in macros]
    try:
        from torch.cuda import _compile_kernel

        on_device = nullcontext() if device_index is None else torch.cuda.device(device_index)
        with on_device:
            kernel = _compile_kernel(SOURCE.read_text(), KERNEL_NAME, nvcc_options=options)
        if dict(macros)["CS"] > MAX_CLUSTER // 2:
            allow_large_clusters(kernel)
    except Exception as exc:  # noqa: BLE001 -- any failure means: use the Triton kernel
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        logger.warning(
            decode_build_unavailable_line(str(dict(macros)), f"{type(exc).__name__}: {first_line}")
        )
        return None
    return kernel


#: what :func:`clusters_at_once` answers where the driver cannot: every launch fits
UNKNOWN_CAPACITY = 1 << 30


@functools.cache
def clusters_at_once(macros: tuple[tuple[str, int], ...], device_index: int | None) -> int | None:
    """How many clusters of the build ``macros`` CUDA device ``device_index`` runs at once
    (:func:`~.driver.max_active_clusters`, asked once per build and device); ``None``
    where the build is unavailable. Where the driver cannot answer, one log line, and
    every launch counts as fitting (the launch itself still runs)."""
    kernel = decode_kernel(macros, device_index)
    if kernel is None:
        return None
    constants = dict(macros)
    on_device = nullcontext() if device_index is None else torch.cuda.device(device_index)
    try:
        with on_device:
            block = (32 * constants["NW"], 1, 1)
            return max_active_clusters(kernel, (constants["CS"], 1, 1), block)
    except Exception as exc:  # noqa: BLE001 -- an old driver: launch as the table says
        logger.warning(cluster_query_failed_line(str(constants), f"{type(exc).__name__}: {exc}"))
        return UNKNOWN_CAPACITY


def launch_decode(
    build: str,
    hidden_states: torch.Tensor,
    scale: torch.Tensor,
    gate_weight: torch.Tensor,
    per_expert_scale: torch.Tensor | None,
    eps: float,
    topk: int,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    is_padding: torch.Tensor | None = None,
    *,
    pdl: bool = False,
    stage: int = 4,
    fit_tiles: bool = True,
    prenormed: bool = False,
) -> bool:
    """Route with ``build`` into ``out = (logits [T, E] fp32, weights [T, K] fp32, ids [T, K]
    int32)``, the fused router's contract (equal logits to the lower id, rows sorted by
    weight, K distinct ids in [0, E) for any input bits; ``is_padding`` [T] bool/uint8
    rows get ids -1 and weights 0). Returns ``False``, launching nothing, where
    :func:`decode_path_takes` refuses the call, the build is unavailable, or no tile of a
    token-tiled build puts all of the launch's clusters on the GPU at once (a coarser
    tile than the table's is taken where that one fits: :func:`~.builds.fitting_build`).

    The cluster builds (``c``) keep no state between launches; the others share one
    counter per device, so their launches must be stream-ordered. ``pdl``: launch with
    programmatic dependent launch; ``stage`` < 4 stops after a stage (benchmarks' stage
    ablation: incomplete outputs); ``fit_tiles=False`` launches ``build``'s own tile even
    where its clusters run in waves (benchmarks timing a build by name). ``prenormed``:
    ``hidden_states`` is the gate's operand (normed and scaled by vLLM's router) and the
    logits are its plain dot products with the gate rows (``scale`` and ``eps`` unread),
    as vLLM's gate computes them; a tensor-core build only."""
    if not decode_path_takes(build, hidden_states, scale, gate_weight, per_expert_scale, topk,
                             prenormed=prenormed):  # fmt: skip
        return False
    num_tokens, hidden = hidden_states.shape
    shape = (num_tokens, hidden, gate_weight.shape[0], topk, scale.dtype,
             _pes_dtype(per_expert_scale), prenormed)  # fmt: skip
    device_index = hidden_states.device.index

    def capacity(name: str) -> int | None:
        named = _macros(name, *shape)
        return None if named is None else clusters_at_once(named, device_index)

    # A token-tiled build whose clusters do not all fit at once takes a coarser tile
    # (all of them compiled by the warm-up's call at the range's largest T).
    if fit_tiles:
        build = fitting_build(build, num_tokens, capacity)
    if build is None:
        return False
    macros = _macros(build, *shape)
    num_experts = gate_weight.shape[0]
    if stage != 4:
        macros = tuple((k, stage if k == "STAGE" else v) for k, v in macros)
    kernel = decode_kernel(macros, device_index)
    if kernel is None:
        return False
    constants = dict(macros)
    logits, weights, ids = out
    padding = ids if is_padding is None else is_padding.view(torch.uint8)
    pes = weights if per_expert_scale is None else per_expert_scale
    # the cluster builds never touch the counter: no allocation on their path
    counter = ids if constants["CLUSTER"] else _counter(hidden_states.device)
    # a token-tiled build: one cluster per TMAX rows, along y
    tiles = math.ceil(num_tokens / constants["TMAX"]) if constants["TOKEN_TILES"] else 1
    launch(
        kernel,
        (math.ceil(num_experts / constants["EPB"]), tiles, 1),
        (32 * constants["NW"], 1, 1),
        [
            hidden_states, hidden_states.stride(0), scale, gate_weight, gate_weight.stride(0),
            pes, int(per_expert_scale is not None), float(eps), float(hidden**-0.5),
            logits, logits.stride(0), weights, weights.stride(0), ids, ids.stride(0),
            padding, int(is_padding is not None), counter,
            num_tokens, hidden, num_experts, topk,
        ],
        pdl=pdl,
    )  # fmt: skip
    return True


_COUNTERS: dict[torch.device, torch.Tensor] = {}


def _counter(device: torch.device) -> torch.Tensor:
    # The counter builds' last-block election; zeroed once, every launch leaves it at zero.
    counter = _COUNTERS.get(device)
    if counter is None:
        counter = _COUNTERS[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return counter
