"""Benchmarks, run from the repository root as modules (``python -m benchmarks.<folder>.<name>``).

* ``kernel/``: micro-benchmarks of the routing op and the fused router (CUDA graphs,
  L2-hot and cold), against vLLM's and SGLang's kernels;
* ``serving/``: A/B of in-tree vs plugin through ``vllm bench serve`` and ``lm_eval``,
  and trace summaries;
* ``tuning/``: the offline sweeps that write the launch tables (package data) and the
  offline compile-resource reports;
* ``common/``: timing, the environment stamp of every result, peer kernels.

Not part of the installed package: it needs this checkout, and the ``[bench]`` extra
(``pip install -e '.[bench]'``). Results go to ``results/`` (see ``results/INDEX.md``).
"""
