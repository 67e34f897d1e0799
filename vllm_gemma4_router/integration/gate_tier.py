"""Gemma 4's gate GEMM with its tier chosen per call, not at vLLM's first trace.

vLLM's ``GateLinear`` (0.26 and later) picks its GEMM with plain Python branches
on the token count: a low-latency tier (``ll_bf16_gemm``, and in 0.34 also
``ll_fp32w_gemm``) for small batches, cuBLAS above. Gemma 4 calls its gate
inside the ``@support_torch_compile`` model, which vLLM traces once at
``max_num_tokens`` and re-uses with every guard dropped: the branch taken at
that trace (cuBLAS) is the one every batch size runs.

``torch.ops.vllm_gemma4_router.gate_tier`` is opaque to torch.compile. Its body
runs the gate's own, unpatched ``GateLinear.forward`` at run time, so each call
(each CUDA-graph capture size) takes the tier vLLM itself would choose for its
token count. The op finds its gate the way vLLM's ``moe_forward`` finds its
layer: by a name registered in the compilation config's static forward context.
No tier logic lives here; which releases have such tiers, and which gates get
the op, is the adapter's knowledge (``integration.gemma4_layouts``).
"""

from __future__ import annotations

import functools

import torch

GATE_TIER_OP_QUALNAME = "vllm_gemma4_router::gate_tier"

#: Suffix of the name a gate is registered under (its vLLM prefix + this), so the
#: name cannot collide with a layer vLLM registers itself.
REGISTERED_NAME_SUFFIX = ".gemma4_gate_tier"


class RunTimeTierGate:
    """Mixed into a gate's own class (:func:`run_time_tier_class`): ``forward`` calls
    the gate's ``gemma4_gate_tier`` CustomOp, whose forward calls the opaque op,
    whose body calls :meth:`tier_forward`, the class's own ``forward``. Set per
    gate by the adapter: ``gate_tier_name`` (its registered name) and the op."""

    gate_tier_name: str
    #: The vLLM gate class this one was made from (set by run_time_tier_class).
    tier_base: type

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        # ll_bf16_gemm refuses strided input.
        return self.gemma4_gate_tier(x.contiguous(), self.gate_tier_name, self.output_size), None

    def tier_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The gate class's own forward, as vLLM wrote it: its tier branches run here,
        eagerly, with this call's token count."""
        output, bias = self.tier_base.forward(self, x)
        return checked_gate_output(output, bias, self.gate_tier_name, x.shape[0], self.output_size)


def checked_gate_output(
    output: torch.Tensor, bias: object, layer_name: str, num_tokens: int, out_features: int
) -> torch.Tensor:
    """``output``, a gate forward's logits, if they are what Gemma 4's router needs: no
    bias, float32 ``[num_tokens, out_features]``; else a ``ValueError`` naming the gate."""
    if bias is not None:
        raise ValueError(f"gate {layer_name!r}: a gate with a bias cannot use the op")
    if output.dtype != torch.float32 or tuple(output.shape) != (num_tokens, out_features):
        raise ValueError(
            f"gate {layer_name!r} returned {output.dtype} {tuple(output.shape)}; "
            f"expected float32 ({num_tokens}, {out_features})"
        )
    return output


@functools.cache
def run_time_tier_class(gate_cls: type) -> type:
    """A subclass of ``gate_cls`` (vLLM's ``GateLinear``) whose ``forward`` goes
    through the opaque op. One class per gate class; ``isinstance`` still holds."""
    name = f"RunTimeTier{gate_cls.__name__}"
    return type(name, (RunTimeTierGate, gate_cls), {"tier_base": gate_cls})


def registered_gate(layer_name: str) -> RunTimeTierGate:
    """The gate registered as ``layer_name`` in the running model's forward context."""
    from vllm.forward_context import get_forward_context

    gate = get_forward_context().no_compile_layers.get(layer_name)
    if not isinstance(gate, RunTimeTierGate):
        raise KeyError(f"no gate registered as {layer_name!r} in vLLM's forward context")
    return gate


@torch.library.custom_op(GATE_TIER_OP_QUALNAME, mutates_args=())
def _gate_tier(x: torch.Tensor, layer_name: str, out_features: int) -> torch.Tensor:
    return checked_gate_output(
        registered_gate(layer_name).tier_forward(x), None, layer_name, x.shape[0], out_features
    )


@_gate_tier.register_fake
def _gate_tier_fake(x: torch.Tensor, layer_name: str, out_features: int) -> torch.Tensor:
    return x.new_empty((x.shape[0], out_features), dtype=torch.float32)


def gate_tier(x: torch.Tensor, layer_name: str, out_features: int) -> torch.Tensor:
    """The gate's fp32 logits ``[T, out_features]`` for ``x`` ``[T, H]`` (bf16, contiguous),
    from the tier vLLM's ``GateLinear`` picks for this call's ``T``.

    Defined next to the op's schema on purpose: Dynamo inlines this function while
    vLLM traces the model, so this file is in vLLM's compile-cache key
    (``traced_files``) and a schema change invalidates graphs that call the op.
    """
    return torch.ops.vllm_gemma4_router.gate_tier(x, layer_name, out_features)
