"""benchmarks.common.stamp: the one environment stamp of benchmark results, whole and flat."""

from __future__ import annotations

import sys

import torch

from benchmarks.common import gpu, stamp


def test_environment_stamp_records_when_where_and_with_what():
    record = stamp.environment_stamp(argv=["serve_ab", "--tiny"])
    assert record["versions"]["torch"] == torch.__version__
    assert record["device"] and record["date"].endswith("UTC")
    assert record["python"] == ".".join(map(str, sys.version_info[:3]))
    assert record["argv"].endswith(" serve_ab --tiny")
    assert record["git_commit"] is None or len(record["git_commit"]) == 40
    flat = stamp.flat_stamp(record)
    assert flat["torch"] == torch.__version__ and "versions" not in flat
    assert all(isinstance(value, str) for value in flat.values())
    assert stamp.stamp_line(record).startswith(f"date={record['date']}, device=")
    with_gpu = {**record, "accelerator": {"name": "G", "sms": "132"}, "git_commit": None}
    assert {"gpu": "G", "sms": "132"}.items() <= stamp.flat_stamp(with_gpu).items()
    assert "git_commit" not in stamp.flat_stamp(with_gpu)


def test_versions_leave_out_what_is_not_installed():
    versions = stamp.distribution_versions(["torch", "surely-not-installed-4f1c"])
    assert versions == {"torch": torch.__version__}


def test_device_name_reads_the_stamp_else_the_torch_device():
    assert gpu.device_name({"gpu": "NVIDIA H200", "device": "NVIDIA H200"}) == "NVIDIA H200"
    assert gpu.device_name({"device": "CPU: Xeon x16"}) == "CPU: Xeon x16"
    assert gpu.device_name({}) == "unknown"
    assert gpu.device_slug({"gpu": "NVIDIA H100 80GB HBM3"}) == "NVIDIA_H100_80GB_HBM3"
    assert gpu.device_name() == (gpu.accelerator() or {"name": "unknown"})["name"]
    assert stamp.accelerator is gpu.accelerator  # the stamp records the same detection
