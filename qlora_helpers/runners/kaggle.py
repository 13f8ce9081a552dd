"""Kaggle: push the series to your Kaggle account, or build its pieces. Run from a checkout.

    python -m qlora_helpers.runners.kaggle push [--owner USER]   # the wheel dataset and kernels 01-03; prints URLs
    python -m qlora_helpers.runners.kaggle push --notebooks 04   # once 01-03 are complete: 04 reads their outputs
    python -m qlora_helpers.runners.kaggle dataset               # dist/kaggle-dataset only (push builds it too)
    python -m qlora_helpers.runners.kaggle install-cell          # install.py into each notebook's first code cell

A Kaggle kernel cannot pip-install from a repository that is not published, but it can read a dataset
attached as an input (/kaggle/input/...): the notebooks' install cell (notebook/install.py) looks for
the wheel there. The Kaggle user (OWNER) is `--owner`, else the one the kaggle CLI is set up for; the
committed kaggle_metadata/ are templates under a placeholder owner, written out for OWNER into
dist/kaggle-kernels/ at each push. Nothing here needs torch: the wheel is pure Python.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from .. import __version__, atomic
from ..notebook import install
from . import profiles

TEMPLATE_OWNER = "your-kaggle-username"  # the committed metadata's owner; a push writes the real one
DATASET_SLUG = "qlora-helpers"
REPO_ROOT = Path(__file__).resolve().parents[2]
DIST_DIR = REPO_ROOT / "dist"
METADATA_DIR = REPO_ROOT / "kaggle_metadata"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
# What the wheel is built from: a copy of these, so the build leaves nothing in the checkout.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "qlora_helpers")
# What a refused push usually means, added to the CLI's own message.
ACCOUNT_HINT = ("A 401 means no valid API token: kaggle.com > Settings > API > Create New Token saves kaggle.json, "
                "put it in ~/.kaggle/. A kernel asking for a GPU or Internet needs a phone-verified account "
                "(kaggle.com > Settings > Phone verification).")


class KaggleError(RuntimeError):
    """The dataset or the metadata cannot be written: the message says what and how to fix it."""


def configured_owner(environ=os.environ) -> str:
    """The Kaggle user the kaggle CLI acts as: $KAGGLE_USERNAME, else `username` in its kaggle.json
    ($KAGGLE_CONFIG_DIR, ~/.kaggle or ~/.config/kaggle), so a push needs no user name typed twice."""
    if environ.get("KAGGLE_USERNAME"):
        return environ["KAGGLE_USERNAME"]
    home = Path(environ.get("HOME", "~")).expanduser()
    folders = [Path(environ["KAGGLE_CONFIG_DIR"])] if environ.get("KAGGLE_CONFIG_DIR") else []
    folders += [home / ".kaggle", Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]
    for path in (folder / "kaggle.json" for folder in folders):
        if path.is_file():
            try:
                username = json.loads(path.read_text()).get("username")
            except (json.JSONDecodeError, AttributeError) as error:
                raise KaggleError(f"{path} is not the kaggle CLI's token file ({error}): download a new one at "
                                  "kaggle.com > Settings > API > Create New Token.") from error
            if username:
                return username
    raise KaggleError("no Kaggle user: pass --owner USER, or set up the kaggle CLI (kaggle.com > Settings > API > "
                      "Create New Token saves kaggle.json; put it in ~/.kaggle/), or set KAGGLE_USERNAME.")


def dataset_id(owner: str) -> str:
    return f"{owner}/{DATASET_SLUG}"


def wheel_name(version: str = __version__) -> str:
    return f"qlora_helpers-{version}-py3-none-any.whl"


def dataset_metadata(owner: str) -> dict:
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


def _setuptools_builds_this() -> bool:
    """Whether the setuptools installed here can build the wheel offline: pyproject.toml's build-system
    needs 77 or newer (its SPDX `license` string); an older one (Python 3.10/3.11's own 65) goes through
    pip's build isolation, which fetches a new one from PyPI."""
    try:
        return int(metadata.version("setuptools").split(".")[0]) >= 77
    except (metadata.PackageNotFoundError, ValueError):
        return False


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
        isolation = ["--no-build-isolation"] if _setuptools_builds_this() else []
        pip = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation,
                              "--wheel-dir", str(out_dir), source], capture_output=True, text=True)
    wheel = out_dir / wheel_name()
    if pip.returncode or not wheel.is_file():
        raise KaggleError(f"building the wheel failed:\n{pip.stderr[-2000:]}\nFix the error above, then rerun "
                          "(the build needs pip and setuptools, or PyPI to fetch them; not torch).")
    return wheel


