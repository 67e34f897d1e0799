"""Named checkpoint profiles: the tiny random model, and config-only real shapes.

``tiny`` is :func:`~vllm_gemma4_router.harness.tiny_model.build_tiny_model`
(random weights, served as it is). ``gemma-4-26b-a4b`` is the text model of
``google/gemma-4-26B-A4B-it`` with no weights at all (``gemma-4-26b-a4b-12l`` and
``-6l``: its first 12 or 6 layers only): ``config.json``,
``generation_config.json`` and a byte-level tokenizer padded with filler tokens
to the real 262144 ids (every id a random-weight model can emit detokenizes).
vLLM serves it with ``--load-format dummy`` (weights filled in place, uniform in
+-1e-3), which :func:`server_args` adds, so its timing is that of the real
shapes while its text means nothing::

    python -m vllm_gemma4_router.harness.model_profiles gemma-4-26b-a4b [PATH]

Where the real values come from: transformers' ``convert_gemma4_weights.py``
(``_VARIANTS["gemma-4-26b-a4b"]``, the Orbax -> HF conversion Google's
checkpoints went through; huggingface/transformers,
``src/transformers/models/gemma4/convert_gemma4_weights.py``), every other field
at ``Gemma4TextConfig``'s defaults (``configuration_gemma4.py`` of transformers
5.17 and 5.19, identical for these fields). ``--text_only`` in that script saves
``Gemma4ForCausalLM``, the architecture used here.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import tiny_model

_RECIPE_VERSION = 1
_CONFIG_ONLY_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)

# The rope parameters of convert_gemma4_weights.py's _ROPE_PARAMS (equal to
# Gemma4TextConfig's default).
_ROPE_PARAMETERS = {
    "full_attention": {
        "rope_type": "proportional",
        "partial_rotary_factor": 0.25,
        "rope_theta": 1_000_000.0,
    },
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
}


@dataclass(frozen=True)
class ConfigOnlyProfile:
    """A real model's text config, written without weights.

    Attributes:
        name: the profile's name (``--model-profile`` value).
        hf_id: the checkpoint whose shapes these are.
        text_config: ``Gemma4TextConfig`` keyword arguments.
        sources: field name -> where its value comes from.
        dtype: the checkpoint dtype (what vLLM serves by default).
        vllm_hf_overrides: attributes vLLM releases that read them directly
            need set on the loaded config (see :func:`server_args`).
    """

    name: str
    hf_id: str
    text_config: Mapping[str, Any]
    sources: Mapping[str, str]
    dtype: str = "bfloat16"
    vllm_hf_overrides: Mapping[str, Any] = field(default_factory=dict)


_CONVERT = "convert_gemma4_weights.py _VARIANTS['gemma-4-26b-a4b']"
_DEFAULT = "Gemma4TextConfig default"

GEMMA_4_26B_A4B = ConfigOnlyProfile(
    name="gemma-4-26b-a4b",
    hf_id="google/gemma-4-26B-A4B-it",
    text_config={
        "vocab_size": 262_144,
        "hidden_size": 2816,
        "hidden_size_per_layer_input": 0,
        "intermediate_size": 2112,
        "num_hidden_layers": 30,
        "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 5,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "num_global_key_value_heads": 2,
        "head_dim": 256,
        "global_head_dim": 512,
        "attention_k_eq_v": True,
        "use_bidirectional_attention": "vision",
        "num_kv_shared_layers": 0,
        "enable_moe_block": True,
        "num_experts": 128,
        "top_k_experts": 8,
        "moe_intermediate_size": 704,
        "sliding_window": 1024,
        "final_logit_softcapping": 30.0,
        "rope_parameters": _ROPE_PARAMETERS,
        "max_position_embeddings": 262_144,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    },
    sources={
        **{
            key: _CONVERT
            for key in (
                "hidden_size",
                "hidden_size_per_layer_input",
                "intermediate_size",
                "num_hidden_layers",
                "layer_types",
                "num_attention_heads",
                "num_key_value_heads",
                "num_global_key_value_heads",
                "attention_k_eq_v",
                "use_bidirectional_attention",
                "num_kv_shared_layers",
                "enable_moe_block",
                "num_experts",
                "top_k_experts",
                "moe_intermediate_size",
                "sliding_window",
                "final_logit_softcapping",
                "rope_parameters",
                "max_position_embeddings",
            )
        },
        "vocab_size": _DEFAULT + " (262_144; the script's tokenizer is gemma4_cleaned_262144)",
        "head_dim": _DEFAULT + " (256)",
        "global_head_dim": _DEFAULT + " (512, the kwarg default in __post_init__)",
        "hidden_activation": _DEFAULT,
        "rms_norm_eps": _DEFAULT,
        "tie_word_embeddings": _DEFAULT + " (True)",
        "pad_token_id": _DEFAULT,
        "eos_token_id": _DEFAULT,
        "bos_token_id": _DEFAULT,
        "dtype": "convert_gemma4_weights.py --text_dtype default (bfloat16)",
    },
    # transformers 5.17 (the GPU runtime's) and 5.19 fold global_head_dim /
    # num_global_key_value_heads into per_layer_config: the loaded config has
    # no attribute of either name, and reading a per-layer attribute such as
    # head_dim on the whole config raises AmbiguousGlobalPerLayerAttributeError.
    # vLLM 0.24.0 reads config.head_dim (ModelConfig's head size) and
    # getattr(config, "global_head_dim" / "num_global_key_value_heads", ...),
    # so without these overrides it fails to start, and with only the access
    # flag it would build the full-attention layers with 256-dim heads and 8 KV
    # heads. vLLM 0.31+ reads per_layer_config; the overrides change nothing there.
    vllm_hf_overrides={
        "allow_global_per_layer_attribute_access": True,
        "global_head_dim": 512,
        "num_global_key_value_heads": 2,
    },
)


def _first_layers(layers: int, why: str) -> ConfigOnlyProfile:
    """26B-A4B's first ``layers`` layers (whole 5-sliding + 1-full groups), every
    layer's shapes unchanged; ``why`` goes into the provenance."""
    if layers % 6:
        raise ValueError(f"layers must be whole groups of 6, got {layers}")
    return ConfigOnlyProfile(
        name=f"gemma-4-26b-a4b-{layers}l",
        hf_id=GEMMA_4_26B_A4B.hf_id,
        text_config={
            **GEMMA_4_26B_A4B.text_config,
            "num_hidden_layers": layers,
            "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * (layers // 6),
        },
        sources={
            **GEMMA_4_26B_A4B.sources,
            "num_hidden_layers": f"{layers} of {_CONVERT}'s 30 ({why})",
            "layer_types": f"the first {layers} of {_CONVERT}'s",
        },
        vllm_hf_overrides=GEMMA_4_26B_A4B.vllm_hf_overrides,
    )


