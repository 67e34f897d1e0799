"""A vLLM compile cache written with an older plugin is not reused after an upgrade.

vLLM keys its torch.compile cache (``VLLM_CACHE_ROOT/torch_compile_cache/<hash>``)
on, among other factors, the source of every file Dynamo inlined while tracing
the model (``compilation_config.traced_files``, hashed by
``vllm.compilation.caching._compute_code_hash``). The plugin's ops that compiled
graphs record, ``vllm_gemma4_router::fused_router`` and
``vllm_gemma4_router::claimed_routing``, are called from functions defined in
the very files that define their schemas, so those files are among the traced
ones: a schema change changes the cache key, and a graph that calls the op with
the old schema is never loaded.

This test traces the plugin's compiled path the way vLLM does (the same hook on
Dynamo's inliner) and checks both halves with vLLM's own hash function.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from vllm_gemma4_router.fused_router import handover
from vllm_gemma4_router.fused_router import torch_library as fused_library

# The files that define the schemas of the ops vLLM's compiled graphs record.
SCHEMA_FILES = {
    Path(fused_library.__file__).resolve(): fused_library.FUSED_ROUTER_OP_QUALNAME,
    Path(handover.__file__).resolve(): handover.CLAIMED_ROUTING_OP_QUALNAME,
}


def _traced_files(fn, *args) -> set[Path]:
    """Files Dynamo inlines while tracing ``fn(*args)``, collected as vLLM collects them
    (``vllm.compilation.decorators``: a wrapper around ``inline_call_``)."""
    from torch._dynamo.symbolic_convert import InliningInstructionTranslator

    files: set[Path] = set()
    original = InliningInstructionTranslator.inline_call_

    def recording_inline_call(self_):
        files.add(Path(self_.f_code.co_filename).resolve())
        return original(self_)

    InliningInstructionTranslator.inline_call_ = recording_inline_call
    try:
        torch._dynamo.reset()
        torch.compile(fn, backend="eager", fullgraph=True)(*args)
    finally:
        InliningInstructionTranslator.inline_call_ = original
        torch._dynamo.reset()
    return files


def _fused_layer_path(op, hidden, scale, weight, pes):
    """What a fused Gemma4 layer's compiled code runs: the fused router op's forward
    (the router) and the claim of its routing (the routing function)."""
    packed = op.forward_native(hidden, scale, weight, pes, 1e-6, 2)
    num_tokens, num_experts = hidden.shape[0], weight.shape[0]
    logits = packed[: num_tokens * num_experts].view(num_tokens, num_experts)
    return handover.claim_fused_routing(logits, 2, pes)


def test_schema_files_are_traced_so_vllm_hashes_them(gen):
    from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config

    from vllm_gemma4_router.integration.custom_ops import Gemma4FusedRouter

    config = VllmConfig(compilation_config=CompilationConfig(custom_ops=["+gemma4_fused_router"]))
    with set_current_vllm_config(config):
        op = Gemma4FusedRouter()
    hidden = torch.randn(3, 16, generator=gen)
    args = (hidden, torch.rand(16, generator=gen) + 0.5, torch.randn(8, 16, generator=gen))
    traced = _traced_files(_fused_layer_path, op, *args, torch.rand(8, generator=gen) + 0.5)
    missing = [f"{path.name} ({op})" for path, op in SCHEMA_FILES.items() if path not in traced]
    assert not missing, f"not in vLLM's traced files (cache key): {missing}"


def test_a_schema_change_changes_vllms_code_hash(tmp_path):
    from vllm.compilation.caching import _compute_code_hash

    for path, qualname in SCHEMA_FILES.items():
        installed = tmp_path / path.name  # one path: only the content may change the key
        shutil.copy(path, installed)
        old_key = _compute_code_hash({str(installed)})
        assert old_key == _compute_code_hash({str(installed)})  # stable while nothing changes
        # An upgrade that adds an argument to the op's schema.
        decorated = re.compile(r"(@torch\.library\.custom_op\(\w*OP_QUALNAME[^\n]*\n)def (\w+)\(")
        source, count = decorated.subn(r"\1def \2(new_argument: int, ", installed.read_text())
        assert count == 1, path.name
        installed.write_text(source)
        assert _compute_code_hash({str(installed)}) != old_key, qualname
