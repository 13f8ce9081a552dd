"""A Kaggle Model attached to a notebook (`model_sources`) stands in for its hub id: on Kaggle
($KAGGLE_KERNEL_RUN_TYPE set) the weights load from the mounted folder, with no hub and no token.

Kaggle's mount, simulated: a temporary input folder holding real SmolLM2-135M weights at the place
Kaggle mounts a notebook's model (Gemma 3 270M, Qwen2.5-1.5B, Qwen2.5-7B), in each layout Kaggle has used."""
from __future__ import annotations

import numpy as np
import pytest

from qlora_helpers import modeling, offline_models
from qlora_helpers.notebook import results
from qlora_helpers.evaluation import compute_metrics
from qlora_helpers.training import TrainStats

HUB_ID = "google/gemma-3-270m"
HANDLE = modeling.KAGGLE_MODELS[HUB_ID]  # google/gemma-3/transformers/gemma-3-270m/2


def layout_path(handle: str, layout: str) -> str:
    """Where Kaggle mounts `handle` under its input folder, in one of the layouts it has used."""
    owner, model, framework, rest = handle.split("/", 3)
    return {"models/owner": f"models/{handle}", "model": f"{model}/{framework}/{rest}",
            "model, Framework": f"{model}/{framework.capitalize()}/{rest}"}[layout]


LAYOUTS = ("models/owner", "model", "model, Framework")


@pytest.fixture
def kaggle(monkeypatch, tmp_path):
    """A Kaggle runtime whose input folder is empty until a test mounts something in it."""
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setattr(modeling, "KAGGLE_INPUT", tmp_path / "input")
    return tmp_path / "input"


def mount(input_root, layout: str, handle: str = HANDLE):
    """Put a real model folder (SmolLM2-135M's, linked) where Kaggle would mount `handle`."""
    folder = input_root / layout_path(handle, layout)
    folder.parent.mkdir(parents=True)
    folder.symlink_to(offline_models.resolve_model_id("offline:smollm2-135m"), target_is_directory=True)
    return folder


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("hub_id", modeling.KAGGLE_MODELS)
def test_on_kaggle_a_hub_id_resolves_to_its_mounted_model(kaggle, layout, hub_id):
    """03 used to download Qwen2.5-7B (~15 GB) from the hub on every run: its Kaggle Model is read instead."""
    folder = mount(kaggle, layout, modeling.KAGGLE_MODELS[hub_id])
    assert modeling.kaggle_model_folder(hub_id) == folder
    assert modeling.model_source(hub_id) == str(folder)


def test_the_qwen_models_have_their_kaggle_handles():
    assert modeling.KAGGLE_MODELS["Qwen/Qwen2.5-1.5B"] == "qwen-lm/qwen2.5/transformers/1.5b/1"
    assert modeling.KAGGLE_MODELS["Qwen/Qwen2.5-7B"] == "qwen-lm/qwen2.5/transformers/7b/1"


def test_without_a_mount_or_off_kaggle_the_hub_id_is_kept(kaggle, monkeypatch):
    assert modeling.model_source(HUB_ID) == HUB_ID  # on Kaggle, nothing attached
    (kaggle / layout_path(HANDLE, "model")).mkdir(parents=True)  # a folder without a model in it
    assert modeling.model_source(HUB_ID) == HUB_ID
    mount(kaggle, "models/owner")
    assert modeling.model_source("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # no Kaggle Model for it
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")  # the same folder, not on Kaggle
    assert modeling.model_source(HUB_ID) == HUB_ID


def test_loading_on_kaggle_reads_the_mount_and_the_results_say_so(kaggle, monkeypatch):
    """Offline, the hub id alone cannot load (conftest): it loads only through the mount."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    folder = mount(kaggle, "models/owner")
    loaded = modeling.load_base(HUB_ID, "full", num_labels=5)
    assert loaded.model_id == HUB_ID and loaded.kaggle_folder == str(folder)
    assert f"{HUB_ID} [full] loaded from the Kaggle Model at {folder} in float32" in loaded.summary()
    names = [f"intent_{i}" for i in range(5)]
    stats = TrainStats(2.0, 10, 320, 4000, 5000, 2**30, "process_peak_rss", 1.5, [2.0, 1.5], [160, 320])
    record = results.build_result(run_name="01", loaded=loaded, stats=stats,
                                  evaluation=compute_metrics(np.arange(5), np.arange(5), names), label_names=names,
                                  data={}, demo=False, config={})
    assert record["model_id"] == HUB_ID and record["kaggle_model_folder"] == str(folder)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")  # off Kaggle the same id goes to the hub, offline here
    with pytest.raises(modeling.ModelSetupError, match=f"cannot find model '{HUB_ID}'"):
        modeling.load_base(HUB_ID, "full", num_labels=5)