# The first 12 of the 30 layers: 20 GiB of weights as vLLM loads them, so two servers fit
# side by side on one 80 GB H100 where two full ones (~52 GB each) need an H200.
# Per-layer costs are those of the real model; per-step ones are not.
GEMMA_4_26B_A4B_12L = _first_layers(12, "two side by side on an 80 GB GPU")
# The first 6: one group, for checks whose subject is the start-up (compile cache,
# kernel choice), where fewer layers mean a shorter compile and no other change.
GEMMA_4_26B_A4B_6L = _first_layers(6, "start-up checks: a shorter compile")

PROFILES: dict[str, ConfigOnlyProfile | None] = {
    "tiny": None,  # tiny_model.build_tiny_model(): random weights, no extra server args
    GEMMA_4_26B_A4B.name: GEMMA_4_26B_A4B,
    GEMMA_4_26B_A4B_12L.name: GEMMA_4_26B_A4B_12L,
    GEMMA_4_26B_A4B_6L.name: GEMMA_4_26B_A4B_6L,
}


def _profile(name: str) -> ConfigOnlyProfile | None:
    if not isinstance(name, str) or name not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {name!r}")
    return PROFILES[name]


def profile_params(name: str) -> dict[str, Any]:
    """The full parameter set of a profile's build (what its cache key hashes)."""
    profile = _profile(name)
    if profile is None:
        return tiny_model.tiny_model_params()
    return {
        "recipe": _RECIPE_VERSION,
        "profile": profile.name,
        "text_config": dict(profile.text_config),
        "dtype": profile.dtype,
    }


