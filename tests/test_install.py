"""The notebooks' install cell (qlora_helpers/notebook/install.py), run for each branch in a simulated Kaggle or
Colab runtime: its environment variable, an input folder holding a wheel built here, and pip installing
into a temporary folder (offline) instead of this environment."""
from __future__ import annotations

import subprocess
import zipfile
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

import qlora_helpers
from qlora_helpers.notebook import install
from qlora_helpers.runners import kaggle

ROOT = Path(__file__).resolve().parents[1]
NOT_INSTALLED = "9.9.9"  # a version of qlora-helpers that no environment has, so the cell must install it
KAGGLE = {"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}
COLAB = {"COLAB_RELEASE_TAG": "release-colab-20260601-060000-RC00"}


def dummy_wheel(folder: Path, version: str = NOT_INSTALLED) -> Path:
    """A minimal valid pure-Python wheel of the distribution `qlora-helpers` at `version`."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"qlora_helpers-{version}.dist-info"
    files = {"qlora_helpers/__init__.py": f'__version__ = "{version}"\n',
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: qlora-helpers\nVersion: {version}\nProvides-Extra: qlora\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    path = folder / f"qlora_helpers-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


@pytest.fixture
def pip(monkeypatch, tmp_path):
    """The cell's pip command, run for real but offline and into a temporary --target."""
    real_run, calls, target = subprocess.run, [], tmp_path / "site-packages"

    def run(command, **kwargs):
        calls.append(command)
        return real_run([*command, "--no-deps", "--no-index", "--target", str(target)], **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    return SimpleNamespace(calls=calls, target=target,
                           versions=lambda: [d.version for d in metadata.distributions(name="qlora-helpers",
                                                                                      path=[str(target)])])


def requirement(command: list[str]) -> str:
    assert command[1:4] == ["-m", "pip", "install"]
    return command[-1]


# One source of truth -----------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_each_notebook_install_cell_is_install_py(path):
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert cells[0].source == kaggle.install_cell_source(), (
        f"{path.name}: the install cell differs from qlora_helpers/notebook/install.py: "
        "run `python -m qlora_helpers.runners.kaggle install-cell`")
    shown_collapsed = {key: cells[0].metadata.get(key) for key in kaggle.INSTALL_CELL_METADATA}
    assert shown_collapsed == kaggle.INSTALL_CELL_METADATA, f"{path.name}: the install cell is not collapsed"


def test_the_cell_expects_this_package_version():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+; the package supports 3.10")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert install.VERSION == qlora_helpers.__version__ == pyproject["project"]["version"]
    assert kaggle.wheel_name() == f"qlora_helpers-{install.VERSION}-py3-none-any.whl"


def test_install_py_imports_nothing_from_the_package():
    code = kaggle.install_cell_source()
    assert "qlora_helpers." not in code and "from ." not in code and "import qlora_helpers" not in code


# The branches, in the cell's order ---------------------------------------------------------------
def test_the_cell_does_nothing_where_the_package_is_installed(pip, monkeypatch):
    assert install.VERSION in [d.version for d in metadata.distributions(name="qlora-helpers")], \
        "this test needs qlora-helpers installed (`make setup`)"
    for key, value in KAGGLE.items():
        monkeypatch.setenv(key, value)
    namespace: dict = {}
    exec(kaggle.install_cell_source(), namespace)  # the notebooks' cell itself, on "Kaggle"
    assert namespace["install_qlora_helpers"]() == f"qlora-helpers {install.VERSION} is installed"
    assert pip.calls == []


def test_off_kaggle_and_colab_it_does_nothing(pip):
    assert install.install_qlora_helpers(NOT_INSTALLED, environ={}) == \
        "not on Kaggle or Colab: `make setup` installs qlora-helpers"
    assert pip.calls == []


@pytest.mark.parametrize("layout", ["qlora-helpers", "datasets/someone/qlora-helpers"])
def test_on_kaggle_it_installs_the_wheel_of_the_attached_dataset(pip, tmp_path, layout):
    wheel = dummy_wheel(tmp_path / "input" / layout)
    dummy_wheel(tmp_path / "input" / "older", version="0.0.1")  # another version is not taken
    dirs = (f"{tmp_path}/input/*", f"{tmp_path}/input/*/*/*", f"{tmp_path}/content")
    message = install.install_qlora_helpers(NOT_INSTALLED, environ=KAGGLE, wheel_dirs=dirs)
    assert message == f"installed qlora-helpers {NOT_INSTALLED} from file://{wheel}"
    assert requirement(pip.calls[0]) == f"qlora-helpers[qlora] @ file://{wheel}"  # [qlora]: bitsandbytes
    assert pip.versions() == [NOT_INSTALLED]


def test_on_colab_it_installs_an_uploaded_wheel(pip, tmp_path):
    wheel = dummy_wheel(tmp_path / "content")
    install.install_qlora_helpers(NOT_INSTALLED, environ=COLAB, wheel_dirs=(f"{tmp_path}/content",))
    assert requirement(pip.calls[0]) == f"qlora-helpers[qlora] @ file://{wheel}"
    assert pip.versions() == [NOT_INSTALLED]


def test_without_a_wheel_it_installs_from_the_source_variable(pip, tmp_path):
    wheel = dummy_wheel(tmp_path / "elsewhere")
    environ = {**KAGGLE, "QLORA_HELPERS_SOURCE": f"file://{wheel}"}
    install.install_qlora_helpers(NOT_INSTALLED, environ=environ, wheel_dirs=(f"{tmp_path}/input/*",))
    assert requirement(pip.calls[0]) == f"qlora-helpers[qlora] @ file://{wheel}"
    assert pip.versions() == [NOT_INSTALLED]


def test_the_default_source_is_the_project_repository(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: calls.append(command) or SimpleNamespace(returncode=0))
    install.install_qlora_helpers(NOT_INSTALLED, environ=COLAB, wheel_dirs=(f"{tmp_path}/content",))
    assert requirement(calls[0]) == f"qlora-helpers[qlora] @ {install.SOURCE}"
    assert install.SOURCE == "git+https://github.com/qlora-notebooks/qlora-notebooks"


def test_when_nothing_installs_it_stops_and_says_how_to_fix_it(pip, tmp_path):
    missing = f"file://{tmp_path}/nowhere/qlora_helpers-{NOT_INSTALLED}-py3-none-any.whl"
    environ = {**KAGGLE, "QLORA_HELPERS_SOURCE": missing}
    with pytest.raises(RuntimeError) as error:
        install.install_qlora_helpers(NOT_INSTALLED, environ=environ, wheel_dirs=(f"{tmp_path}/input/*",))
    text = str(error.value)
    assert f"pip could not install qlora-helpers {NOT_INSTALLED} from {missing}" in text
    assert "ERROR" in text  # pip's own reason, which a notebook would not show otherwise
    for fix in ("`kaggle push` step", "as an input", "Internet on", "/content", "QLORA_HELPERS_SOURCE"):
        assert fix in text
    assert pip.versions() == []


def test_the_cell_pins_the_libraries_at_the_tested_versions(pip, tmp_path):
    """The cell's PINS are constraints.txt's versions, and pip gets them as constraints."""
    locked = {line.split("==")[0].lower().replace("_", "-"): line.strip()
              for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line and not line.startswith("#")}
    for pin in install.PINS:
        name = pin.split("==")[0].lower().replace("_", "-")
        assert locked.get(name, "").lower().replace("_", "-") == pin.lower().replace("_", "-"), \
            f"install.py pins {pin}, constraints.txt has {locked.get(name)}: copy the lock's version"
    assert {"transformers", "peft", "bitsandbytes", "datasets", "accelerate"} <= {
        pin.split("==")[0] for pin in install.PINS}
    dummy_wheel(tmp_path / "content")
    install.install_qlora_helpers(NOT_INSTALLED, environ=COLAB, wheel_dirs=(f"{tmp_path}/content",))
    command = pip.calls[0]
    assert Path(command[command.index("-c") + 1]).read_text().split() == list(install.PINS)
