"""The fused router (opt-in): RMSNorm, ``* H**-0.5``, ``* scale``, gate GEMM and routing.

``reference`` is the contract; ``launcher`` runs the one-launch Triton kernel of
``kernels/`` with the rows of ``launch_table`` (data in ``tables/``), ``gemm_path``
the cuBLAS GEMM plus routing epilogue for mid-size batches; ``torch_library``
registers ``vllm_gemma4_router::fused_router``; ``handover`` passes its routing to
the routing function that follows it. Built on the routing room; nothing here
knows vLLM.
"""