def build_dataset(out: str | Path, owner: str) -> Path:
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


def kernel_metadata(meta: dict, owner: str) -> dict:
    """One kernel-metadata.json with the owner-dependent fields derived from `owner`: the kernel's id,
    the kernels it reads (04 reads 01-03) and the package dataset under dataset_sources."""
    kernel_slug = meta["id"].split("/", 1)[1]
    return {**meta, "id": f"{owner}/{kernel_slug}", "dataset_sources": [dataset_id(owner)],
            "kernel_sources": [f"{owner}/{ref.split('/', 1)[1]}" for ref in meta["kernel_sources"]]}


def stage_kernel(notebook: str, out: Path, owner: str) -> Path:
    """`out/<notebook>/`: the notebook and its kernel-metadata.json for `owner`, what `kaggle kernels
    push -p` reads; made afresh, so the checkout's templates never carry a user name."""
    folder = out / notebook
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    template = json.loads((METADATA_DIR / notebook / "kernel-metadata.json").read_text())
    notebook_file = NOTEBOOKS_DIR / f"{notebook}.ipynb"
    shutil.copy2(notebook_file, folder / notebook_file.name)
    meta = {**kernel_metadata(template, owner), "code_file": notebook_file.name}
    (folder / "kernel-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def kernel_url(kernel_id: str) -> str:
    return f"https://www.kaggle.com/code/{kernel_id}"


def dataset_url(dataset: str) -> str:
    return f"https://www.kaggle.com/datasets/{dataset}"


def kaggle_cli() -> str:
    cli = shutil.which("kaggle")
    if cli is None:
        raise KaggleError("the kaggle CLI is not on PATH: `python -m pip install kaggle` (any Python will do, "
                          "it need not be this venv's), then rerun.")
    return cli


def call_cli(*args: str, check: bool = True) -> str:
    """The kaggle CLI's output for `args`. With `check`, a KaggleError if it failed: a non-zero exit, or
    a line saying "error" (some versions report a refused push that way, exiting 0)."""
    done = subprocess.run([kaggle_cli(), *args], capture_output=True, text=True)
    output = (done.stdout + done.stderr).strip()
    if check and (done.returncode or "error" in output.lower()):
        raise KaggleError(f"`kaggle {' '.join(args)}` failed (exit {done.returncode}): {output[-1500:]}\n{ACCOUNT_HINT}")
    return output


def dataset_exists(dataset: str) -> bool:
    output = call_cli("datasets", "status", dataset, check=False)
    return not any(word in output.lower() for word in ("404", "not found", "error"))


def wait_until_ready(dataset: str, timeout_s: float = 900, poll_s: float = 15) -> None:
    """Return once Kaggle has processed the new dataset version: a kernel pushed before then would
    attach the previous version, or, the first time, no dataset at all."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = call_cli("datasets", "status", dataset, check=False).strip().lower()
        if status.endswith("ready"):
            return
        if status.endswith("error") or time.monotonic() > deadline:
            raise KaggleError(f"dataset {dataset} is not ready (status: {status!r}): see {dataset_url(dataset)}, "
                              "then rerun the push once it is.")
        time.sleep(poll_s)


def push(owner: str, notebooks: list[str], dist: Path = DIST_DIR, echo=print) -> list[str]:
    """Build and push the wheel dataset (create it the first time, a new version after), then stage
    and push each of `notebooks`' kernels for `owner`; returns the kernels' URLs."""
    kaggle_cli()  # before the build: a missing CLI is the first thing to fix
    dataset = dataset_id(owner)
    out = build_dataset(dist / "kaggle-dataset", owner)
    if dataset_exists(dataset):
        call_cli("datasets", "version", "-p", str(out), "-m", f"qlora-helpers {__version__}")
    else:
        call_cli("datasets", "create", "-p", str(out))
    wait_until_ready(dataset)
    echo(f"dataset {dataset} ({wheel_name()}): {dataset_url(dataset)}")
    urls = []
    for notebook in notebooks:
        folder = stage_kernel(notebook, dist / "kaggle-kernels", owner)
        call_cli("kernels", "push", "-p", str(folder))
        kernel_id = json.loads((folder / "kernel-metadata.json").read_text())["id"]
        urls.append(kernel_url(kernel_id))
        echo(f"kernel {notebook}: {urls[-1]}  (follow it: kaggle kernels status {kernel_id})")
    return urls


# The install cell shows collapsed, its output only: the title of Colab's form, Jupyter's hidden source, Kaggle's
# hidden input, and the tag runner.write_html removes the input by. A reader sees what it did, not how.
INSTALL_CELL_TITLE = ('#@title Install qlora_helpers on Kaggle or Colab (its code: qlora_helpers/notebook/install.py) '
                      '{ display-mode: "form" }')
INSTALL_CELL_METADATA = {"cellView": "form", "jupyter": {"source_hidden": True}, "_kg_hide-input": True,
                         "tags": ["hide-input"]}


def install_cell_source() -> str:
    """The notebooks' install cell: a title, install.py's code below its docstring, then the call."""
    lines = Path(install.__file__).read_text().splitlines()
    docstring_end = ast.parse("\n".join(lines)).body[0].end_lineno
    code = "\n".join(lines[docstring_end:]).strip("\n")
    return f"{INSTALL_CELL_TITLE}\n{code}\n\n\nprint(install_qlora_helpers())"


def write_install_cells(folder: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """Put install_cell_source() and INSTALL_CELL_METADATA into each notebook's first code cell; returns the
    notebooks that changed."""
    import nbformat

    changed = []
    for path in sorted(Path(folder).glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        cell = next(c for c in notebook.cells if c.cell_type == "code")
        metadata = {**cell.metadata, **INSTALL_CELL_METADATA}
        if cell.source != install_cell_source() or cell.metadata != metadata:
            cell.source, cell.metadata = install_cell_source(), nbformat.from_dict(metadata)
            atomic.write_text(path, nbformat.writes(notebook) + "\n")
            changed.append(path)
    return changed


def command_line() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qlora_helpers.runners.kaggle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    owner_help = "your Kaggle user name (default: the kaggle CLI's, from kaggle.json or $KAGGLE_USERNAME)"
    pushing = commands.add_parser("push", help="build and push the wheel dataset, then the kernels")
    pushing.add_argument("--owner", help=owner_help)
    pushing.add_argument("--notebooks", nargs="+", default=list(profiles.TRAINING_NOTEBOOKS), metavar="NOTEBOOK",
                         help="which kernels, by name or number (default: 01-03; 04 once they are complete)")
    pushing.add_argument("--dist", type=Path, default=DIST_DIR, help=f"where to build (default: {DIST_DIR})")
    dataset = commands.add_parser("dataset", help="build the wheel and the dataset folder, push nothing")
    dataset.add_argument("--owner", help=owner_help)
    dataset.add_argument("--out", default=str(DIST_DIR / "kaggle-dataset"), help="dataset folder (default: %(default)s)")
    commands.add_parser("install-cell", help="write install.py into each notebook's first code cell")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = command_line().parse_args(argv)
    if not (REPO_ROOT / "pyproject.toml").is_file():
        print(f"error: {REPO_ROOT} is not a checkout of the repository: run this from one", file=sys.stderr)
        return 1
    try:
        if args.command == "install-cell":
            for path in write_install_cells():
                print(f"updated {path.relative_to(REPO_ROOT)}")
            return 0
        owner = args.owner or configured_owner()
        if args.command == "dataset":
            out = build_dataset(args.out, owner)
            print(f"wrote {out}: {wheel_name()} and dataset-metadata.json (id {dataset_id(owner)})")
            return 0
        notebooks = profiles.resolve_notebooks(args.notebooks)
        push(owner, notebooks, args.dist.resolve())
        if profiles.COMPARISON_NOTEBOOK not in notebooks:
            print(f"once they are complete, push {profiles.COMPARISON_NOTEBOOK}, which reads their outputs: "
                  f"python -m qlora_helpers.runners.kaggle push --notebooks 04 --owner {owner}")
    except (KaggleError, profiles.UnknownNameError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
