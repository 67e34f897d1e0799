"""Benchmarks and A/B harnesses, run from the repository root as modules.

    python -m benchmarks.serve_ab ...     # serving A/B: vllm bench serve, in-tree vs plugin
    python -m benchmarks.gsm8k_ab ...     # accuracy A/B: lm_eval gsm8k, in-tree vs plugin

Shared: ``ab_common`` (the A/B machinery), ``stamp`` (the one environment stamp
of every result), ``peer_kernels`` (vLLM's and SGLang's routing kernels). Not
part of the installed package: it needs this checkout, and the ``[bench]``
extra (``pip install -e '.[bench]'``) for lm_eval and matplotlib.
"""
