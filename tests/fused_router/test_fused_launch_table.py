"""The fused router's launch table as data: the packaged JSON file matches its schema,
carries its provenance, gives the rows the code held before, and a broken file fails
loudly; its names do not collide with the routing table's."""

import json
import re
from pathlib import Path
from types import ModuleType

import pytest

from vllm_gemma4_router.fused_router import launch_table as fused_table
from vllm_gemma4_router.fused_router.cuda_decode.builds import TENSOR_CORE_EXPERTS, parse_build
from vllm_gemma4_router.fused_router.launch_table import (
    GEMM_PATH_CONFIG,
    GEMM_PATH_TOKENS,
    FusedLaunchConfig,
    GemmPathConfig,
    fused_bucket,
    fused_launch_config,
    fused_table_file,
    load_fused_table,
)
from vllm_gemma4_router.routing import launch_table as routing_table
from vllm_gemma4_router.routing.table_files import SWEEP_FIELDS, LaunchTableError

REPO = Path(__file__).resolve().parents[2]


def _raw() -> dict:
    return json.loads(fused_table_file().read_text())


def test_the_packaged_table_loads_and_names_its_sweeps():
    table = load_fused_table(fused_table_file())
    assert table.bucket_bounds == (1, 4, 8, 16, 64, 256, 1024, 4096) and len(table.rows) == 9
    data = _raw()
    assert data["schema"] == 1 and data["table"] == "fused_router"
    sweeps = {s["id"]: s for s in data["provenance"]["sweeps"]}
    for sweep in sweeps.values():
        assert set(SWEEP_FIELDS) <= set(sweep)
        assert sweep["device"] in ("NVIDIA H200", "NVIDIA H100 80GB HBM3")
        versions = sweep["versions"]
        assert versions["driver"] == "580.159.04" and versions["triton"] == "3.6.0"
        assert versions["torch"] == "2.11.0+cu130"
        assert re.match(r"20\d\d-[01]\d-[0-3]\d", sweep["date"])
        for result in sweep["results"]:
            assert result.startswith("benchmarks/results/") and (REPO / result).is_file(), result
    named = [r["provenance"] for r in data["rows"]]
    named += [data["gemm_path"][k] for k in ("provenance", "tokens_provenance")]
    named += [b["provenance"] for b in data["cuda_decode"]["builds"]]
    assert set(named) | {data["pdl"]["provenance"]} == set(sweeps)


def test_the_loaded_rows_are_the_rows_the_code_held():
    rows = fused_table._FUSED_TABLE
    # T <= 16: the register GEMM, one row per swept T (H100 sweeps of 2026-12-06)
    assert rows[0] == FusedLaunchConfig(1, 1, 512, 1024, 1, 2)
    assert rows[1] == FusedLaunchConfig(4, 4, 512, 1024, 4, 2, scale_pick="after")
    assert rows[2] == FusedLaunchConfig(8, 1, 512, 1024, 4, 2)
    assert rows[3] == FusedLaunchConfig(8, 2, 512, 1024, 4, 2)
    assert rows[4] == FusedLaunchConfig(16, 64, 256, 256, 8, 2)
    assert rows[5] == FusedLaunchConfig(16, 128, 256, 512, 4, 2)
    assert rows[6] == rows[7] == FusedLaunchConfig(32, 128, 64, 2**31, 4, 3, 8)
    assert rows[8] == FusedLaunchConfig(64, 128, 64, 2**31, 4, 3, 8)
    table = load_fused_table(fused_table_file())
    assert table.gemm_path_tokens == GEMM_PATH_TOKENS and table.gemm_path_config == GEMM_PATH_CONFIG
    assert (GEMM_PATH_TOKENS.start, GEMM_PATH_TOKENS.stop, GEMM_PATH_TOKENS.step) == (257, 8193, 1)
    assert GemmPathConfig(1, 4096, 8, 1, 1, "exact", "in_row") == GEMM_PATH_CONFIG
    buckets = {1: 0, 2: 1, 4: 1, 5: 2, 8: 2, 9: 3, 16: 3, 17: 4, 64: 4, 65: 5, 256: 5}
    buckets |= {1024: 6, 4096: 7, 4097: 8, 2**40: 8}
    assert {t: fused_bucket(t) for t in buckets} == buckets
    assert fused_launch_config(1, 2816, 128) == rows[0]
    assert fused_launch_config(70000, 2816, 128) == rows[8]._replace(h_slice=2816)


def test_routing_and_fused_tables_share_no_name():
    def own(module):
        names = set()
        for name, value in vars(module).items():
            if name.startswith("__") or name == "annotations" or isinstance(value, ModuleType):
                continue
            if callable(value) and getattr(value, "__module__", None) != module.__name__:
                continue  # imported
            names.add(name)
        return names

    assert {"bucket_launch_config", "check_launch_config", "_BUCKET_BOUNDS"} <= own(routing_table)
    assert {"fused_launch_config", "check_fused_launch_config", "_FUSED_BUCKET_BOUNDS"} <= own(
        fused_table
    )
    assert not own(routing_table) & own(fused_table)


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "fused.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _broken(change):
    data = _raw()
    change(data)
    return data


