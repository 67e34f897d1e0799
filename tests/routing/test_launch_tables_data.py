"""The routing launch tables as data: the packaged JSON files match their schema, carry
their provenance, give the rows the code held before, and a broken file fails loudly."""

import json
import re
from pathlib import Path

import pytest

from vllm_gemma4_router.routing import launch_table, table_files
from vllm_gemma4_router.routing.launch_table import (
    NUM_BUCKETS,
    LaunchConfig,
    bucket_launch_config,
    load_launch_table,
    pick_launch_config,
    table_file,
)
from vllm_gemma4_router.routing.table_files import SWEEP_FIELDS, LaunchTableError

REPO = Path(__file__).resolve().parents[2]
PLATFORMS = ("cuda", "hip")


def _raw(platform: str) -> dict:
    return json.loads(table_file(platform).read_text())


@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_packaged_table_loads_and_names_its_sweeps(platform):
    bounds, table = load_launch_table(table_file(platform))
    assert bounds == (4, 1024, 2048, 8192, 65536) and NUM_BUCKETS == 6
    assert set(table) == {(fp32, e) for fp32 in (True, False) for e in (64, 128, 256)}
    assert all(len(configs) == NUM_BUCKETS for configs in table.values())
    data = _raw(platform)
    assert data["schema"] == 1 and data["table"] == "routing" and data["provenance"]["notes"]
    sweeps = {s["id"]: s for s in data["provenance"]["sweeps"]}
    for sweep in sweeps.values():
        assert set(SWEEP_FIELDS) <= set(sweep)
        assert sweep["sweep"] and sweep["device"] and sweep["versions"]["triton"]
        assert re.match(r"20\d\d-[01]\d-[0-3]\d", sweep["date"]), sweep["date"]
        assert len(sweep["notes"]) > 20
        for result in sweep["results"]:
            assert result.startswith("benchmarks/results/") and (REPO / result).is_file(), result
    used = {row["provenance"] for row in data["rows"]}
    assert used <= set(sweeps)
    if platform == "cuda":  # the measured rows: on which GPU, with which driver
        assert {sweeps[s]["device"] for s in used} == {"NVIDIA H100 80GB HBM3", "NVIDIA H200"}
        assert all(sweeps[s]["versions"]["driver"] == "580.159.04" for s in used)


def test_the_loaded_rows_are_the_rows_the_code_held():
    cuda, hip = launch_table._CUDA_TABLE, launch_table._HIP_TABLE
    assert cuda[True, 128][0] == LaunchConfig(1, 1, scale_pick="in_row", values_by_reduction=True)
    assert cuda[True, 128][3] == LaunchConfig(8, 1, row_groups=8, fp32_select="exact")
    # issue #38: the large-T rows redo a faulty row alone (96 registers, not 138)
    assert (
        cuda[True, 128][4:] == (LaunchConfig(8, 1, row_groups=8, fp32_select="checked_rows"),) * 2
    )
    assert cuda[True, 64][1] == LaunchConfig(2, 2, fp32_select="exact", scale_pick="in_row")
    assert cuda[True, 256][4] == LaunchConfig(2, 1, register_picks=False, row_groups=2)
    assert cuda[False, 128] == (
        LaunchConfig(2, 2),
        LaunchConfig(4, 4),
        *[LaunchConfig(8, 1, row_groups=4)] * 2,
        LaunchConfig(32, 4, row_groups=4),
        LaunchConfig(32, 2, row_groups=4),
    )
    assert hip[True, 128][5] == LaunchConfig(4, 1, row_groups=4)  # halved: SGPR spills
    assert hip[False, 64][5] == LaunchConfig(64, 2, row_groups=4)  # doubled: 64-lane waves
    assert hip[True, 256][:4] == cuda[True, 256][:4]  # one token per warp: kept
    assert bucket_launch_config(0, 128, "xpu", True) == cuda[True, 128][0]
    assert bucket_launch_config(5, 128, "hip", False) == hip[False, 128][5]


def test_lookups_read_no_file(monkeypatch):
    """The rows are read once at import: a lookup (traced by torch.compile, or on the
    launch path) never opens a file."""

    def no_io(*args, **kwargs):
        raise AssertionError("a launch table file was read at lookup time")

    monkeypatch.setattr(table_files, "read_table", no_io)
    monkeypatch.setattr(launch_table, "read_table", no_io)
    bucket_launch_config.cache_clear()
    for platform in ("cuda", "hip", "xpu", "interpreter"):
        for tokens in (1, 5000, 10**6):
            pick_launch_config(tokens, 128, platform, True)


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "table.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _broken(change):
    data = _raw("cuda")
    change(data)
    return data


def _set(row: int, key: str, value):
    def change(data):
        data["rows"][row]["config"][key] = value

    return change


BROKEN = {
    "not json": "{",
    "an unknown schema": _broken(lambda d: d.update(schema=2)),
    "an unknown top-level key": _broken(lambda d: d.update(extra=1)),
    "a config key unknown": _broken(_set(0, "tile", 4)),
    "a config key missing": _broken(lambda d: d["rows"][0]["config"].pop("row_groups")),
    "a bool for an int": _broken(_set(0, "num_warps", True)),
    "an int for a bool": _broken(_set(0, "register_picks", 1)),
    "an invalid config": _broken(_set(0, "tokens_per_program", 3)),
    "lanes shared with the groups axis": _broken(_set(0, "row_groups", 4)),
    "a row missing": _broken(lambda d: d["rows"].pop(7)),
    "a row twice": _broken(lambda d: d["rows"].append(d["rows"][0])),
    "a width not in the table": _broken(lambda d: d["rows"][0].update(block_e=512)),
    "a bucket out of range": _broken(lambda d: d["rows"][0].update(bucket=6)),
    "an unknown provenance": _broken(lambda d: d["rows"][0].update(provenance="nowhere")),
    "a sweep without date": _broken(lambda d: d["provenance"]["sweeps"][0].pop("date")),
    "a sweep without results": _broken(lambda d: d["provenance"]["sweeps"][0].update(results=[])),
    "falling bucket bounds": _broken(lambda d: d.update(token_bucket_bounds=[4, 2, 8, 16, 32])),
}


@pytest.mark.parametrize("what", sorted(BROKEN))
def test_a_broken_table_fails_at_load_naming_the_file(tmp_path, what):
    path = _write(tmp_path, BROKEN[what])
    with pytest.raises(LaunchTableError, match=re.escape(str(path))):
        load_launch_table(path)


def test_a_missing_table_fails_at_load_naming_the_file(tmp_path):
    path = tmp_path / "cuda.json"
    with pytest.raises(LaunchTableError, match=re.escape(str(path))) as error:
        load_launch_table(path)
    assert isinstance(error.value, ValueError) and "cannot be read" in str(error.value)


def test_an_unchanged_copy_loads_the_same_rows(tmp_path):
    path = _write(tmp_path, _raw("hip"))
    assert load_launch_table(path) == load_launch_table(table_file("hip"))
