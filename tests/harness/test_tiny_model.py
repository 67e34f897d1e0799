"""The tiny random Gemma 4 MoE checkpoint: deterministic, cached, MoE-shaped, routing-sensitive."""

import json

import pytest
import torch
from safetensors.torch import load_file

from vllm_gemma4_router.harness import tiny_model
from vllm_gemma4_router.harness.tiny_model import build_tiny_model, is_complete

SMALL = {"num_experts": 16, "top_k": 4, "hidden_size": 64, "num_layers": 2}


def _digest(path):
    return {f.name: f.read_bytes() for f in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def default_model(tmp_path_factory):
    """The default build (what the demo and the e2e tests serve)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_same_parameters_same_files_other_seed_other_weights(tmp_path):
    a = build_tiny_model(tmp_path / "a", seed=3, **SMALL)
    b = build_tiny_model(tmp_path / "b", seed=3, **SMALL)
    c = build_tiny_model(tmp_path / "c", seed=4, **SMALL)
    assert _digest(a) == _digest(b)
    weights_a, weights_c = load_file(a / "model.safetensors"), load_file(c / "model.safetensors")
    assert weights_a.keys() == weights_c.keys()
    assert not torch.equal(
        weights_a["model.embed_tokens.weight"], weights_c["model.embed_tokens.weight"]
    )
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()


def test_default_location_is_cached_and_keyed_by_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = build_tiny_model(**SMALL)
    assert first.parent == tmp_path / "vllm-gemma4-router"
    assert first.name.startswith("tiny-gemma4-moe-") and is_complete(first)
    other = build_tiny_model(**{**SMALL, "top_k": 2})
    assert other != first and is_complete(other)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a complete cached model was rebuilt")

    monkeypatch.setattr(tiny_model, "_write_checkpoint", no_rebuild)
    assert build_tiny_model(**SMALL) == first


def test_incomplete_build_is_replaced_and_no_staging_dir_is_left(tmp_path, monkeypatch):
    target = tmp_path / "m"
    target.mkdir()
    (target / "config.json").write_text("{}")  # a crash left this behind
    assert not is_complete(target)
    build_tiny_model(target, **SMALL)
    assert (
        is_complete(target)
        and json.loads((target / "config.json").read_text())["num_experts"] == 16
    )

    def crash(directory, params):
        (directory / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_model, "_write_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        build_tiny_model(tmp_path / "crashed", **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_config_is_a_gemma4_moe_text_model(default_model):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(default_model)
    assert config.model_type == "gemma4_text"
    assert config.architectures == ["Gemma4ForCausalLM"]
    assert config.enable_moe_block and config.num_experts == 128 and config.top_k_experts == 8
    assert config.hidden_size == 256 and config.num_hidden_layers == 4
    assert config.moe_intermediate_size > 0
    assert config.layer_types[-1] == "full_attention"


def test_vllm_knows_the_architecture(default_model):
    from vllm.model_executor.models import ModelRegistry

    assert "Gemma4ForCausalLM" in ModelRegistry.get_supported_archs()


def test_router_scales_are_random_positive(default_model):
    weights = load_file(default_model / "model.safetensors")
    for layer in range(4):
        per_expert = weights[f"model.layers.{layer}.router.per_expert_scale"]
        scale = weights[f"model.layers.{layer}.router.scale"]
        assert per_expert.shape == (128,) and scale.shape == (256,)
        assert (per_expert > 0).all() and (scale > 0).all()
        assert per_expert.std() > 0.2 and scale.std() > 0.1
    expert_weights = weights["model.layers.0.experts.gate_up_proj"]
    assert expert_weights.shape == (128, 2 * 32, 256)


def test_tokenizer_is_byte_level_and_round_trips(default_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model)
    text = "Hello, wörld! 1+1=2\n\ttabs {json} ☃"
    ids = tokenizer(text).input_ids
    assert len(ids) == len(text.encode())  # one token per byte
    assert ids[:2] == [3 + ord("H"), 3 + ord("e")]
    assert tokenizer.decode(ids) == text
    assert (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id) == (1, 2, 0)
    assert len(tokenizer) == 259


def test_greedy_next_tokens_depend_on_prompt_and_on_routing(default_model):
    # What makes the e2e comparison meaningful: prompts lead to different
    # text, and a routing that ignored per_expert_scale would change it.
    from transformers import AutoTokenizer, Gemma4ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(default_model)
    model = Gemma4ForCausalLM.from_pretrained(default_model, dtype=torch.float32).eval()
    prompts = ["Hello, my name is", "The capital of France is", "1 2 3 4", "def f(x):"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")

    def greedy_ids():
        with torch.no_grad():
            return model(**batch).logits.argmax(-1)

    routed = greedy_ids()
    last = routed[:, -1].tolist()
    assert len(set(last)) == len(prompts)
    printable = {3 + b for b in range(0x20, 0x7F)} | {3 + 0x0A}
    assert set(routed.flatten().tolist()) <= printable  # never <eos> or a non-ASCII byte
    with torch.no_grad():
        for layer in model.model.layers:
            layer.router.per_expert_scale.fill_(1.0)
    unscaled = greedy_ids()
    assert (unscaled != routed).float().mean() > 0.2
