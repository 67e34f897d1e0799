"""The large-T resource survey (issue #38): its candidates are the shapes the launcher
accepts, each compiles what the launcher would compile for it, and its occupancy model
matches what Nsight Compute reported for the table's fp32 row on the H200."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.tuning import large_t_resources as survey
from vllm_gemma4_router.routing.launch_table import (
    LaunchConfig,
    bucket_launch_config,
    check_launch_config,
)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "ci"))

import offline_compile as oc  # noqa: E402


def test_candidates_are_the_accepted_shapes_and_hold_the_table_row():
    found = survey.candidates(torch.float32, 128, 8, [4, 8, 16], [1, 2], [1, 8], ["after"])
    for config in found:
        check_launch_config(config, 128, 4, 8)  # raises where the launcher would refuse
        assert config.register_picks
    assert {c.fp32_select for c in found} == {"checked", "exact", "checked_rows"}
    # 4 tokens x 8 lanes per piece < 32 would share lanes: refused, so not a candidate
    assert LaunchConfig(4, 1, True, 8, "checked", "after") not in found
    assert bucket_launch_config(5, 128, "cuda", True, 8) in found
    bf16 = survey.candidates(torch.bfloat16, 128, 8, [32], [2], [4], ["after"])
    assert [c.fp32_select for c in bf16] == ["checked"]


def test_resident_tokens_follow_the_register_partitions():
    # 138 registers, one warp a program: 12 warps per SM, as Nsight Compute said (H200)
    assert survey.resident_tokens(138, 1, 8) == (12, 96)
    assert survey.resident_tokens(122, 1, 8) == (16, 128)  # the kernel before the rework
    assert survey.resident_tokens(128, 4, 32) == (16, 128)
    assert survey.resident_tokens(32, 1, 2) == (32, 64)  # the 32-block limit
    assert survey.resident_tokens(32, 4, 2) == (64, 32)  # the 64-warp limit


def test_each_candidate_compiles_what_the_launcher_would(monkeypatch, tmp_path):
    table_row = bucket_launch_config(5, 128, "cuda", True, 8)
    other = LaunchConfig(4, 1, True, 4, "checked", "after")
    point = oc.MatrixPoint("float32", 128, 8, 5)
    target = oc.TARGETS["sm_90"]
    compiled = []

    def fake_compile_all(jobs):
        compiled.extend(jobs)
        return {job: {"ok": True, "resources": {"registers": 64, "stack": 0, "shared": 0},
                      "seconds": 0.1} for job in jobs}  # fmt: skip

    monkeypatch.setattr(oc, "compile_all", fake_compile_all)
    rows = survey.resources([table_row, other], point, target)
    # The table row's candidate compiles the launcher's own job for the bucket.
    assert compiled[0] == oc.job_for(point, target)
    assert compiled[1] != compiled[0]
    assert dict(compiled[1].constants)["TOKENS_PER_PROGRAM"] == 4
    assert [row["tokens_per_program"] for row in rows] == [8, 4]
    assert all(row["ok"] and row["registers"] == 64 for row in rows)


def test_main_writes_the_table_with_its_stamp(monkeypatch, tmp_path):
    def fake_compile_all(jobs):
        return {job: {"ok": True, "resources": {"registers": 100 + i, "stack": 0, "shared": 0},
                      "seconds": 0.1} for i, job in enumerate(jobs)}  # fmt: skip

    monkeypatch.setattr(oc, "compile_all", fake_compile_all)
    argv = ["--tokens-per-program", "8", "--warps", "1", "--row-groups", "8"]
    assert survey.main([*argv, "--scale-picks", "after", "--out", str(tmp_path)]) == 0
    [csv_path] = tmp_path.glob("resources_float32_E128_b5_sm_90_triton*.csv")
    assert csv_path.read_text().startswith("# triton=")
    lines = csv_path.read_text().splitlines()[1:]
    frame = list(csv.DictReader(lines))
    assert len(frame) == 3  # checked (the table's row), exact, checked_rows
    assert sorted(row["table_row"] for row in frame) == ["False", "False", "True"]
    assert {row["warps_per_sm"] for row in frame} == {"16"}  # 100-101 registers: 4 a partition
    assert (tmp_path / csv_path.name.replace(".csv", ".md")).is_file()


def test_issue_bound_is_the_launch_instructions_over_the_h200_issue_rate():
    from benchmarks.kernel.compare_trees import floor_us

    row = {"instructions": 976, "num_warps": 4, "tokens_per_program": 32}
    bound = survey.issue_bound(row, "bfloat16", 65536)
    warp_instructions = 976 * 4 * (65536 // 32)
    issue_us = warp_instructions / (132 * 4 * 1980)  # warp instructions per us
    assert bound["issue_us_T65536"] == pytest.approx(issue_us, abs=0.01)
    floor = floor_us(65536, "bfloat16", "none", 4233.0)
    assert bound["floor_us_T65536"] == pytest.approx(floor, abs=0.01)
    assert bound["best_of_floor_T65536"] == pytest.approx(floor / issue_us, abs=1e-3)
    # T not a multiple of the tile still runs whole programs; a tiny launch is capped at 1.
    big = {**row, "instructions": 10**6}
    odd = survey.issue_bound(big, "bfloat16", 97)["issue_us_T97"]
    assert odd == survey.issue_bound(big, "bfloat16", 128)["issue_us_T128"]  # 4 programs
    assert survey.issue_bound({**row, "instructions": 1}, "float32", 64)["best_of_floor_T64"] == 1


def test_main_adds_instructions_per_token_and_the_bound_when_the_sass_was_counted(
    monkeypatch, tmp_path
):
    def fake_compile_all(jobs):
        resources = {"registers": 96, "stack": 0, "shared": 0, "instructions": 1968}
        return {job: {"ok": True, "resources": resources, "seconds": 0.1} for job in jobs}

    monkeypatch.setattr(oc, "compile_all", fake_compile_all)
    argv = ["--tokens-per-program", "8", "--warps", "1", "--row-groups", "8", "--scale-picks"]
    assert survey.main([*argv, "after", "--bound-tokens", "262144", "--out", str(tmp_path)]) == 0
    [csv_path] = tmp_path.glob("resources_float32_E128_b5_sm_90_triton*.csv")
    frame = list(csv.DictReader(csv_path.read_text().splitlines()[1:]))
    assert {row["warp_instructions_per_token"] for row in frame} == {"246.0"}  # 1968 / 8
    assert all(float(row["issue_us_T262144"]) > 0 for row in frame)
    assert "issue bound: H200" in csv_path.read_text().splitlines()[0]


def test_a_sweep_joins_by_shape_and_gives_the_share_of_peak_issue(tmp_path):
    sweep = tmp_path / "sweep.csv"
    header = "dtype,family,E,K,T,mode,method,tokens_per_program,num_warps,register_picks,"
    header += "row_groups,fp32_select,scale_pick,values_by_reduction,us,ok"
    lines = [
        "# date=2026-12-07, device=test",
        header,
        "bfloat16,randn,128,8,65536,hot,ours,32,4,True,4,checked,after,False,11.43,True",
        "bfloat16,randn,128,8,65536,cold,ours,32,4,True,4,checked,after,False,13.0,True",
        "bfloat16,gemm_bf16,128,8,65536,hot,ours,32,4,True,4,checked,after,False,12.0,True",
        "bfloat16,randn,128,8,65536,hot,ours,32,2,True,8,checked,after,False,11.45,True",
    ]
    sweep.write_text("\n".join(lines) + "\n")
    shape = {"fp32_select": "checked", "scale_pick": "after", "instructions": 976}
    table_row = {"tokens_per_program": 32, "num_warps": 4, "row_groups": 4, **shape}
    unswept = {"tokens_per_program": 16, "num_warps": 1, "row_groups": 8, **shape}
    rows = [table_row, unswept]
    for row in rows:
        row.update(survey.issue_bound(row, "bfloat16", 65536))
    survey.join_sweep(rows, sweep, [65536])
    assert table_row["measured_us_T65536"] == 11.43  # hot, randn: not cold, not gemm
    share = table_row["issue_us_T65536"] / 11.43
    assert table_row["issue_share_T65536"] == pytest.approx(share, abs=0.005)
    assert "measured_us_T65536" not in unswept