def profile_path(name: str, cache_dir: Path | None = None) -> Path:
    """Cache location of a profile's build."""
    params = profile_params(name)
    if _profile(name) is None:
        return tiny_model.tiny_model_path(params, cache_dir)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return (cache_dir or tiny_model.default_cache_dir()) / f"gemma4-{name}-{digest}"


def server_args(name: str) -> list[str]:
    """The vLLM server arguments a profile needs to be served at all.

    Config-only profiles: ``--load-format dummy`` (there are no weights) and
    ``--hf-overrides`` with :attr:`ConfigOnlyProfile.vllm_hf_overrides`. The
    tiny profile: none.
    """
    profile = _profile(name)
    if profile is None:
        return []
    args = ["--load-format", "dummy"]
    if profile.vllm_hf_overrides:
        args += ["--hf-overrides", json.dumps(dict(profile.vllm_hf_overrides), sort_keys=True)]
    return args


def build_profile(
    name: str,
    path: str | os.PathLike[str] | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write (or reuse) the checkpoint directory of profile ``name``; its path.

    Args:
        name: a key of :data:`PROFILES`.
        path: target directory (default: :func:`profile_path`, cached).
        progress: called with a short line per step (e.g. ``print``).

    Returns:
        ``tiny``: what :func:`~.tiny_model.build_tiny_model` returns. Config-only
        profiles: a directory with ``config.json``, ``generation_config.json``,
        ``tokenizer.json`` and ``tokenizer_config.json`` (no weights).
    """
    profile = _profile(name)
    if profile is None:
        return tiny_model.build_tiny_model(path, progress=progress)
    target = Path(path) if path is not None else profile_path(name)
    return tiny_model.build_cached(
        target,
        profile_params(name),
        _write_config_only,
        _CONFIG_ONLY_FILES,
        describe=f"{name}: writing config + tokenizer (no weights) ...",
        label=name,
        progress=progress,
    )


def hf_text_config(name: str):
    """The profile's ``transformers.Gemma4TextConfig`` (architecture ``Gemma4ForCausalLM``)."""
    from transformers import Gemma4TextConfig

    profile = _profile(name)
    if profile is None:
        raise ValueError("the tiny profile's config comes from tiny_model, not from here")
    kwargs = {key: value for key, value in profile.text_config.items()}
    kwargs["layer_types"] = list(kwargs["layer_types"])
    kwargs["vocab_size_per_layer_input"] = kwargs["vocab_size"]
    config = Gemma4TextConfig(**kwargs)
    config.architectures = ["Gemma4ForCausalLM"]
    config.dtype = profile.dtype
    return config


def _write_config_only(directory: Path, params: dict[str, Any]) -> None:
    from transformers import GenerationConfig

    profile = _profile(params["profile"])
    assert profile is not None
    text = profile.text_config
    vocab = tiny_model._write_tokenizer(
        directory, vocab_size=text["vocab_size"], model_max_length=text["max_position_embeddings"]
    )
    if vocab != text["vocab_size"]:
        raise AssertionError(f"tokenizer has {vocab} ids, the config {text['vocab_size']}")
    hf_text_config(profile.name).save_pretrained(directory)
    # transformers keeps these two only inside per_layer_config; written back
    # as in the published config.json, so a reader (or an older transformers)
    # sees them too. Loading ignores them next to per_layer_config.
    config_path = directory / "config.json"
    data = json.loads(config_path.read_text())
    for key in ("global_head_dim", "num_global_key_value_heads"):
        data[key] = text[key]
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    GenerationConfig(
        bos_token_id=text["bos_token_id"],
        eos_token_id=text["eos_token_id"],
        pad_token_id=text["pad_token_id"],
    ).save_pretrained(directory)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vllm_gemma4_router.harness.model_profiles NAME [PATH]``: build, print the dir."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        names = ",".join(PROFILES)
        print(f"usage: python -m vllm_gemma4_router.harness.model_profiles {{{names}}} [PATH]")
        return 0 if args else 2
    print(build_profile(args[0], args[1] if len(args) > 1 else None, progress=print))
    return 0


if __name__ == "__main__":
    sys.exit(main())
