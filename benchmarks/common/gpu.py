"""The one place the benchmarks find out which accelerator they run on.

``accelerator()`` asks torch (and, on NVIDIA, ``nvidia-smi`` for the driver);
the environment stamp (``benchmarks.common.stamp``) records it. ``device_name``
and ``device_slug`` read it back from a flat stamp for titles and file names.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping


def accelerator() -> dict[str, str] | None:
    """The first GPU torch sees: name, multiprocessors, runtime, driver; ``None`` without one.

    Keys: ``name``; on CUDA/ROCm also ``sms`` (multiprocessor count),
    ``runtime`` (``cuda 13.0`` / ``hip 7.1...``) and on NVIDIA ``driver``.
    """
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            hip = getattr(torch.version, "hip", None)
            info = {
                "name": props.name,
                "sms": str(props.multi_processor_count),
                "runtime": f"hip {hip}" if hip else f"cuda {torch.version.cuda}",
            }
            if not hip:
                info["driver"] = _nvidia_driver() or "unknown"
            return info
        if hasattr(torch, "xpu") and torch.xpu.is_available():
            return {"name": torch.xpu.get_device_name(0)}
    except Exception:  # noqa: BLE001 - the stamp must never fail the run
        pass
    return None


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def device_name(stamp: Mapping[str, str] | None = None) -> str:
    """What a result ran on: a flat stamp's ``gpu``, else its ``device`` (the CPU line),
    else ``"unknown"``; without a stamp, the GPU torch sees now (``"unknown"`` if none)."""
    if stamp is None:
        gpu = accelerator()
        return gpu["name"] if gpu else "unknown"
    return stamp.get("gpu") or stamp.get("device") or "unknown"


def device_slug(stamp: Mapping[str, str] | None = None) -> str:
    """:func:`device_name` for file names: spaces become underscores."""
    return device_name(stamp).replace(" ", "_")
