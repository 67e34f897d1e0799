"""``vllm-gemma4-router`` command line."""

from __future__ import annotations

import argparse
import os
import sys


def _gpu_device() -> str | None:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu"
    return None


def selfcheck(num_tokens: int, num_experts: int, topk: int) -> bool:
    """Route random tokens with the Triton kernel and the torch reference; True if they agree."""
    device = _gpu_device()
    if device is None:
        # The kernel runs on CPU tensors only under the interpreter, which
        # triton reads when the kernel module is imported.
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from . import gemma4_routing_reference, gemma4_routing_triton

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
    for name, help_text in (
        ("selfcheck", "compare the Triton kernel with the torch reference"),
        ("demo", "self-check for now; the served end-to-end demo comes with the e2e work"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--tokens", type=int, default=64)
        p.add_argument("--experts", type=int, default=128)
        p.add_argument("--topk", type=int, default=8)
    args = parser.parse_args(argv)
    ok = selfcheck(args.tokens, args.experts, args.topk)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
