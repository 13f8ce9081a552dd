"""kaggle_metadata/<notebook>/kernel-metadata.json: what `kaggle kernels push -p <folder>` reads."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qlora_helpers.profiles import NOTEBOOKS, TRAINING_NOTEBOOKS

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "kaggle_metadata"
REQUIRED = {"id": str, "title": str, "code_file": str, "language": str, "kernel_type": str, "is_private": bool,
            "enable_gpu": bool, "enable_internet": bool, "dataset_sources": list, "competition_sources": list,
            "kernel_sources": list}
FILES = sorted(FOLDER.glob("*/kernel-metadata.json"))


def slugify(title: str) -> str:
    """Kaggle derives a kernel's URL slug from its title like this; a mismatch with `id` warns."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def test_one_metadata_folder_per_notebook():
    assert sorted(path.parent.name for path in FILES) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.parent.name)
def test_metadata_is_valid_and_points_at_its_notebook(path):
    meta = json.loads(path.read_text())
    for key, kind in REQUIRED.items():
        assert isinstance(meta.get(key), kind), f"{path}: {key} missing or not {kind.__name__}"
    stem = path.parent.name
    code_file = (path.parent / meta["code_file"]).resolve()
    assert code_file == ROOT / "notebooks" / f"{stem}.ipynb" and code_file.is_file()
    assert (meta["language"], meta["kernel_type"]) == ("python", "notebook")
    assert meta["enable_internet"] is True  # pip install and the hub
    owner, slug = meta["id"].split("/")
    assert owner and slug == slugify(meta["title"]) and 5 <= len(meta["title"]) <= 50
    assert meta["dataset_sources"] == [] and meta["competition_sources"] == []
    if stem in TRAINING_NOTEBOOKS:
        assert meta["enable_gpu"] is True and meta["machine_shape"] == "NvidiaTeslaT4"
        assert meta["kernel_sources"] == []


def test_comparison_reads_the_training_kernels_outputs():
    metas = {p.parent.name: json.loads(p.read_text()) for p in FILES}
    comparison = metas["04_comparison"]
    assert comparison["enable_gpu"] is False
    assert comparison["kernel_sources"] == [metas[stem]["id"] for stem in TRAINING_NOTEBOOKS]
