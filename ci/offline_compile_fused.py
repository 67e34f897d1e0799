"""Compile the fused router kernel offline (no GPU) for sm_90 and gfx942 and read its resources.

``python ci/offline_compile_fused.py`` compiles every distinct row of the fused
router's launch table and two register-GEMM configs (``block_t < 16``) for
gemma-4-26B-A4B's router (H=2816, E=128, K=8, bf16) exactly as
``fused_router.launcher.launch_with_config`` would launch it, and the GEMM
path's prologue and epilogue kernels as ``fused_router_gemm`` launches them
(sm_90 also the split rows with ``pdl``), and prints one JSON object per
(target, kernel): registers, spills, scratch. ``--candidates 1,16,...`` compiles
instead every config ``benchmarks/tuning/sweep_fused_router.py`` would time at those T,
so a device sweep meets no config that fails to build or spills; ``--padding``
compiles them with vLLM's padding mask (``HAS_PADDING``; without it, as launched
with no mask). Each compile is specialised as
Triton's launcher specialises a contiguous launch (ints equal to 1 become
constexprs; pointers and multiples of 16 are marked 16-divisible), so the weight
loads vectorise as on the GPU. It runs in its own process because the test suite
imports Triton kernels under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "ci")]

HIDDEN, EXPERTS, TOPK = 2816, 128, 8
_POINTERS = {
    "x_ptr": "*bf16",
    "scale_ptr": "*bf16",
    "w_ptr": "*bf16",
    "pes_ptr": "*fp32",
    "logits_ptr": "*fp32",
    "weights_ptr": "*fp32",
    "ids_ptr": "*i32",
    "partial_ptr": "*fp32",
    "partial_sumsq_ptr": "*fp32",
    "counter_ptr": "*i32",
    "padding_ptr": "*u8",
    "operand_ptr": "*bf16",
    "sumsq_ptr": "*fp32",
    "sums_ptr": "*fp32",
    "eps": "fp32",
    "inv_sqrt_hidden": "fp32",
}


def _typical_ints(num_tokens: int) -> dict[str, int]:
    """The int arguments of a contiguous launch for gemma-4-26B-A4B's router at ``T``."""
    return {
        "num_tokens": num_tokens,
        "hidden": HIDDEN,
        "num_experts": EXPERTS,
        "stride_xt": HIDDEN,
        "stride_xh": 1,
        "stride_s": 1,
        "stride_we": HIDDEN,
        "stride_wh": 1,
        "stride_pes": 1,
        "stride_lt": EXPERTS,
        "stride_le": 1,
        "stride_wt": TOPK,
        "stride_wk": 1,
        "stride_it": TOPK,
        "stride_ik": 1,
        "stride_ot": HIDDEN,
        "stride_st": EXPERTS,
    }


def _specialised(kernel, constants: dict, num_tokens: int, backend) -> Any:
    """``ASTSource(kernel, ...)`` as the launcher would specialise a contiguous launch."""
    from offline_compile import launcher_specialisation
    from triton.compiler import ASTSource

    arg_types = {arg: _POINTERS.get(arg, "i32") for arg in kernel.arg_names}
    signature, constants, divisible = launcher_specialisation(
        kernel.arg_names, arg_types, _typical_ints(num_tokens), constants
    )
    attrs = {(kernel.arg_names.index(arg),): backend.parse_attr("D") for arg in divisible}
    return ASTSource(kernel, dict(signature), constants, attrs)


def _kernel_constants(config, padding: bool = False) -> dict[str, Any]:
    """The fused kernel's constexprs for ``config`` at gemma-4-26B-A4B's router shape
    (``padding``: with vLLM's padding mask, ``HAS_PADDING``)."""
    import triton

    from vllm_gemma4_router.fused_router.kernels.entry import OPERAND_BF16
    from vllm_gemma4_router.fused_router.launch_table import routing_constexprs

    return {
        "TOPK": TOPK,
        "BLOCK_T": config.block_t,
        "BLOCK_E": config.block_e,
        "BLOCK_E_ALL": triton.next_power_of_2(EXPERTS),
        "BLOCK_H": config.block_h,
        "H_SLICE": config.h_slice,
        "H_SLICES": triton.cdiv(HIDDEN, config.h_slice),
        "BLOCK_K": triton.next_power_of_2(TOPK),
        "ROUTE_T": min(config.block_t, config.route_t),
        "HAS_SCALE": True,
        "OPERAND": OPERAND_BF16.value,
        "PDL": config.pdl,
        **routing_constexprs(config.select, config.scale_pick),
        "HAS_PADDING": padding,
    }


def _table_work() -> tuple[list, list]:
    """Every distinct table row (NVIDIA also each split row with ``pdl``), the register
    GEMM's two extremes (``block_t < 16``: no table row uses it yet) and the op's
    GEMM-path config."""
    from vllm_gemma4_router.fused_router.launch_table import (
        _FUSED_TABLE,
        GEMM_PATH_CONFIG,
        FusedLaunchConfig,
        clip_config,
    )

    rows = []
    for config in _FUSED_TABLE:
        config = clip_config(config, HIDDEN, EXPERTS)
        if config not in rows:
            rows.append(config)
    rows += [c._replace(pdl=True) for c in rows if c.block_t <= 16 and not c.pdl]
    # A program per expert over the whole H, and the largest product tile allowed.
    for probe in (
        FusedLaunchConfig(1, 1, 1024, 2**31, 4, 2),
        FusedLaunchConfig(8, 4, 256, 512, 4, 2),
    ):
        rows.append(clip_config(probe, HIDDEN, EXPERTS))
    return rows, [GEMM_PATH_CONFIG]


