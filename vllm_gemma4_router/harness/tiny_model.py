"""A tiny random-weight Gemma 4 MoE checkpoint that vLLM can serve on a laptop CPU.

The checkpoint is a text-only ``Gemma4ForCausalLM`` (``model_type`` ``gemma4_text``)
with ``enable_moe_block=True``: every decoder layer has a dense MLP plus a
router and ``num_experts`` experts, exactly the layout of
``google/gemma-4-26B-A4B-it``, only small. Its tokenizer is byte-level: three
special tokens (``<pad>``, ``<eos>``, ``<bos>``) then the 256 bytes, so any text
round-trips.

The weights are random but shaped so that greedy decoding says something
prompt-dependent and routing decides it:

* ``per_expert_scale`` and the router's ``scale`` are random positive vectors,
  so a routing path that drops or misapplies either changes the output;
* the output rows of the special tokens and of non-printable bytes are zero,
  so greedy text is printable ASCII and never stops early at ``<eos>``.

Builds are deterministic (same parameters, same files) and cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Bumped whenever the recipe below changes, so stale caches are not reused.
_RECIPE_VERSION = 1
_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>")
_COMPLETE_MARKER = ".complete"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def default_cache_dir() -> Path:
    """Where tiny models are cached: ``$XDG_CACHE_HOME`` (or ``~/.cache``)/vllm-gemma4-router."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vllm-gemma4-router"


def tiny_model_params(
    *,
    seed: int = 0,
    num_experts: int = 128,
    top_k: int = 8,
    hidden_size: int = 256,
    num_layers: int = 4,
    moe_intermediate_size: int = 32,
    intermediate_size: int = 128,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 64,
    sliding_window: int = 128,
    init_std: float = 0.06,
) -> dict[str, Any]:
    """The full parameter set of a tiny model build (also what its cache key hashes).

    Args:
        seed: the weights are a pure function of the parameters and this seed.
        num_experts, top_k: experts per MoE layer and experts per token.
        hidden_size, num_layers, moe_intermediate_size, intermediate_size,
        num_heads, num_kv_heads, head_dim, sliding_window: model shape. Every
            layer but the last uses sliding-window attention (the last is global,
            as Gemma 4 requires).
        init_std: standard deviation of the random matrices; large enough that
            the residual stream, hence the routing, varies strongly with the input.
    """
    return {
        "recipe": _RECIPE_VERSION,
        "seed": seed,
        "num_experts": num_experts,
        "top_k": top_k,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "moe_intermediate_size": moe_intermediate_size,
        "intermediate_size": intermediate_size,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "head_dim": head_dim,
        "sliding_window": sliding_window,
        "init_std": init_std,
    }