BROKEN = {
    "not json": "[1,",
    "the routing table's kind": _broken(lambda d: d.update(table="routing")),
    "a row missing": _broken(lambda d: d["rows"].pop()),
    "rows out of order": _broken(lambda d: d["rows"].reverse()),
    "a block not a power of two": _broken(lambda d: d["rows"][0]["config"].update(block_h=24)),
    "an unknown routing": _broken(lambda d: d["rows"][0]["config"].update(select="narrow")),
    "a route_t not a power of two": _broken(lambda d: d["rows"][3]["config"].update(route_t=6)),
    "a config key missing": _broken(lambda d: d["rows"][0]["config"].pop("pdl")),
    "a gemm path range backwards": _broken(
        lambda d: d["gemm_path"].update(tokens={"first": 9000, "last": 257})
    ),
    "a gemm path config with bad warps": _broken(
        lambda d: d["gemm_path"]["config"].update(finish_warps=3)
    ),
    "no pdl record": _broken(lambda d: d.pop("pdl")),
    "no cuda_decode record": _broken(lambda d: d.pop("cuda_decode")),
    "a cuda_decode build not named as builds are": _broken(
        lambda d: d["cuda_decode"]["builds"][0].update(build="8x8q")
    ),
    "a cuda_decode build's tokens past 64": _broken(
        lambda d: d["cuda_decode"]["builds"][-1].update(tokens={"first": 5, "last": 65})
    ),
    "a cuda_decode CUDA-core build past its 16 tokens": _broken(
        lambda d: d["cuda_decode"]["builds"][0].update(tokens={"first": 1, "last": 17})
    ),
    "cuda_decode tokens backwards": _broken(
        lambda d: d["cuda_decode"]["builds"][-1].update(tokens={"first": 9, "last": 4})
    ),
    "cuda_decode ranges with a gap": _broken(
        lambda d: d["cuda_decode"]["builds"][-1].update(tokens={"first": 6, "last": 32})
    ),
    "cuda_decode ranges overlapping": _broken(
        lambda d: d["cuda_decode"]["builds"][-1].update(tokens={"first": 4, "last": 32})
    ),
    "a cuda_decode build without tokens": _broken(
        lambda d: d["cuda_decode"]["builds"][0].pop("tokens")
    ),
    "a cuda_decode build of an unknown sweep": _broken(
        lambda d: d["cuda_decode"]["builds"][0].update(provenance="nowhere")
    ),
    "cuda_decode tokens inside the gemm path's": _broken(
        lambda d: (
            d["cuda_decode"]["builds"][-1].update(tokens={"first": 5, "last": 64}),
            d["gemm_path"].update(tokens={"first": 64, "last": 8192}),
        )  # fmt: skip
    ),
    "an unknown provenance": _broken(lambda d: d["gemm_path"].update(provenance="nowhere")),
    "a sweep without versions": _broken(lambda d: d["provenance"]["sweeps"][0].update(versions={})),
}


@pytest.mark.parametrize("what", sorted(BROKEN))
def test_a_broken_table_fails_at_load_naming_the_file(tmp_path, what):
    path = _write(tmp_path, BROKEN[what])
    with pytest.raises(LaunchTableError, match=re.escape(str(path))):
        load_fused_table(path)


def test_a_missing_table_fails_at_load_naming_the_file(tmp_path):
    path = tmp_path / "fused.json"
    with pytest.raises(LaunchTableError, match=re.escape(str(path))):
        load_fused_table(path)


def test_an_unchanged_copy_loads_the_same_table(tmp_path):
    assert load_fused_table(_write(tmp_path, _raw())) == load_fused_table(fused_table_file())


def test_the_cuda_decode_record_loads_as_token_ranges_and_their_builds(tmp_path):
    packaged = load_fused_table(fused_table_file()).decode_path
    assert packaged == fused_table.DECODE_PATH
    # the packaged table: the CUDA-core build at the smallest T, a tensor-core one above
    assert [parse_build(build)[1] in TENSOR_CORE_EXPERTS for _, build in packaged.builds] == [
        False,
        True,
        True,
        True,
    ]
    # above 16 tokens only token-tiled builds, at most 7 clusters of 16 blocks: eight
    # (8x8cpt8 at T = 57-64) did not fit on the H100 at once: 10.5-10.7 us against 6.4 (r7, r9)
    for t in (17, 33, 56, 57, 64):
        tile = parse_build(packaged.build_for(t))[2]["token_tiles"]
        assert tile and -(-t // tile) <= 7, (t, tile)
    data = _raw()
    data["cuda_decode"]["builds"] = [
        {"tokens": {"first": 2, "last": 3}, "build": "8x1", "provenance": "h200_decode"},
        {"tokens": {"first": 4, "last": 64}, "build": "8x16c", "provenance": "h200_decode"},
    ]
    decode = load_fused_table(_write(tmp_path, data)).decode_path
    assert decode.tokens == range(2, 65)
    assert [decode.build_for(t) for t in (1, 2, 3, 4, 64, 65)] == [
        None, "8x1", "8x1", "8x16c", "8x16c", None,
    ]  # fmt: skip
    data["cuda_decode"]["builds"] = []
    off = load_fused_table(_write(tmp_path, data)).decode_path
    assert not off.tokens and off.build_for(1) is None
