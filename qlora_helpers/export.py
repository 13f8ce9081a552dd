"""After training: save the adapter (with the head), load it back, merge it for export.

A LoRA/QLoRA run saves only what trained (adapters + classification head, a few MB); loading it
back needs the base model id, which is stored beside it. Merging always happens into a 16-bit (or
fp32) copy of the base: merging into 4-bit weights would round the update away.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from . import atomic, defaults
from .modeling import (LoadedModel, ModelSetupError, count_parameters, load_base, load_model, load_tokenizer,
                       model_source, saved_quantization, set_label_names)

MANIFEST = "qlora_helpers.json"


def save_trained(loaded: LoadedModel, folder: str | Path, label_names: list[str]) -> Path:
    """Save adapters + head (or the whole model for `full`), tokenizer and a manifest, atomically.

    The model's config gets the intent names (id2label/label2id) first, so a `full` save answers
    with them in any transformers loader. An adapter folder must hold no config.json (transformers
    would take it for a whole model): it reloads named through load_trained, or merge_to_16bit.
    """
    set_label_names(loaded.model, label_names)
    with atomic.folder(folder) as staging:
        loaded.model.save_pretrained(staging)
        loaded.tokenizer.save_pretrained(staging)
        manifest = {"base_model": loaded.model_id, "method": loaded.method, "label_names": label_names}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return Path(folder)


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no {MANIFEST}: it was not written by save_trained().")
    return json.loads(path.read_text())


def load_trained(folder: str | Path, device: str | None = None) -> tuple[LoadedModel, list[str]]:
    """Load what `save_trained` wrote, on the same kind of base (4-bit for qlora), ready to predict."""
    from peft import PeftModel

    manifest = read_manifest(folder)
    method, labels = manifest["method"], manifest["label_names"]
    if method == "full":
        loaded = load_model(str(folder), "full", num_labels=len(labels), device=device, label_names=labels)
        loaded.model_id = manifest["base_model"]
        return loaded, labels
    loaded = load_base(manifest["base_model"], method, num_labels=len(labels), device=device, label_names=labels)
    loaded.model = PeftModel.from_pretrained(loaded.model, str(folder))
    loaded.trainable_params, loaded.total_params = count_parameters(loaded.model)
    return loaded, labels


def merge_to_16bit(folder: str | Path, out_folder: str | Path, dtype: torch.dtype = torch.bfloat16,
                   base_model: str | None = None) -> Path:
    """Merge the saved adapter into a `dtype` copy of the base model and save a standalone model
    (atomically), its config naming the intents.

    The base is loaded unquantized even for a QLoRA run (its adapters were trained against the NF4
    base, so the merged model differs from the 4-bit one by the quantization error only). A base
    saved already quantized (`...-bnb-4bit`) has no 16-bit weights to merge into: pass the model it
    was quantized from as `base_model`, else ModelSetupError.
    """
    from peft import PeftModel

    manifest = read_manifest(folder)
    if manifest["method"] == "full":
        raise ValueError(f"{folder} is a full fine-tune: it is already a standalone model, nothing to merge.")
    base_model = base_model or manifest["base_model"]
    if saved_quantization(base_model) is not None:
        raise ModelSetupError(
            f"the adapter's base {base_model} is a checkpoint already quantized: merging needs 16-bit "
            "weights. Pass base_model= the model it was quantized from (e.g. Qwen/Qwen2.5-7B for "
            "unsloth/Qwen2.5-7B-bnb-4bit).")
    base = AutoModelForSequenceClassification.from_pretrained(
        model_source(base_model), num_labels=len(manifest["label_names"]), dtype=dtype,
        use_kernels=defaults.HUB_KERNELS)
    set_label_names(base, manifest["label_names"])
    tokenizer = load_tokenizer(str(folder))
    base.config.pad_token_id = tokenizer.pad_token_id
    merged = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    with atomic.folder(out_folder) as staging:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return Path(out_folder)
