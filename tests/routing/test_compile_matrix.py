"""The kernel compiles for NVIDIA and AMD GPUs, offline, without spills or scratch memory.

No GPU is needed: ``triton.compile`` builds cubins (sm_80, sm_90, sm_100) and
hsacos (gfx90a, gfx942, gfx950) on the CPU, and the resources are read from
those artefacts (cuobjdump's resource usage; the amdgcn code-object metadata).
Each launch is compiled exactly as the launch table hands it out
(``benchmarks.tuning.compile_specs.compile_spec``), for each logit dtype, E in {64, 96, 128,
256}, K in {1, 6, 8} and every token bucket on sm_90 and gfx942 (H100/H200,
MI300X); the other targets get Gemma 4's E=128, K=8 for every dtype and bucket
(the whole matrix on all six targets is ``benchmarks/tuning/compile_resources.py``,
about 4x the compiles). Identical compiles are deduplicated and results are
cached under ``.cache/compile_matrix/`` (see ``ci/offline_compile.py``).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

CI_DIR = Path(__file__).resolve().parents[2] / "ci"
sys.path.insert(0, str(CI_DIR))

import offline_compile as oc  # noqa: E402

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
PRIMARY = ("sm_90", "gfx942")
SECONDARY = ("sm_80", "sm_100", "gfx90a", "gfx950")
AMD = tuple(name for name, target in oc.TARGETS.items() if target.backend == "hip")


def _points_for(target: str) -> list[oc.MatrixPoint]:
    # The other targets: Gemma 4's shape (E=128, K=8), every dtype and bucket.
    if target in PRIMARY:
        return oc.matrix_points()
    return oc.matrix_points(experts=(128,), topks=(8,))


@pytest.fixture(scope="module")
def compiled() -> dict[str, list[tuple[oc.MatrixPoint, oc.CompileJob, dict]]]:
    """target -> [(point, job, result)] for the whole matrix (one batch: shared workers)."""
    plan = {
        name: [(point, oc.job_for(point, oc.TARGETS[name])) for point in _points_for(name)]
        for name in PRIMARY + SECONDARY
    }
    results = oc.compile_all([job for entries in plan.values() for _, job in entries])
    return {
        name: [(point, job, results[job]) for point, job in entries]
        for name, entries in plan.items()
    }


#: NVIDIA launches allowed a bounded stack, each with its measurement: fp32 E <= 128 (E=96
#: compiles as E=128) with 8 tokens and 8 row groups, checked_rows (the large-T rows)
#: keeps up to 48 bytes of stack under Triton 3.9 (40 on sm_80; none under Triton 3.6, the
#: device's), yet is the fastest row of the H100 sweep (2026-12-07,
#: routing_large_t_2026-12-07/launch_sweep_NVIDIA_H100_80GB_HBM3_large_t_fp32.csv:
#: T=262144 55.8 us; the checked rounds at the same shape 67.5, 4 tokens x 4 groups 63.7).
#: A larger stack, or a stack anywhere else, fails.
_NVIDIA_STACK_ALLOWED = {("float32", 8, 8, "checked_rows"): 48}


def _nvidia_stack_allowed(point: oc.MatrixPoint) -> int:
    from vllm_gemma4_router.routing.launch_table import bucket_launch_config

    block_e = 1 << (point.num_experts - 1).bit_length()
    config = bucket_launch_config(
        point.bucket, block_e, "cuda", point.dtype == "float32", point.topk
    )
    key = (point.dtype, config.tokens_per_program, config.row_groups, config.fp32_select)
    return _NVIDIA_STACK_ALLOWED.get(key, 0) if config.register_picks else 0


def _spill_problems(
    target: oc.Target, resources: dict[str, int], point: oc.MatrixPoint
) -> list[str]:
    if target.backend == "hip":
        limits = dict.fromkeys(("vgpr_spills", "sgpr_spills", "scratch"), 0)
    else:  # spills live in local memory, behind a stack frame
        limits = dict.fromkeys(("local", "stack"), _nvidia_stack_allowed(point))
    return [f"{key}={resources[key]}" for key, limit in limits.items() if resources[key] > limit]


@pytest.mark.parametrize("target_name", PRIMARY + SECONDARY)
def test_every_table_launch_compiles_without_spills_or_scratch(compiled, target_name):
    target = oc.TARGETS[target_name]
    problems = []
    for point, job, result in compiled[target_name]:
        if not result["ok"]:
            problems.append(f"{point.label()}: compile failed: {result['error'][-600:]}")
            continue
        issues = _spill_problems(target, result["resources"], point)
        if issues:
            problems.append(f"{point.label()} (warps {job.num_warps}): {', '.join(issues)}")
    assert not problems, f"{target_name}:\n" + "\n".join(problems)
    # The registers were really read: every kernel holds its row somewhere.
    registers = [
        r["resources"].get("vgprs", r["resources"].get("registers"))
        for *_, r in compiled[target_name]
    ]
    assert min(registers) > 0
    if target.backend == "cuda":
        # The SASS was really counted: K unrolled rounds over a row of E logits
        # take hundreds of instructions in any launch shape.
        counts = [r["resources"]["instructions"] for *_, r in compiled[target_name]]
        assert min(counts) > 100, counts


@pytest.mark.parametrize("target_name", PRIMARY + SECONDARY)
def test_no_lane_loads_logits_another_lane_already_holds(compiled, target_name):
    # A layout larger than the [tokens, E] tile repeats elements across lanes:
    # those lanes would do no useful work (the "half the wave idle" failure).
    duplicated = [
        f"{point.label()}: {result['layout']}"
        for point, _, result in compiled[target_name]
        if result["ok"] and result["layout"]["duplication"] != 1
    ]
    assert not duplicated, "\n".join(duplicated)


def test_each_target_compiles_its_platforms_launch_rows():
    # AMD targets must compile the hip rows (routing/tables/hip.json), NVIDIA the CUDA rows.
    from vllm_gemma4_router.routing.launch_table import bucket_launch_config

    points = oc.matrix_points(experts=(64, 128, 256), topks=(8,))
    for point in points:
        fp32 = point.dtype == "float32"
        same_rows = bucket_launch_config(
            point.bucket, point.num_experts, "hip", fp32
        ) == bucket_launch_config(point.bucket, point.num_experts, "cuda", fp32)
        amd, nvidia = (oc.job_for(point, oc.TARGETS[name]) for name in ("gfx942", "sm_90"))
        same_compile = (amd.constants, amd.num_warps) == (nvidia.constants, nvidia.num_warps)
        assert same_compile == same_rows, point
    assert any(
        bucket_launch_config(p.bucket, p.num_experts, "hip", p.dtype == "float32")
        != bucket_launch_config(p.bucket, p.num_experts, "cuda", p.dtype == "float32")
        for p in points
    ), "no hip row differs from the CUDA rows"


def test_resource_readers_reject_artefacts_without_the_fields():
    with pytest.raises(ValueError, match="amdgcn metadata lacks"):
        oc.amdgcn_resources("\t.text\n; NumVgprs: 12\n")
    with pytest.raises(ValueError, match="no blocked tt.load"):
        oc.logits_load_layout("module {}\n")


def test_committed_resource_table_covers_every_target_without_amd_spills():
    version = oc.installed_triton_version()
    table = RESULTS / f"compile_resources_triton{version}.csv"
    assert table.is_file(), f"run benchmarks/tuning/compile_resources.py for triton {version}"
    with table.open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["triton"] for row in rows} == {version}
    # Intel (pvc) needs its own toolchain and has its own table (..._pvc.md).
    assert {row["target"] for row in rows} == {
        n for n, t in oc.TARGETS.items() if t.vendor != "Intel"
    }
    for row in rows:
        assert row["ok"] == "True", row
        if row["target"] in AMD:
            assert (row["vgpr_spills"], row["sgpr_spills"], row["scratch"]) == ("0", "0", "0"), row
            assert int(row["vgprs"]) > 0
        else:
            point = oc.MatrixPoint(
                row["dtype"],
                int(row["E"].split(",")[0]),
                int(row["K"].split(",")[0]),
                int(row["buckets"].split("-")[0]),
            )
            allowed = _nvidia_stack_allowed(point)
            assert int(row["local"]) <= allowed and int(row["stack"]) <= allowed, row
            assert int(row["registers"]) > 0
