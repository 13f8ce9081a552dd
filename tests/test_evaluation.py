import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from qlora_helpers import data, evaluation, modeling


def test_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 77, 3_080)
    predictions = np.where(rng.random(3_080) < 0.7, labels, rng.integers(0, 77, 3_080))
    names = list(data.BANKING77_INTENTS)
    result = evaluation.compute_metrics(labels, predictions, names)
    assert result.accuracy == pytest.approx(accuracy_score(labels, predictions), abs=0)
    assert result.macro_f1 == pytest.approx(f1_score(labels, predictions, average="macro"), abs=1e-12)
    assert np.array_equal(result.confusion, confusion_matrix(labels, predictions, labels=range(77)))


def test_macro_f1_averages_over_the_intents_present_and_names_the_absent():
    """Test rows covering 76 of the 77 intents, predicted perfectly: macro-F1 1, not 76/77."""
    names = list(data.BANKING77_INTENTS)
    labels = np.array([i for i in range(77) if i != 5] * 2)
    result = evaluation.compute_metrics(labels, labels, names)
    assert result.macro_f1 == 1.0 and result.absent_intents == [names[5]]
    three = np.array([0, 1, 2] * 3)
    result = evaluation.compute_metrics(three, three, names)
    assert result.macro_f1 == 1.0 and len(result.absent_intents) == 74 and names[0] not in result.absent_intents
    predictions = labels.copy()
    predictions[:3] = 5  # a prediction of an absent intent is a wrong answer: it counts, as in sklearn
    result = evaluation.compute_metrics(labels, predictions, names)
    assert result.macro_f1 == pytest.approx(f1_score(labels, predictions, average="macro"), abs=1e-12)
    assert result.macro_f1 < 1
    assert result.absent_intents == [names[5]]


def test_evaluate_step_names_the_intents_without_test_rows(monkeypatch, capsys):
    from types import SimpleNamespace

    from qlora_helpers.notebook import experiment

    names = list(data.BANKING77_INTENTS)
    labels = np.array([i for i in range(77) if i not in (3, 40)])
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: evaluation.compute_metrics(labels, labels, names))
    params = SimpleNamespace(batch_size=8)
    experiment.evaluate_on_test(params, SimpleNamespace(model=None, tokenizer=None), labels, SimpleNamespace(
        label_names=names, num_labels=77))
    out = capsys.readouterr().out
    assert "2 intents have no test rows" in out and names[3] in out and names[40] in out


def test_top_confused_pairs_finds_the_hard_pair():
    names = list(data.BANKING77_INTENTS)
    arrival, estimate = names.index("card_arrival"), names.index("card_delivery_estimate")
    labels = np.array([arrival] * 40 + [estimate] * 40 + [5] * 10)
    predictions = np.array([estimate] * 12 + [arrival] * 28 + [arrival] * 5 + [estimate] * 35 + [6] * 2 + [5] * 8)
    pairs = evaluation.compute_metrics(labels, predictions, names).confused_pairs
    assert pairs[0] == {"true": "card_arrival", "predicted": "card_delivery_estimate", "count": 12,
                        "share_of_true": 12 / 40}
    assert [(p["true"], p["count"]) for p in pairs] == [("card_arrival", 12), ("card_delivery_estimate", 5),
                                                        (names[5], 2)]


def test_predict_keeps_dataset_order_despite_length_sorting(tiny_qwen2, banking77):
    loaded = modeling.load_model(tiny_qwen2, "full")
    rows = data.tokenize(banking77.test.select(range(0, 3_080, 97)), loaded.tokenizer)
    batched = evaluation.predict(loaded.model, rows, loaded.tokenizer, batch_size=8)
    one_by_one = [evaluation.predict_texts(loaded.model, loaded.tokenizer, [text], banking77.label_names)[0]
                  for text in banking77.test.select(range(0, 3_080, 97))["text"]]
    assert [banking77.label_names[i] for i in batched] == one_by_one


def test_a_16_bit_base_predicts_without_the_trainers_autocast(tiny_qwen2, banking77):
    """A LoRA model on a 16-bit base that this process did not train (trained by the two-GPU processes,
    or loaded from disk) has fp32 adapters and head but no autocast on its forward: predict must
    autocast as training did, else the head meets 16-bit activations (first seen on a GPU:
    "expected mat1 and mat2 to have the same dtype")."""
    import torch

    loaded = modeling.load_model(tiny_qwen2, "lora")
    with torch.no_grad():
        for param in loaded.model.parameters():
            if not param.requires_grad:
                param.data = param.data.to(torch.bfloat16)  # the frozen base in 16-bit, as on a GPU
    texts = banking77.test.select(range(0, 3_080, 97))
    rows = data.tokenize(texts, loaded.tokenizer)
    batched = evaluation.predict(loaded.model, rows, loaded.tokenizer, batch_size=8)
    assert batched.shape == (len(rows),)
    named = evaluation.predict_texts(loaded.model, loaded.tokenizer, texts["text"][:4], banking77.label_names)
    assert named == [banking77.label_names[i] for i in batched[:4]]
