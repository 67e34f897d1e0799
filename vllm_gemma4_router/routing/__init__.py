"""The routing op: softmax over E, top-K, renormalise, per-expert scale.

``reference`` pins the semantics (ties, order, non-finite logits, padding rows);
``launcher`` runs the Triton kernel of ``kernels/`` with the launch rows of
``launch_table`` (data in ``tables/``); ``torch_library`` registers the op
``vllm_gemma4_router::routing``. Nothing here knows vLLM.
"""
