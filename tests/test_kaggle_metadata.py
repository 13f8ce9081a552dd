"""kaggle_metadata/<notebook>/kernel-metadata.json: what `kaggle kernels push -p <folder>` reads."""
from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from qlora_helpers import __version__, modeling
from qlora_helpers.runners import kaggle
from qlora_helpers.runners.profiles import KAGGLE_T4, NOTEBOOKS, TRAINING_NOTEBOOKS

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
    assert meta["competition_sources"] == []
    if stem in TRAINING_NOTEBOOKS:
        assert meta["enable_gpu"] is True and meta["machine_shape"] == "NvidiaTeslaT4"
        assert meta["kernel_sources"] == []


def test_comparison_reads_the_training_kernels_outputs():
    metas = {p.parent.name: json.loads(p.read_text()) for p in FILES}
    comparison = metas["04_comparison"]
    assert comparison["enable_gpu"] is False
    assert comparison["kernel_sources"] == [metas[stem]["id"] for stem in TRAINING_NOTEBOOKS]


# The package dataset and the owner ---------------------------------------------------------------
def test_every_kernel_attaches_the_package_dataset_of_the_one_owner():
    for path in FILES:
        meta = json.loads(path.read_text())
        assert meta["dataset_sources"] == [kaggle.dataset_id()] == [f"{kaggle.OWNER}/{kaggle.DATASET_SLUG}"], path
        assert all(ref.split("/")[0] == kaggle.OWNER for ref in [meta["id"], *meta["kernel_sources"]]), path
    # the committed files are exactly what `python -m qlora_helpers.runners.kaggle metadata` writes
    assert kaggle.write_kernel_metadata(FOLDER) == []


def test_the_baseline_attaches_gemma_3_270m_as_a_kaggle_model():
    """Kaggle's handle format: owner/model/framework/variation/version (docs/kernels_metadata.md of
    Kaggle/kaggle-api); mounted under /kaggle/input, so no hub token is needed there. The handle is
    the one modeling.kaggle_model_folder looks for when 01 loads its default model."""
    metas = {p.parent.name: json.loads(p.read_text()) for p in FILES}
    default_model = KAGGLE_T4.parameters("01_full_precision_baseline")["model_id"]
    assert metas["01_full_precision_baseline"]["model_sources"] == [modeling.KAGGLE_MODELS[default_model]]
    assert modeling.KAGGLE_MODELS[default_model] == "google/gemma-3/transformers/gemma-3-270m/2"
    assert all(metas[stem]["model_sources"] == [] for stem in NOTEBOOKS[1:])


def test_changing_the_owner_rewrites_every_kernel(tmp_path):
    folder = tmp_path / "kaggle_metadata"
    shutil.copytree(FOLDER, folder)
    assert len(kaggle.write_kernel_metadata(folder, owner="someone")) == len(FILES)
    metas = {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/kernel-metadata.json"))}
    assert {m["id"].split("/")[0] for m in metas.values()} == {"someone"}
    assert all(m["dataset_sources"] == ["someone/qlora-helpers"] for m in metas.values())
    assert metas["04_comparison"]["kernel_sources"] == [metas[stem]["id"] for stem in TRAINING_NOTEBOOKS]
    original = json.loads((FOLDER / "01_full_precision_baseline/kernel-metadata.json").read_text())
    rewritten = metas["01_full_precision_baseline"]
    assert {k: v for k, v in rewritten.items() if k not in ("id", "dataset_sources")} == \
        {k: v for k, v in original.items() if k not in ("id", "dataset_sources")}
    assert not [p for p in folder.rglob(".*")]  # no temporary file left


def test_the_dataset_builder_writes_the_wheel_and_kaggle_metadata(tmp_path):
    out = tmp_path / "dist" / "kaggle-dataset"
    out.mkdir(parents=True)
    (out / "stale.whl").write_text("from an earlier build")
    checkout = sorted(ROOT.iterdir())
    assert kaggle.build_dataset(out) == out
    assert sorted(p.name for p in out.iterdir()) == sorted(["dataset-metadata.json", kaggle.wheel_name()])
    assert sorted(p.name for p in out.parent.iterdir()) == ["kaggle-dataset"]  # no partial folder left
    meta = json.loads((out / "dataset-metadata.json").read_text())
    # dataset-metadata.json as `kaggle datasets create` reads it (docs/datasets_metadata.md of Kaggle/kaggle-api)
    owner, slug = meta["id"].split("/")
    assert (owner, slug) == (kaggle.OWNER, kaggle.DATASET_SLUG) and 3 <= len(slug) <= 50
    assert 6 <= len(meta["title"]) <= 50 and 20 <= len(meta["subtitle"]) <= 80
    assert meta["licenses"] == [{"name": "apache-2.0"}]  # one licence, from Kaggle's list; the package's own
    with zipfile.ZipFile(out / kaggle.wheel_name()) as wheel:
        names = set(wheel.namelist())
        info = wheel.read(f"qlora_helpers-{__version__}.dist-info/METADATA").decode()
    assert {"qlora_helpers/__init__.py", "qlora_helpers/notebook/install.py", "qlora_helpers/runners/kaggle.py",
            "qlora_helpers/modeling.py"} <= names
    assert f"Version: {__version__}" in info and 'Requires-Dist: bitsandbytes==0.50.2; extra == "qlora"' in info
    assert sorted(ROOT.iterdir()) == checkout  # the build ran on a copy: no build/ or *.egg-info here


def test_a_failed_build_keeps_the_previous_dataset(tmp_path, monkeypatch):
    out = tmp_path / "kaggle-dataset"
    out.mkdir()
    (out / "dataset-metadata.json").write_text("previous")

    def broken(folder):
        (folder / "half.whl").write_text("half")
        raise kaggle.KaggleError("building the wheel failed")

    monkeypatch.setattr(kaggle, "build_wheel", broken)
    with pytest.raises(kaggle.KaggleError):
        kaggle.build_dataset(out)
    assert [p.name for p in tmp_path.iterdir()] == ["kaggle-dataset"]
    assert (out / "dataset-metadata.json").read_text() == "previous"


# The README's Kaggle section ---------------------------------------------------------------------
def kaggle_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### On Kaggle or Colab", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line.split("#")[0].strip() for block in blocks for line in block.splitlines() if line.split("#")[0].strip()]


def test_readme_kaggle_commands_name_what_the_repository_has():
    commands = kaggle_commands()
    metas = {p.parent.name: json.loads(p.read_text()) for p in FILES}
    dataset_dir = kaggle.DATASET_DIR.relative_to(ROOT)
    assert "make kaggle-dataset" in commands
    assert re.search(r"^kaggle-dataset:.*\n\t.*-m qlora_helpers\.runners\.kaggle dataset$", (ROOT / "Makefile").read_text(), re.M)
    assert f"kaggle datasets create -p {dataset_dir}" in commands
    pushed = [c.split("-p ")[1] for c in commands if c.startswith("kaggle kernels push")]
    assert pushed == [f"kaggle_metadata/{stem}" for stem in NOTEBOOKS]  # 04 last: it reads 01-03's outputs
    statuses = [(i, c.split()[-1]) for i, c in enumerate(commands) if c.startswith("kaggle kernels status")]
    assert statuses and {ref for _, ref in statuses} <= {m["id"] for m in metas.values()}
    pushes = [i for i, c in enumerate(commands) if c.startswith("kaggle kernels push")]
    assert commands.index("make kaggle-dataset") < commands.index(f"kaggle datasets create -p {dataset_dir}") < pushes[0]
    assert pushes[2] < statuses[0][0] < pushes[3]  # 04 is pushed once 01-03 have finished
