"""What the benchmark trains on, as nothing can be downloaded: random-weight checkpoints of the real Qwen2.5
shapes (or tiny stand-ins on CPU), and random token ids with Banking77's lengths under the Qwen2.5 tokenizer
(banking77_token_lengths.json: counts only), labelled by the last id mod 77 so that the loss can fall."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from qlora_helpers import atomic
from qlora_helpers.memory import ModelShape

NUM_LABELS = 77  # Banking77's intents
PAD_ID = 0  # the tiny tokenizer's EOS, which load_tokenizer makes the pad token
MAIN_CELLS = (("7B", "qlora"), ("0.5B", "full"), ("1.5B", "lora"))  # the three notebooks' (model, method)
REAL_MODELS = {"smollm2": "offline:smollm2-135m"}  # cells on real weights: key -> offline model id
TINY = {"0.5B": ModelShape("tiny-0.5B", 64, 160, 2, 4, 2, 2048, True),
        "1.5B": ModelShape("tiny-1.5B", 96, 224, 2, 6, 2, 2048, True),
        "7B": ModelShape("tiny-7B", 128, 320, 2, 8, 4, 2048, False)}


def banking77_lengths() -> tuple[np.ndarray, np.ndarray]:
    """(token lengths, how many training utterances have each), both 1-D of the same size."""
    counts = {int(k): v for k, v in json.loads(Path(__file__).with_name("banking77_token_lengths.json")
                                              .read_text())["train"].items()}
    lengths = np.array(sorted(counts))
    return lengths, np.array([counts[n] for n in lengths], dtype=float)


def synthetic_dataset(n: int, vocab: int, *, max_length: int = 128, pad_to: int | None = None,
                      fixed_length: int | None = None, seed: int = 0) -> list[dict]:
    """`n` tokenized rows, as the Trainer takes them, with Banking77's lengths (or all `fixed_length` long,
    one in 4 shortened so batches carry a padding mask); pad_to: pad every row up front (the tutorial's
    padding="max_length")."""
    rng = np.random.default_rng(seed)
    if fixed_length:
        lens = np.full(n, fixed_length)
        lens[::4] = rng.integers(max(1, fixed_length // 4), fixed_length, size=len(lens[::4]))
    else:
        lengths, counts = banking77_lengths()
        lens = rng.choice(lengths, size=n, p=counts / counts.sum())
    rows = []
    for length in np.minimum(lens, max_length):
        ids = rng.integers(1, vocab, size=int(length)).tolist()
        padding = pad_to - len(ids) if pad_to else 0
        rows.append({"input_ids": ids + [PAD_ID] * padding, "attention_mask": [1] * len(ids) + [0] * padding,
                     "label": ids[-1] % NUM_LABELS})
    return rows


def build_checkpoint(shape: ModelShape, folder: Path, device: str, seed: int = 0) -> Path:
    """A random Qwen2ForSequenceClassification of `shape` (bf16) and a tiny tokenizer whose EOS (the
    pad token) is id 0, saved atomically into `folder` unless it holds one (a crash leaves none half-written)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForSequenceClassification

    if (folder / "config.json").is_file():
        return folder
    config = Qwen2Config(**shape.config_kwargs(), num_labels=NUM_LABELS, pad_token_id=PAD_ID,
                         eos_token_id=PAD_ID, bos_token_id=PAD_ID)
    with torch.device("meta"):
        model = Qwen2ForSequenceClassification(config)
    model = model.to(torch.bfloat16).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, 0.02, generator=generator)
    tokenizer = Tokenizer(models.WordLevel({"<|endoftext|>": PAD_ID, "<unk>": 1}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with atomic.folder(folder, replace=False) as staging:
        model.save_pretrained(staging)
        PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                unk_token="<unk>").save_pretrained(staging)
    return folder
