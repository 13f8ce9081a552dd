"""Kaggle: a dataset that carries this package's wheel, and kernels that attach it.

    python -m qlora_helpers.runners.kaggle dataset        # `make kaggle-dataset`: wheel + dataset-metadata.json
    python -m qlora_helpers.runners.kaggle metadata       # rewrite kaggle_metadata/*/kernel-metadata.json from OWNER
    python -m qlora_helpers.runners.kaggle install-cell   # write install.py into each notebook's first code cell

A Kaggle kernel cannot pip-install from a repository that is not published, but it can read a dataset
attached as an input (/kaggle/input/...): the notebooks' install cell (notebook/install.py) looks for
the wheel there. OWNER is the one place the Kaggle user name is set; `dataset` also rewrites the kernels'
metadata, so the ids and the dataset they list always agree with it. Run from a checkout of the repository.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import __version__, atomic
from ..notebook import install

OWNER = "qlora-notebooks"  # your Kaggle user name: change it here, then `make kaggle-dataset`
DATASET_SLUG = "qlora-helpers"
REPO_ROOT = Path(__file__).resolve().parents[2]
DATASET_DIR = REPO_ROOT / "dist" / "kaggle-dataset"
METADATA_DIR = REPO_ROOT / "kaggle_metadata"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
# What the wheel is built from: a copy of these, so the build leaves nothing in the checkout.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "qlora_helpers")


class KaggleError(RuntimeError):
    """The dataset or the metadata cannot be written: the message says what and how to fix it."""


def dataset_id(owner: str | None = None) -> str:
    return f"{owner or OWNER}/{DATASET_SLUG}"


def wheel_name(version: str = __version__) -> str:
    return f"qlora_helpers-{version}-py3-none-any.whl"


def dataset_metadata(owner: str | None = None) -> dict:
    """dataset-metadata.json as `kaggle datasets create` reads it: title 6-50 characters, id
    `<owner>/<slug>` (slug 3-50), exactly one licence from Kaggle's list (the package's Apache-2.0)."""
    return {
        "title": "qlora-helpers package",
        "id": dataset_id(owner),
        "subtitle": "The wheel that the qlora-notebooks series installs on Kaggle",
        "description": (f"`{wheel_name()}`: the helper package of the qlora-notebooks series (full fine-tuning, "
                        "LoRA and QLoRA on Banking77). Attach this dataset to a notebook of the series; its first "
                        "cell pip-installs the wheel from /kaggle/input, with bitsandbytes from PyPI."),
        "licenses": [{"name": "apache-2.0"}],
    }


def build_wheel(out_dir: Path) -> Path:
    """Build the package's wheel into `out_dir` from a copy of its sources; offline when setuptools is
    installed here (no build isolation). Raises KaggleError with pip's message if the build fails."""
    with tempfile.TemporaryDirectory(prefix="qlora-helpers-src-") as source:
        for name in WHEEL_SOURCES:
            if (REPO_ROOT / name).is_dir():
                shutil.copytree(REPO_ROOT / name, Path(source) / name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(REPO_ROOT / name, source)
        isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
        pip = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation,
                              "--wheel-dir", str(out_dir), source], capture_output=True, text=True)
    wheel = out_dir / wheel_name()
    if pip.returncode or not wheel.is_file():
        raise KaggleError(f"building the wheel failed:\n{pip.stderr[-2000:]}\nFix the error above "
                          "(`make setup` installs what the build needs), then rerun.")
    return wheel


def build_dataset(out: str | Path = DATASET_DIR, owner: str | None = None) -> Path:
    """Write `out` = {the wheel, dataset-metadata.json}, ready for `kaggle datasets create -p out`.

    The folder is completed under a temporary name beside `out` and renamed into place, so `out` is
    never half-written: the previous folder stays until the new one is complete (then, for the instant
    between two renames, `out` is absent).
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    staging.chmod(0o755)  # mkdtemp makes it private
    try:
        build_wheel(staging)
        (staging / "dataset-metadata.json").write_text(json.dumps(dataset_metadata(owner), indent=2) + "\n")
        if out.exists():
            os.replace(out, staging.with_name(staging.name + "-old"))
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(staging.with_name(staging.name + "-old"), ignore_errors=True)
    return out


def kernel_metadata(meta: dict, owner: str | None = None) -> dict:
    """One kernel-metadata.json with the owner-dependent fields derived from `owner`: the kernel's id,
    the kernels it reads (04 reads 01-03) and the package dataset under dataset_sources."""
    owner = owner or OWNER
    kernel_slug = meta["id"].split("/", 1)[1]
    return {**meta, "id": f"{owner}/{kernel_slug}", "dataset_sources": [dataset_id(owner)],
            "kernel_sources": [f"{owner}/{ref.split('/', 1)[1]}" for ref in meta["kernel_sources"]]}


def write_kernel_metadata(folder: str | Path = METADATA_DIR, owner: str | None = None) -> list[Path]:
    """Rewrite every `<folder>/*/kernel-metadata.json` for `owner`; returns the files that changed."""
    changed = []
    for path in sorted(Path(folder).glob("*/kernel-metadata.json")):
        text = json.dumps(kernel_metadata(json.loads(path.read_text()), owner), indent=2) + "\n"
        if text != path.read_text():
            atomic.write_text(path, text)
            changed.append(path)
    return changed


def install_cell_source() -> str:
    """The notebooks' install cell: install.py's code below its docstring, then the call."""
    lines = Path(install.__file__).read_text().splitlines()
    docstring_end = ast.parse("\n".join(lines)).body[0].end_lineno
    code = "\n".join(lines[docstring_end:]).strip("\n")
    return f"{code}\n\n\nprint(install_qlora_helpers())"


def write_install_cells(folder: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """Put install_cell_source() into each notebook's first code cell; returns the notebooks that changed."""
    import nbformat

    changed = []
    for path in sorted(Path(folder).glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        cell = next(c for c in notebook.cells if c.cell_type == "code")
        if cell.source != install_cell_source():
            cell.source = install_cell_source()
            atomic.write_text(path, nbformat.writes(notebook) + "\n")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlora_helpers.runners.kaggle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    dataset = commands.add_parser("dataset", help="build the wheel and the dataset folder; sync the kernels")
    dataset.add_argument("--out", default=str(DATASET_DIR), help=f"dataset folder (default: {DATASET_DIR})")
    commands.add_parser("metadata", help=f"rewrite the kernels' metadata for OWNER={OWNER}")
    commands.add_parser("install-cell", help="write install.py into each notebook's first code cell")
    args = parser.parse_args(argv)
    if not (REPO_ROOT / "pyproject.toml").is_file():
        print(f"error: {REPO_ROOT} is not a checkout of the repository: run this from one", file=sys.stderr)
        return 1
    try:
        if args.command == "install-cell":
            for path in write_install_cells():
                print(f"updated {path.relative_to(REPO_ROOT)}")
            return 0
        for path in write_kernel_metadata():
            print(f"updated {path.relative_to(REPO_ROOT)}")
        if args.command == "dataset":
            out = build_dataset(args.out)
            print(f"wrote {out}: {wheel_name()} and dataset-metadata.json (id {dataset_id()})\n"
                  f"first time: kaggle datasets create -p {out}\n"
                  f"afterwards: kaggle datasets version -p {out} -m 'qlora-helpers {__version__}'")
    except KaggleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