def tiny_model_path(params: dict[str, Any], cache_dir: Path | None = None) -> Path:
    """Cache location of the build described by ``params`` (from :func:`tiny_model_params`)."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return (cache_dir or default_cache_dir()) / f"tiny-gemma4-moe-{digest}"


def is_complete(
    path: str | os.PathLike[str], required_files: Sequence[str] = _REQUIRED_FILES
) -> bool:
    """True if ``path`` holds a finished build (``required_files`` plus the completion marker)."""
    path = Path(path)
    return all((path / name).is_file() for name in (*required_files, _COMPLETE_MARKER))


def build_tiny_model(
    path: str | os.PathLike[str] | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    **shape: Any,
) -> Path:
    """Write (or reuse) a random-weight Gemma 4 MoE checkpoint and return its directory.

    Args:
        path: target directory. ``None``: ``default_cache_dir()/tiny-gemma4-moe-<hash>``,
            the hash covering every parameter of :func:`tiny_model_params`. An
            existing complete build at the target is reused as is; an incomplete
            one is replaced.
        progress: called with a short line per step (e.g. ``print``).
        **shape: keyword arguments of :func:`tiny_model_params` (``seed``,
            ``num_experts``, ``top_k``, ``hidden_size``, ...); an unknown name
            raises ``TypeError``.

    Returns:
        The checkpoint directory: ``config.json``, ``model.safetensors``,
        ``generation_config.json``, ``tokenizer.json``, ``tokenizer_config.json``.
    """
    params = tiny_model_params(**shape)
    target = Path(path) if path is not None else tiny_model_path(params)
    return build_cached(
        target,
        params,
        _write_checkpoint,
        _REQUIRED_FILES,
        describe=(
            f"tiny model: building {params['num_layers']} layers x {params['num_experts']} "
            f"experts (top-{params['top_k']}) ..."
        ),
        label="tiny model",
        progress=progress,
    )


def build_cached(
    target: Path,
    params: dict[str, Any],
    writer: Callable[[Path, dict[str, Any]], None],
    required_files: Sequence[str],
    *,
    describe: str,
    label: str,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write (or reuse) the checkpoint ``writer(directory, params)`` makes, at ``target``.

    Shared by every checkpoint profile (``harness.model_profiles``): a complete
    build at ``target`` (``required_files`` plus the completion marker) is reused,
    an incomplete one replaced; the build happens in a staging directory beside
    ``target`` and is renamed into place, so an interrupted build never leaves a
    directory that looks like a model.
    """
    say = progress or (lambda _line: None)
    if is_complete(target, required_files):
        say(f"{label}: cached at {target}")
        return target
    say(describe)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        writer(staging, params)
        (staging / _COMPLETE_MARKER).write_text(json.dumps(params, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished the same build first; theirs is identical.
            if not is_complete(target, required_files):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    say(f"{label}: written to {target}")
    return target


def _hf_config(params: dict[str, Any], vocab_size: int):
    from transformers import Gemma4TextConfig

    num_layers = params["num_layers"]
    config = Gemma4TextConfig(
        vocab_size=vocab_size,
        hidden_size=params["hidden_size"],
        intermediate_size=params["intermediate_size"],
        num_hidden_layers=num_layers,
        num_attention_heads=params["num_heads"],
        num_key_value_heads=params["num_kv_heads"],
        head_dim=params["head_dim"],
        global_head_dim=params["head_dim"],
        max_position_embeddings=4096,
        sliding_window=params["sliding_window"],
        layer_types=["sliding_attention"] * (num_layers - 1) + ["full_attention"],
        # Per-layer embeddings are a separate Gemma 4 feature that only costs
        # size here.
        hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=vocab_size,
        enable_moe_block=True,
        num_experts=params["num_experts"],
        top_k_experts=params["top_k"],
        moe_intermediate_size=params["moe_intermediate_size"],
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        initializer_range=params["init_std"],
    )
    config.architectures = ["Gemma4ForCausalLM"]
    return config


def _printable_token_ids() -> list[int]:
    offset = len(_SPECIAL_TOKENS)
    return [offset + b for b in range(256) if 0x20 <= b < 0x7F or b == 0x0A]


def _random_state_dict(model, params: dict[str, Any]) -> dict[str, Any]:
    """Fill every tensor from one seeded generator, in name order (independent of HF's init)."""
    import torch

    gen = torch.Generator().manual_seed(params["seed"])
    std = params["init_std"]
    state = {}
    for name, tensor in sorted(model.state_dict().items()):
        shape = tensor.shape
        if name.endswith("router.per_expert_scale"):
            value = torch.empty(shape).uniform_(0.25, 2.0, generator=gen)
        elif name.endswith("router.scale"):
            value = torch.empty(shape).uniform_(0.5, 1.5, generator=gen)
        elif name.endswith("layer_scalar"):
            value = torch.ones(shape)
        elif "norm" in name:
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            value = std * torch.randn(shape, generator=gen)
        state[name] = value.to(torch.float32).contiguous()
    lm_head = state["lm_head.weight"]
    keep = torch.zeros(lm_head.shape[0], dtype=torch.bool)
    keep[_printable_token_ids()] = True
    lm_head[~keep] = 0.0
    # Unit-variance logits over the printable tokens: a sharp enough
    # distribution that greedy text follows the hidden state, not ties.
    lm_head[keep] *= 1.0 / (std * params["hidden_size"] ** 0.5)
    return state


def _write_tokenizer(
    directory: Path, vocab_size: int | None = None, model_max_length: int = 4096
) -> int:
    """Write the byte-level tokenizer; its vocabulary size.

    ``vocab_size`` (default: just the specials and the 256 bytes) pads the
    vocabulary with filler tokens ``<f{id}>`` up to that size, so that every id
    a random-weight model of a real vocabulary can emit detokenizes (to
    printable ASCII). Encoding never produces a filler: the BPE has no merges,
    so text still encodes one token per byte.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    # ByteLevel.alphabet() is unordered; order it by the byte each character stands for.
    byte_chars = sorted(byte_alphabet, key=_byte_of_char)
    vocab = {tok: i for i, tok in enumerate(_SPECIAL_TOKENS)}
    vocab.update({ch: len(_SPECIAL_TOKENS) + i for i, ch in enumerate(byte_chars)})
    base = len(vocab)
    if vocab_size is not None:
        if vocab_size < base:
            raise ValueError(f"vocab_size must be at least {base}, got {vocab_size}")
        vocab.update({filler_token(i): i for i in range(base, vocab_size)})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(_SPECIAL_TOKENS))
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "pad_token": "<pad>",
                "eos_token": "<eos>",
                "bos_token": "<bos>",
                "model_max_length": model_max_length,
                "clean_up_tokenization_spaces": False,
            },
            indent=2,
        )
        + "\n"
    )
    return len(vocab)


def filler_token(token_id: int) -> str:
    """The text of filler token ``token_id`` (also what it decodes to)."""
    # Printable ASCII only: the byte-level decoder maps these characters to themselves.
    return f"<f{token_id}>"


def _byte_of_char(ch: str) -> int:
    # GPT-2's byte-to-unicode map: printable Latin-1 bytes map to themselves,
    # the other 68 bytes to U+0100 onwards in byte order.
    code = ord(ch)
    if code < 0x100:
        return code
    shifted = [b for b in range(256) if not (0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or b >= 0xAE)]
    return shifted[code - 0x100]


def _write_checkpoint(directory: Path, params: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import Gemma4ForCausalLM, GenerationConfig

    vocab_size = _write_tokenizer(directory)
    config = _hf_config(params, vocab_size)
    with torch.device("meta"):
        skeleton = Gemma4ForCausalLM(config)
    state = _random_state_dict(skeleton, params)
    config.dtype = "float32"
    config.save_pretrained(directory)
    GenerationConfig(bos_token_id=2, eos_token_id=1, pad_token_id=0).save_pretrained(directory)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def main(argv: list[str] | None = None) -> int:
    """``python -m vllm_gemma4_router.harness.tiny_model [PATH]``: build and print the directory."""
    args = sys.argv[1:] if argv is None else argv
    print(build_tiny_model(args[0] if args else None, progress=print))
    return 0


if __name__ == "__main__":
    sys.exit(main())