def _candidate_work(tokens: list[int]) -> tuple[list, list]:
    """Every distinct config ``benchmarks/tuning/sweep_fused_router.py`` times at ``tokens``."""
    import torch

    from benchmarks.tuning.candidates import candidate_configs, gemm_path_candidates
    from vllm_gemma4_router.fused_router.launch_table import GEMM_PATH_TOKENS

    rows: list = []
    gemm: list = []
    for num_tokens in tokens:
        for config in candidate_configs(num_tokens, HIDDEN, EXPERTS, TOPK, torch.bfloat16):
            if config not in rows:
                rows.append(config)
        if num_tokens in GEMM_PATH_TOKENS:
            gemm += [c for c in gemm_path_candidates(HIDDEN) if c not in gemm]
    return rows, gemm


def main(argv: list[str] | None = None) -> None:
    import argparse

    import triton
    from offline_compile import TARGETS, _resources
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    from vllm_gemma4_router.fused_router.kernels.entry import gemma4_fused_router_kernel
    from vllm_gemma4_router.fused_router.launch_table import is_split

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--candidates",
        default="",
        help="comma-separated T: compile the sweep's candidates there instead of the table",
    )
    parser.add_argument(
        "--padding",
        action="store_true",
        help="compile the kernels as the op launches them with a padding mask (HAS_PADDING)",
    )
    args = parser.parse_args(argv)
    tokens = [int(t) for t in args.candidates.split(",") if t]
    rows, gemm_configs = _candidate_work(tokens) if tokens else _table_work()
    fn = gemma4_fused_router_kernel
    for name in ("sm_90", "gfx942"):
        target = TARGETS[name]
        gpu_target = GPUTarget(target.backend, target.arch, target.warp_size)
        backend = make_backend(gpu_target)
        for config in rows:
            if config.pdl and name != "sm_90":
                continue  # programmatic dependent launch is NVIDIA's
            result = {"target": name, "config": config._asdict(), "padding": args.padding}
            split = is_split(config, HIDDEN, EXPERTS)
            # A decode-size T for split rows, a large one for whole-row rows.
            num_tokens = 16 if split else 4096
            try:
                compiled = triton.compile(
                    _specialised(fn, _kernel_constants(config, args.padding), num_tokens, backend),
                    target=gpu_target,
                    options={"num_warps": config.num_warps, "num_stages": config.num_stages},
                )
                result.update(ok=True, split=split, **_resources(target, compiled))
                if name == "sm_90":
                    result["griddepcontrol"] = "griddepcontrol.wait" in compiled.asm["ptx"]
            except Exception as exc:  # one failure must not hide the others
                result.update(ok=False, error=f"{type(exc).__name__}: {exc}"[-2000:])
            print(json.dumps(result), flush=True)
        for gemm_config in gemm_configs:
            for kernel, constants, num_warps in _gemm_path_kernels(gemm_config, args.padding):
                result = {"target": name, "kernel": kernel.__name__, "padding": args.padding}
                result["config"] = gemm_config._asdict()
                try:
                    compiled = triton.compile(
                        _specialised(kernel, constants, 1024, backend),
                        target=gpu_target,
                        options={"num_warps": num_warps},
                    )
                    result.update(ok=True, **_resources(target, compiled))
                except Exception as exc:  # one failure must not hide the others
                    result.update(ok=False, error=f"{type(exc).__name__}: {exc}"[-2000:])
                print(json.dumps(result), flush=True)


def _gemm_path_kernels(config, padding: bool = False):
    """The GEMM path's prologue and epilogue for ``config``: (kernel, constexprs, warps)
    (``padding``: the epilogue with vLLM's padding mask, ``HAS_PADDING``)."""
    import triton

    from vllm_gemma4_router.fused_router.gemm_path import (
        gemma4_router_finish_kernel,
        gemma4_router_operand_kernel,
    )
    from vllm_gemma4_router.fused_router.kernels.entry import OPERAND_BF16
    from vllm_gemma4_router.fused_router.launch_table import routing_constexprs

    operand = {
        "BLOCK_T": config.operand_block_t,
        "BLOCK_H": config.operand_block_h,
        "OPERAND": OPERAND_BF16.value,
    }
    finish = {
        "TOPK": TOPK,
        "BLOCK_T": config.finish_block_t,
        "BLOCK_E_ALL": triton.next_power_of_2(EXPERTS),
        "BLOCK_K": triton.next_power_of_2(TOPK),
        "HAS_SCALE": True,
        **routing_constexprs(config.finish_select, config.finish_scale_pick),
        "HAS_PADDING": padding,
    }
    return [
        (gemma4_router_operand_kernel, operand, config.operand_warps),
        (gemma4_router_finish_kernel, finish, config.finish_warps),
    ]


if __name__ == "__main__":
    main()
