import json
import math

import numpy as np
import pytest

from qlora_helpers.notebook import results
from qlora_helpers.evaluation import compute_metrics
from qlora_helpers.modeling import LoadedModel
from qlora_helpers.training import TrainStats


def _record(labels=(0, 1, 2, 3, 4, 0)):
    names = [f"intent_{i}" for i in range(5)]
    loaded = LoadedModel(None, None, "offline:tiny-qwen2", "qlora", __import__("torch").float32, 1234, 10, 100)
    stats = TrainStats(2.0, 10, 320, 4000, 5000, 2**30, "process_peak_rss", 1.5, [2.0, 1.5], [160, 320])
    evaluation = compute_metrics(np.array(labels), np.array([0, 1, 2, 3, 3, 1]), names)
    return results.build_result(run_name="03_qlora", loaded=loaded, stats=stats, evaluation=evaluation,
                                label_names=names, data={"train_examples": 320}, demo=True, config={"epochs": 1})


def test_round_trip(tmp_path):
    record = _record()
    path = results.write_result(record, tmp_path / "03" / "results.json")
    back = results.read_result(path)
    assert back == json.loads(json.dumps(record))
    assert back["training"]["examples_per_second"] == 160.0 and math.isclose(back["training"]["padding_share"], 0.2)
    assert math.isclose(back["metrics"]["accuracy"], 4 / 6)
    assert back["versions"]["transformers"] and back["hardware"]["device"] == "cpu"
    assert [r["run_name"] for r in results.read_results(tmp_path)] == ["03_qlora"]


def test_intents_without_test_rows_are_recorded(tmp_path):
    back = results.read_result(results.write_result(_record(labels=(0, 1, 2, 3, 3, 0)), tmp_path / "r.json"))
    assert back["metrics"]["absent_intents"] == ["intent_4"]
    assert results.read_result(results.write_result(_record(), tmp_path / "s.json"))["metrics"]["absent_intents"] == []


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(schema_version=0), "is not 'qlora-notebooks/run-result' v1"),
    (lambda r: r.pop("metrics"), "missing metrics"),
    (lambda r: r["training"].pop("examples_per_second"), "missing training.examples_per_second"),
    (lambda r: r.update(footprint_bytes="1.2 GB"), "footprint_bytes has the wrong type"),
    (lambda r: r["metrics"].update(accuracy=None), "metrics.accuracy has the wrong type"),
    (lambda r: r["training"].update(loss_examples_seen=[16]), "one count per training.losses entry"),
    (lambda r: r["training"].update(recoveries={"step": 4}), "training.recoveries must be a list"),
])
def test_wrong_schema_is_rejected(tmp_path, edit, message):
    record = _record()
    edit(record)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(record))
    with pytest.raises(results.ResultsError, match=message):
        results.read_result(path)
    with pytest.raises(results.ResultsError):
        results.write_result(record, tmp_path / "other.json")
    assert not (tmp_path / "other.json").exists()


def test_results_from_before_the_examples_seen_count_and_the_recoveries_still_read(tmp_path):
    record = _record()
    assert record["training"]["recoveries"] == []  # written now: a run that needed no rollback
    for field in ("loss_examples_seen", "recoveries", "peak_learning_rate"):
        record["training"].pop(field)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(record))
    assert not {"loss_examples_seen", "recoveries"} & set(results.read_result(path)["training"])


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = results.write_result(_record(), tmp_path / "results.json")
    before = path.read_text()
    broken = _record()
    broken["config"] = {"not serialisable": object()}
    with pytest.raises(TypeError):
        results.write_result(broken, path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_truncated_file_is_reported_not_read(tmp_path):
    path = results.write_result(_record(), tmp_path / "a" / "results.json")
    path.write_text(path.read_text()[:200])
    with pytest.raises(results.ResultsError, match="not valid JSON"):
        results.read_result(path)
    assert results.read_results(tmp_path) == []
