"""Files and folders written atomically get the permissions of any file the user creates (the umask's),
not the owner-only ones of a temporary file: a run folder shared with a team stays readable."""
import os
import stat

import nbformat
import pytest
import torch

from qlora_helpers import data, export, modeling, offline_models
from qlora_helpers.notebook import results
from qlora_helpers.runners import runner
from test_results import _record

UMASK = 0o027  # group may read, others nothing: neither tempfile's 0o600/0o700 nor the common 0o022


@pytest.fixture
def umask():
    previous = os.umask(UMASK)
    yield
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _expect_umask_modes(root) -> None:
    """The folder and everything in it as if created with open()/mkdir() under UMASK."""
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for path in paths:
        assert _mode(path) == (0o777 if path.is_dir() else 0o666) & ~UMASK, path


def test_results_file(tmp_path, umask):
    _expect_umask_modes(results.write_result(_record(), tmp_path / "run" / "results.json"))


def test_saved_and_merged_models(tiny_qwen2, tmp_path, umask):
    names = list(data.BANKING77_INTENTS)
    saved = export.save_trained(modeling.load_model(tiny_qwen2, "lora"), tmp_path / "adapter", names)
    _expect_umask_modes(saved)
    _expect_umask_modes(export.merge_to_16bit(saved, tmp_path / "merged", torch.float32))


def test_offline_model_folder(tmp_path, umask, banking77_dir):
    _expect_umask_modes(offline_models.build_tiny_qwen2(tmp_path / "tiny"))


def test_notebook_html(tmp_path, umask):
    notebook = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("hello")]), notebook)
    _expect_umask_modes(runner.write_html(notebook, tmp_path / "nb.html"))
