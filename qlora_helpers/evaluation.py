"""Predictions and metrics, computed locally (`evaluate.load` fetches scripts and fails offline)."""
from __future__ import annotations

import contextlib

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding

from . import distributed


@dataclass
class Evaluation:
    accuracy: float
    macro_f1: float  # over the intents in the labels or the predictions (see compute_metrics)
    confusion: np.ndarray  # (num_labels, num_labels) counts; rows: true label, columns: predicted label
    confused_pairs: list[dict]  # the most confused (true, predicted) intent pairs, most first
    predictions: np.ndarray  # (n,) predicted label ids
    labels: np.ndarray  # (n,) true label ids
    absent_intents: list[str]  # intents with no test rows: they do not count in macro_f1


def autocast_like_training(model: torch.nn.Module, device: torch.device):
    """The autocast the Trainer trained `model` under: to its 16-bit weights' dtype (a 16-bit or 4-bit
    base: fp16 on a T4, bf16 on Ampere+), none for fp32 weights. Its fp32 head and adapters then take
    the base's 16-bit activations. Needed wherever the model was not trained in this process (loaded
    from disk, or trained by notebook/all_gpus.py's processes): a trained model's forward keeps the
    autocast wrapper accelerate put on it, a fresh one has none and fails with "expected mat1 and mat2
    to have the same dtype"."""
    sixteen = {p.dtype for p in model.parameters()} & {torch.float16, torch.bfloat16}
    if len(sixteen) != 1:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=sixteen.pop())


@torch.no_grad()
def predict(model: torch.nn.Module, dataset, tokenizer, batch_size: int = 64) -> np.ndarray:
    """Predicted label ids, shape (len(dataset),) int64, in the dataset's order.

    `dataset` is what data.tokenize returns: `input_ids`, `attention_mask` and `length` (each row's
    token count: batches are sorted by it, so each is padded little). Raises KeyError without a
    `length` column. Under DDP each process predicts its shard and every process gets the whole,
    gathered result. Runs under the autocast the model trained with (autocast_like_training).
    """
    model.eval()
    lengths = np.asarray(dataset["length"])
    mine = distributed.shard(np.arange(len(dataset)))
    order = mine[np.argsort(-lengths[mine], kind="stable")]
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
    columns = [c for c in ("input_ids", "attention_mask") if c in dataset.column_names]
    rows = dataset.select(order).select_columns(columns)
    device = next(p for p in model.parameters()).device
    predictions = []
    with autocast_like_training(model, device):
        for batch in tqdm(DataLoader(rows, batch_size=batch_size, collate_fn=collator), desc="predict"):
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            predictions.append(logits.argmax(-1).cpu().numpy())
    ordered = np.concatenate(predictions)
    local = np.empty_like(ordered)
    local[np.searchsorted(mine, order)] = ordered  # back to shard order
    return distributed.gather_shards(local, len(dataset))


def predict_texts(model: torch.nn.Module, tokenizer, texts: list[str], label_names: list[str],
                  max_length: int = 128) -> list[str]:
    """Intent names for raw texts: quick inference in a notebook cell."""
    model.eval()
    device = next(p for p in model.parameters()).device
    batch = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad(), autocast_like_training(model, device):
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
    return [label_names[i] for i in logits.argmax(-1).tolist()]


def compute_metrics(labels: np.ndarray, predictions: np.ndarray, label_names: list[str],
                    top_pairs: int = 10) -> Evaluation:
    """Accuracy and macro-F1 (fractions in [0, 1]), the (len(label_names), len(label_names)) confusion
    matrix and the `top_pairs` most confused pairs, from `labels` and `predictions`: label ids of
    shape (n,), indexing label_names.

    Macro-F1 averages over the intents that occur in the labels or the predictions, as sklearn's
    f1_score does when not given `labels=`: an intent with no test rows has no F1 (counting it as 0
    would make a perfect run on 76 of 77 intents score 0.987), while predicting it wrongly still
    costs. Those intents are named in `absent_intents`; the confusion matrix keeps all of them.
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    present = np.unique(np.concatenate([labels, predictions]))
    tested = set(labels.tolist())
    confusion = confusion_matrix(labels, predictions, labels=list(range(len(label_names))))
    return Evaluation(
        accuracy=float(accuracy_score(labels, predictions)),
        macro_f1=float(f1_score(labels, predictions, labels=present, average="macro", zero_division=0)),
        confusion=confusion,
        confused_pairs=top_confused_pairs(confusion, label_names, top_pairs),
        predictions=predictions,
        labels=labels,
        absent_intents=[name for i, name in enumerate(label_names) if i not in tested],
    )


def top_confused_pairs(confusion: np.ndarray, label_names: list[str], k: int = 10) -> list[dict]:
    """The k largest off-diagonal cells: how often intent `true` was predicted as `predicted`."""
    off_diagonal = confusion.copy()
    np.fill_diagonal(off_diagonal, 0)
    flat = np.argsort(-off_diagonal, axis=None, kind="stable")[:k]
    pairs = []
    for true, pred in zip(*np.unravel_index(flat, confusion.shape)):
        if off_diagonal[true, pred] == 0:
            break
        pairs.append({"true": label_names[true], "predicted": label_names[pred],
                      "count": int(off_diagonal[true, pred]),
                      "share_of_true": float(off_diagonal[true, pred] / max(confusion[true].sum(), 1))})
    return pairs


def evaluate(model: torch.nn.Module, dataset, tokenizer, label_names: list[str],
             batch_size: int = 64) -> Evaluation:
    """compute_metrics on `predict`'s predictions for a tokenized dataset with a `label` column."""
    predictions = predict(model, dataset, tokenizer, batch_size)
    return compute_metrics(np.asarray(dataset["label"]), predictions, label_names)
