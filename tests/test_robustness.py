"""Interruptions and failures a Kaggle user meets: a killed run, CUDA OOM, saving and reloading."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from qlora_helpers import data, evaluation, export, modeling, training

SCRIPT = Path(__file__).parent / "scripts" / "train_tiny.py"


def _run(model, output_dir, slow=False):
    return subprocess.Popen([sys.executable, str(SCRIPT), model, str(output_dir), "slow" if slow else "fast"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_killed_run_resumes_to_the_same_result(tiny_qwen2, tmp_path):
    reference = _run(tiny_qwen2, tmp_path / "uninterrupted")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()

    victim = _run(tiny_qwen2, tmp_path / "interrupted", slow=True)
    deadline = time.time() + 300
    while not (tmp_path / "interrupted" / "checkpoint-30").is_dir():  # mid-epoch 1 (38 steps an epoch)
        assert victim.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "interrupted" / "outcome.json").exists()

    rerun = _run(tiny_qwen2, tmp_path / "interrupted")
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    expected = json.loads((tmp_path / "uninterrupted" / "outcome.json").read_text())
    resumed = json.loads((tmp_path / "interrupted" / "outcome.json").read_text())
    assert resumed["resumed_from"].endswith("checkpoint-30")
    assert expected["losses"].keys() == resumed["losses"].keys() and len(expected["losses"]) == 76  # 2 x 38: 600 rows / 16
    after_resume = [step for step in expected["losses"] if int(step) > 30]
    assert max(abs(expected["losses"][s] - resumed["losses"][s]) for s in after_resume) <= 1e-6
    assert resumed["predictions"] == expected["predictions"]


def test_cuda_oom_retries_with_half_the_micro_batch(tiny_qwen2, small_split, tmp_path, monkeypatch):
    loaded = modeling.load_model(tiny_qwen2, "lora")
    rows = data.tokenize(small_split[0], loaded.tokenizer, max_length=64)
    seen = []
    real_train_once = training._train_once

    def oom_above_8(trainer, loaded, rows, config):
        seen.append((config.batch_size, config.gradient_accumulation))
        if config.batch_size > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train_once(trainer, loaded, rows, config)

    monkeypatch.setattr(training, "_train_once", oom_above_8)
    config = training.default_train_config("lora", output_dir=str(tmp_path), batch_size=32, max_steps=3,
                                           save_steps=100)
    stats = training.train(loaded, rows, config)
    assert seen == [(32, 1), (16, 2), (8, 4)]
    assert stats.steps == 3 and stats.examples == 3 * 32  # the effective batch is unchanged

    with pytest.raises(training.OutOfMemoryAdvice, match="halve batch_size and double gradient_accumulation"):
        training.train(loaded, rows, training.default_train_config(
            "lora", output_dir=str(tmp_path / "b"), batch_size=32, retry_on_oom=False))


def test_cuda_oom_under_a_checkpointing_limit_first_retries_with_every_micro_batch_checkpointed(
        tiny_qwen2, small_split, tmp_path, monkeypatch, capsys):
    """The limit spends memory on speed (checkpoint_above_tokens, "auto" by default on a GPU): when that runs
    out, the same micro-batch checkpointing everything is the first retry, before halving the batch."""
    loaded = modeling.load_model(tiny_qwen2, "lora", gradient_checkpointing=True)
    rows = data.tokenize(small_split[0], loaded.tokenizer, max_length=64)
    seen = []
    real_train_once = training._train_once

    def oom_with_a_limit(trainer, loaded, rows, config):
        seen.append((config.batch_size, config.checkpoint_above_tokens))
        if config.checkpoint_above_tokens is not None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train_once(trainer, loaded, rows, config)

    monkeypatch.setattr(training, "_train_once", oom_with_a_limit)
    config = training.default_train_config("lora", output_dir=str(tmp_path), batch_size=16, max_steps=2,
                                           save_steps=100, checkpoint_above_tokens=256)
    stats = training.train(loaded, rows, config)
    assert seen == [(16, 256), (16, None)] and stats.step_levers["checkpoint_above_tokens"] is None
    assert "retrying with every micro-batch checkpointed" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_saved_model_reloads_with_identical_predictions(tiny_qwen2, small_split, tmp_path, method):
    loaded = modeling.load_model(tiny_qwen2, method)
    names = list(data.BANKING77_INTENTS)
    rows = data.tokenize(small_split[0], loaded.tokenizer, max_length=64)
    training.train(loaded, rows, training.default_train_config(
        method, output_dir=str(tmp_path / "ckpt"), max_steps=5, learning_rate=5e-3, save_steps=100))
    test_rows = data.tokenize(small_split[1], loaded.tokenizer, max_length=64)
    before = evaluation.predict(loaded.model, test_rows, loaded.tokenizer)

    folder = export.save_trained(loaded, tmp_path / "saved", names)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    reloaded, labels = export.load_trained(folder)
    assert labels == names and reloaded.method == method
    assert np.array_equal(evaluation.predict(reloaded.model, test_rows, reloaded.tokenizer), before)
    texts = small_split[1]["text"][:4]
    assert (evaluation.predict_texts(reloaded.model, reloaded.tokenizer, texts, labels)
            == [names[i] for i in before[:4]])
    if method != "full":
        assert size < loaded.footprint_bytes  # only adapters and head were saved


def test_merge_goes_into_a_16bit_copy_not_the_4bit_weights(minilm_path, banking77, tmp_path):
    loaded = modeling.load_model(minilm_path, "qlora", num_labels=77)
    rows = data.tokenize(data.stratified_subsample(banking77.train, 300, seed=0), loaded.tokenizer, max_length=64)
    training.train(loaded, rows, training.default_train_config(
        "qlora", output_dir=str(tmp_path / "ckpt"), max_steps=8, learning_rate=5e-3, save_steps=100))
    saved = export.save_trained(loaded, tmp_path / "adapter", banking77.label_names)
    merged_folder = export.merge_to_16bit(saved, tmp_path / "merged", dtype=torch.float32)

    from transformers import AutoModelForSequenceClassification

    merged = AutoModelForSequenceClassification.from_pretrained(merged_folder)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert not any(type(m).__name__ == "Linear4bit" for m in merged.modules())
    test_rows = data.tokenize(banking77.test.select(range(0, 3_080, 10)), loaded.tokenizer, max_length=64)
    from peft import PeftModel

    unmerged = PeftModel.from_pretrained(modeling.load_base(minilm_path, "lora", 77).model, str(saved))
    batch = loaded.tokenizer(banking77.test["text"][:64], padding=True, return_tensors="pt")
    with torch.no_grad():
        unmerged.eval(), merged.eval()
        assert torch.allclose(merged(**batch).logits, unmerged(**batch).logits, atol=1e-4)
    four_bit = evaluation.predict(loaded.model, test_rows, loaded.tokenizer)
    sixteen = evaluation.predict(merged, test_rows, loaded.tokenizer)
    assert (four_bit == sixteen).mean() > 0.8  # the same adapters; the bases differ by NF4 rounding
    with pytest.raises(ValueError, match="already a standalone model"):
        full = modeling.load_model(minilm_path, "full")
        export.merge_to_16bit(export.save_trained(full, tmp_path / "full", banking77.label_names), tmp_path / "x")


# Reruns must never mix runs: checkpoints of other settings, half-written ones, an OOM retry ----------
class _Killed(Exception):
    """Stands in for a kill (SIGKILL, a dead Kaggle session) at a chosen point of training."""


class _RaiseAt(TrainerCallback):
    def __init__(self, event: str, step: int, error: BaseException, batch_size: int | None = None):
        self.event, self.step, self.error, self.batch_size = event, step, error, batch_size

    def _maybe_raise(self, args, state):
        if state.global_step == self.step and self.batch_size in (None, args.per_device_train_batch_size):
            raise self.error

    def on_save(self, args, state, control, **kwargs):
        if self.event == "save":
            self._maybe_raise(args, state)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.event == "step_begin":
            self._maybe_raise(args, state)


def _raise_during_training(monkeypatch, callback: TrainerCallback) -> None:
    real_build_trainer = training.build_trainer

    def build_trainer(*args, **kwargs):
        trainer, measure = real_build_trainer(*args, **kwargs)
        trainer.add_callback(callback)
        return trainer, measure

    monkeypatch.setattr(training, "build_trainer", build_trainer)


def _lora_config(output_dir, **changes) -> training.TrainConfig:
    settings = dict(output_dir=str(output_dir), max_steps=8, batch_size=16, learning_rate=5e-3, save_steps=2,
                    logging_steps=1, max_length=64)
    return training.default_train_config("lora", **{**settings, **changes})


@pytest.fixture
def killed_after_checkpoint_4(tiny_qwen2, small_split, tmp_path, monkeypatch):
    """A LoRA run of 8 steps killed right after saving checkpoint-4: (checkpoint folder, training rows)."""
    loaded = modeling.load_model(tiny_qwen2, "lora")
    rows = data.tokenize(small_split[0], loaded.tokenizer, max_length=64)
    with monkeypatch.context() as patch:
        _raise_during_training(patch, _RaiseAt("save", 4, _Killed()))
        with pytest.raises(_Killed):
            training.train(loaded, rows, _lora_config(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / "checkpoint-4" / "trainer_state.json").is_file()
    return tmp_path / "ckpt", rows


@pytest.mark.parametrize("setting, lora, changes", [
    ("learning_rate", {}, {"learning_rate": 1e-4}),
    ("effective_batch", {}, {"batch_size": 8}),
    ("lora", {"lora_r": 4}, {}),
    ("train_data", {}, {"rows": 300}),
    ("max_length", {}, {"max_length": 32}),
])
def test_rerun_with_other_settings_sets_old_checkpoints_aside(killed_after_checkpoint_4, tiny_qwen2, capsys,
                                                              setting, lora, changes):
    folder, rows = killed_after_checkpoint_4
    capsys.readouterr()
    changes = dict(changes)
    if "rows" in changes:
        rows = rows.select(range(changes.pop("rows")))
    config = _lora_config(folder, **changes)
    stats = training.train(modeling.load_model(tiny_qwen2, "lora", **lora), rows, config)
    out = capsys.readouterr().out
    assert "resuming" not in out and setting in out and "from scratch" in out
    assert stats.steps == 8 and stats.examples == 8 * config.batch_size  # all 8 steps trained by this run
    aside = folder.with_name(f"{folder.name}.set-aside-1")
    assert (aside / "checkpoint-4" / "trainer_state.json").is_file() and str(aside.name) in out
    recorded = json.loads((folder / training.SETTINGS_FILE).read_text())
    assert recorded == json.loads(json.dumps(training.run_settings(
        modeling.load_model(tiny_qwen2, "lora", **lora), rows, config)))


def test_rerun_with_the_same_effective_batch_resumes(killed_after_checkpoint_4, tiny_qwen2, capsys):
    """Half the micro-batch and twice the accumulation (what the OOM retry does) is the same run."""
    folder, rows = killed_after_checkpoint_4
    capsys.readouterr()
    config = _lora_config(folder, batch_size=8, gradient_accumulation=2)
    stats = training.train(modeling.load_model(tiny_qwen2, "lora"), rows, config)
    assert "resuming from checkpoint-4" in capsys.readouterr().out
    assert stats.steps == 8 and stats.examples == 4 * 16 and stats.resumed_from_step == 4
    assert not folder.with_name(f"{folder.name}.set-aside-1").exists()


def test_half_written_newest_checkpoint_resumes_from_the_last_complete_one(killed_after_checkpoint_4, tiny_qwen2,
                                                                           capsys):
    folder, rows = killed_after_checkpoint_4
    (folder / "checkpoint-6").mkdir()  # a kill while saving: the adapter written, the trainer state not
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copy(folder / "checkpoint-4" / name, folder / "checkpoint-6" / name)
    capsys.readouterr()
    stats = training.train(modeling.load_model(tiny_qwen2, "lora"), rows, _lora_config(folder))
    out = capsys.readouterr().out
    assert "checkpoint-6 is incomplete" in out and "resuming from checkpoint-4" in out
    assert stats.steps == 8 and stats.examples == 4 * 16
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-8", training.SETTINGS_FILE]


def test_oom_retry_restarts_from_the_initial_weights(tiny_qwen2, small_split, tmp_path, monkeypatch):
    """An OOM after two optimizer updates, before any checkpoint: the retry at half the micro-batch must
    end where an uninterrupted run at that micro-batch and twice the accumulation ends."""
    def trained(folder, batch_size, accumulation, oom_at_step=None):
        loaded = modeling.load_model(tiny_qwen2, "lora")
        rows = data.tokenize(small_split[0], loaded.tokenizer, max_length=64)
        with monkeypatch.context() as patch:
            if oom_at_step:
                _raise_during_training(patch, _RaiseAt("step_begin", oom_at_step, batch_size=batch_size,
                                                       error=torch.OutOfMemoryError("CUDA out of memory.")))
            config = _lora_config(folder, max_steps=4, save_steps=100, batch_size=batch_size,
                                  gradient_accumulation=accumulation)
            stats = training.train(loaded, rows, config)
        return stats, {n: p.detach().clone() for n, p in loaded.model.named_parameters() if p.requires_grad}

    stats, retried = trained(tmp_path / "oom", 16, 1, oom_at_step=2)
    _, uninterrupted = trained(tmp_path / "reference", 8, 2)
    assert retried.keys() == uninterrupted.keys()
    assert max((retried[n] - uninterrupted[n]).abs().max().item() for n in retried) < 1e-6
    assert (stats.batch_size, stats.gradient_accumulation, stats.steps) == (8, 2, 4)  # recorded as run


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_saved_reloaded_and_merged_models_name_the_intents(tiny_qwen2, tmp_path, method):
    """Any plain transformers loader answers `card_arrival`, not `LABEL_11`, with no file of ours."""
    from transformers import AutoConfig, pipeline

    names = list(data.BANKING77_INTENTS)
    id2label = dict(enumerate(names))
    saved = export.save_trained(modeling.load_model(tiny_qwen2, method), tmp_path / "saved", names)
    reloaded, _ = export.load_trained(saved)
    assert reloaded.model.config.id2label == id2label
    standalone = saved if method == "full" else export.merge_to_16bit(saved, tmp_path / "merged", torch.float32)
    config = AutoConfig.from_pretrained(standalone)
    assert config.id2label == id2label and config.label2id == {name: i for i, name in enumerate(names)}
    answer = pipeline("text-classification", model=str(standalone), device="cpu")("when will my card arrive?")
    assert answer[0]["label"] in names
    assert modeling.load_model(tiny_qwen2, method, label_names=names).model.config.id2label == id2label
