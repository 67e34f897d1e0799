"""Shared by every benchmark: ``timing`` (CUDA-graph and rotated-weight timers,
``geomean``), ``stamp`` (the environment stamp of every result), ``gpu`` (which
accelerator: ``accelerator``, ``device_name``), ``tables`` (markdown tables through
tabulate), ``peer_kernels`` (vLLM's and SGLang's routing kernels, loaded from their
wheels)."""
