"""``vllm-gemma4-router`` command line: ``selfcheck`` (torch + triton) and ``demo`` (``[demo]``)."""

from __future__ import annotations

import argparse
import os
import sys

from .extras import require_extra, require_module


def _gpu_device() -> str | None:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu"
    return None


def selfcheck(num_tokens: int, num_experts: int, topk: int) -> bool:
    """Route random tokens with the Triton kernel and the torch reference; True if they agree."""
    require_module(
        "triton",
        "vllm-gemma4-router selfcheck",
        "every GPU build of torch brings it (on a CPU-only torch: pip install triton)",
    )
    device = _gpu_device()
    if device is None:
        # The kernel runs on CPU tensors only under the interpreter, which
        # triton reads when the kernel module is imported.
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from .. import gemma4_routing_reference, gemma4_routing_triton

    where = device or "cpu (TRITON_INTERPRET=1)"
    print(f"vllm-gemma4-router self-check on {where}: T={num_tokens}, E={num_experts}, K={topk}")
    ok = True
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        logits = torch.randn(num_tokens, num_experts, device=device or "cpu").to(dtype)
        scale = torch.rand(num_experts, device=logits.device) + 0.5
        weights, ids = gemma4_routing_triton(logits, topk, scale)
        ref_weights, ref_ids = gemma4_routing_reference(logits, topk, scale)
        same_ids = bool(torch.equal(ids, ref_ids))
        max_err = float((weights - ref_weights).abs().max())
        passed = same_ids and max_err <= 1e-6
        ok &= passed
        print(
            f"  {str(dtype):15s} ids equal: {same_ids}  max |dw|: {max_err:.2e}  "
            f"{'PASS' if passed else 'FAIL'}"
        )
    print("PASS" if ok else "FAIL")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm-gemma4-router", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("selfcheck", help="compare the Triton kernel with the torch reference")
    check.add_argument("--tokens", type=int, default=64)
    check.add_argument("--experts", type=int, default=128)
    check.add_argument("--topk", type=int, default=8)
    demo = sub.add_parser(
        "demo",
        help="serve a Gemma 4 MoE model with vLLM, with and without the plugin; PASS/FAIL",
        description="Serve a Gemma 4 MoE model with a real vLLM OpenAI server, with the plugin "
        "and then with vLLM's in-tree routing; show which forward served the routing and "
        "compare the greedy completions. Exit code 0 on PASS.",
    )
    demo.add_argument(
        "--model",
        default=None,
        help="checkpoint directory or Hugging Face id (default: the tiny random Gemma 4 MoE)",
    )
    demo.add_argument("--max-tokens", type=int, default=24, help="greedy tokens per prompt")
    demo.add_argument(
        "--extra-args",
        default="",
        help="more vLLM server arguments, one string, given with '=': "
        "--extra-args='--attention-backend TRITON_ATTN'",
    )
    demo.add_argument("--log-dir", default=None, help="where to keep the two server logs")
    demo.add_argument("--seed", type=int, default=0, help="seed of the tiny model's weights")
    demo.add_argument(
        "--prompts-file",
        default=None,
        help="prompts to complete, one JSON string per line (default: the 10 built-in ones)",
    )
    demo.add_argument(
        "--startup-timeout", type=float, default=900.0, help="seconds per server start"
    )
    demo.add_argument(
        "--fused-router",
        action="store_true",
        help="the plugin server also runs the opt-in fused router "
        '(--compilation-config \'{"custom_ops": ["+gemma4_fused_router"]}\')',
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        require_extra("demo", "vllm-gemma4-router demo")
        require_module("vllm", "vllm-gemma4-router demo", "install vLLM (pip install vllm)")
        from .demo import main as demo_main

        return demo_main(args)
    ok = selfcheck(args.tokens, args.experts, args.topk)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
