"""Pytest plugin (``-p triton_cpu_standin``) for running vLLM's own tests of the patched tree here.

Loaded before any test module imports vLLM, it puts the Triton-interpreter
stand-in for triton-cpu in place (``tests/scripts/vllm_standins.py``), so that
vLLM 0.34's CPU platform starts and its Triton kernels run under
``TRITON_INTERPRET=1`` on CPU tensors.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from vllm_standins import stand_in_for_triton_cpu  # noqa: E402

if not stand_in_for_triton_cpu():
    raise RuntimeError("the triton-cpu stand-in was not needed or could not be applied")
