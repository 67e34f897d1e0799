"""Shared by every benchmark: ``timing`` (CUDA-graph and rotated-weight timers),
``stamp`` (the environment stamp of every result), ``peer_kernels`` (vLLM's and
SGLang's routing kernels, loaded from their wheels)."""
