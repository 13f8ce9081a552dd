"""kaggle_metadata/<notebook>/kernel-metadata.json: what `kaggle kernels push -p <folder>` reads."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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
def test_the_committed_metadata_are_templates_of_one_placeholder_owner():
    """A push writes the real owner into copies (dist/kaggle-kernels): the checkout names no user."""
    for path in FILES:
        meta = json.loads(path.read_text())
        assert meta == kaggle.kernel_metadata(meta, kaggle.TEMPLATE_OWNER), path
        assert meta["id"].split("/")[0] == "your-kaggle-username", path


def test_each_training_kernel_attaches_its_model_as_a_kaggle_model():
    """Kaggle's handle format: owner/model/framework/variation/version (docs/kernels_metadata.md of
    Kaggle/kaggle-api); mounted under /kaggle/input, so no hub token and no 15 GB download for 03.
    The handle is the one modeling.kaggle_model_folder looks for when the notebook loads its default model."""
    metas = {p.parent.name: json.loads(p.read_text()) for p in FILES}
    for stem in TRAINING_NOTEBOOKS:
        default_model = KAGGLE_T4.parameters(stem)["model_id"]
        assert metas[stem]["model_sources"] == [modeling.KAGGLE_MODELS[default_model]], stem
    assert metas["01_full_precision_baseline"]["model_sources"] == ["google/gemma-3/transformers/gemma-3-270m/2"]
    assert metas["03_qlora_qwen2.5_7b"]["model_sources"] == ["qwen-lm/qwen2.5/transformers/7b/1"]
    assert metas["04_comparison"]["model_sources"] == []


def test_staging_writes_each_kernel_for_the_owner(tmp_path):
    metas = {}
    for stem in NOTEBOOKS:
        folder = kaggle.stage_kernel(stem, tmp_path, "someone")
        metas[stem] = json.loads((folder / "kernel-metadata.json").read_text())
        assert (folder / metas[stem]["code_file"]).read_bytes() == (ROOT / "notebooks" / f"{stem}.ipynb").read_bytes()
    assert {m["id"].split("/")[0] for m in metas.values()} == {"someone"}
    assert all(m["dataset_sources"] == ["someone/qlora-helpers"] for m in metas.values())
    assert metas["04_comparison"]["kernel_sources"] == [metas[stem]["id"] for stem in TRAINING_NOTEBOOKS]
    template = json.loads((FOLDER / "03_qlora_qwen2.5_7b/kernel-metadata.json").read_text())
    same = lambda meta: {k: v for k, v in meta.items() if k not in ("id", "dataset_sources", "code_file")}  # noqa: E731
    assert same(metas["03_qlora_qwen2.5_7b"]) == same(template)
    assert sorted(p.name for p in FOLDER.glob("*/*")) == sorted(["kernel-metadata.json"] * len(FILES))  # untouched


def test_the_owner_is_the_kaggle_clis_user(tmp_path):
    """It used to be edited in the source; now --owner, else what the kaggle CLI is set up for."""
    assert kaggle.configured_owner({"KAGGLE_USERNAME": "from-env", "HOME": str(tmp_path)}) == "from-env"
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle/kaggle.json").write_text('{"username": "from-file", "key": "k"}')
    assert kaggle.configured_owner({"HOME": str(tmp_path)}) == "from-file"
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf/kaggle.json").write_text('{"username": "from-config-dir", "key": "k"}')
    assert kaggle.configured_owner({"HOME": str(tmp_path), "KAGGLE_CONFIG_DIR": str(tmp_path / "conf")}) == "from-config-dir"
    with pytest.raises(kaggle.KaggleError, match="no Kaggle user: pass --owner USER, or set up the kaggle CLI"):
        kaggle.configured_owner({"HOME": str(tmp_path / "nobody")})


def test_the_dataset_builder_writes_the_wheel_and_kaggle_metadata(tmp_path):
    out = tmp_path / "dist" / "kaggle-dataset"
    out.mkdir(parents=True)
    (out / "stale.whl").write_text("from an earlier build")
    checkout = sorted(ROOT.iterdir())
    assert kaggle.build_dataset(out, "someone") == out
    assert sorted(p.name for p in out.iterdir()) == sorted(["dataset-metadata.json", kaggle.wheel_name()])
    assert sorted(p.name for p in out.parent.iterdir()) == ["kaggle-dataset"]  # no partial folder left
    meta = json.loads((out / "dataset-metadata.json").read_text())
    # dataset-metadata.json as `kaggle datasets create` reads it (docs/datasets_metadata.md of Kaggle/kaggle-api)
    owner, slug = meta["id"].split("/")
    assert (owner, slug) == ("someone", kaggle.DATASET_SLUG) and 3 <= len(slug) <= 50
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
        kaggle.build_dataset(out, "someone")
    assert [p.name for p in tmp_path.iterdir()] == ["kaggle-dataset"]
    assert (out / "dataset-metadata.json").read_text() == "previous"


# The push, with a fake kaggle CLI ----------------------------------------------------------------
FAKE_KAGGLE = """#!{python}
import json, os, sys
args = sys.argv[1:]
state = os.environ["FAKE_KAGGLE_STATE"]
entry = {{"args": args}}
if "-p" in args:
    folder = args[args.index("-p") + 1]
    entry["files"] = sorted(os.listdir(folder))
    if os.path.isfile(os.path.join(folder, "kernel-metadata.json")):
        entry["metadata"] = json.load(open(os.path.join(folder, "kernel-metadata.json")))
with open(os.path.join(state, "calls.jsonl"), "a") as log:
    log.write(json.dumps(entry) + "\\n")
created = os.path.join(state, "dataset-created")
if args[:2] == ["datasets", "status"]:
    if not os.path.exists(created):
        print("404 - Not Found")
        sys.exit(1)
    print("ready")
elif args[:2] == ["datasets", "create"]:
    open(created, "w").close()
    print("Your private Dataset is being created. Please check progress at https://www.kaggle.com/...")
elif args[:2] == ["kernels", "push"] and os.environ.get("FAKE_KAGGLE_REFUSE"):
    print("Kernel push error: " + os.environ["FAKE_KAGGLE_REFUSE"])  # exit 0, as the real CLI may
else:
    print("Kernel version 1 successfully pushed.")
"""


@pytest.fixture
def fake_kaggle(tmp_path):
    """A machine as a new Kaggle user has it: a kaggle CLI (fake: records its calls) set up with a
    token for `someone` in ~/.kaggle, and no torch importable by the push."""
    home, bin_dir, state = tmp_path / "home", tmp_path / "bin", tmp_path / "state"
    for folder in (home / ".kaggle", bin_dir, state):
        folder.mkdir(parents=True)
    (home / ".kaggle/kaggle.json").write_text('{"username": "someone", "key": "0123"}')
    cli = bin_dir / "kaggle"
    cli.write_text(FAKE_KAGGLE.format(python=sys.executable))
    cli.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_KAGGLE_STATE=str(state),
               PYTHONPATH=str(ROOT))

    def push(*args: str, **extra_env: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
        code = ("import sys; sys.modules['torch'] = None  # the push must not need torch\n"
                "from qlora_helpers.runners import kaggle; sys.exit(kaggle.main(sys.argv[1:]))")
        done = subprocess.run([sys.executable, "-c", code, "push", "--dist", str(tmp_path / "dist"), *args],
                              capture_output=True, text=True, env={**env, **extra_env}, cwd=tmp_path)
        calls = [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]
        (state / "calls.jsonl").unlink()
        return done, calls

    return push


def test_the_whole_push_path_with_a_fake_kaggle_cli(fake_kaggle, tmp_path):
    done, calls = fake_kaggle()
    assert done.returncode == 0, done.stderr
    dataset = tmp_path / "dist" / "kaggle-dataset"
    assert [c["args"] for c in calls] == [
        ["datasets", "status", "someone/qlora-helpers"],  # 404: the first push creates it
        ["datasets", "create", "-p", str(dataset)],
        ["datasets", "status", "someone/qlora-helpers"],  # ready: the kernels can attach it
        *(["kernels", "push", "-p", str(tmp_path / "dist" / "kaggle-kernels" / stem)] for stem in TRAINING_NOTEBOOKS)]
    assert calls[1]["files"] == sorted(["dataset-metadata.json", kaggle.wheel_name()])
    for call, stem in zip(calls[3:], TRAINING_NOTEBOOKS):
        meta = call["metadata"]
        assert call["files"] == sorted(["kernel-metadata.json", f"{stem}.ipynb"]) and meta["code_file"] == f"{stem}.ipynb"
        assert meta["id"].startswith("someone/") and meta["dataset_sources"] == ["someone/qlora-helpers"]
        assert meta["model_sources"] and meta["enable_gpu"] and meta["machine_shape"] == "NvidiaTeslaT4"
        assert f"https://www.kaggle.com/code/{meta['id']}" in done.stdout
    assert "https://www.kaggle.com/datasets/someone/qlora-helpers" in done.stdout
    assert "python -m qlora_helpers.runners.kaggle push --notebooks 04 --owner someone" in done.stdout

    # 04 once 01-03 are complete: the dataset exists now, so it gets a new version
    done, calls = fake_kaggle("--notebooks", "04")
    assert done.returncode == 0, done.stderr
    assert [c["args"][:2] for c in calls] == [["datasets", "status"], ["datasets", "version"], ["datasets", "status"],
                                              ["kernels", "push"]]
    assert calls[1]["args"][-2:] == ["-m", f"qlora-helpers {__version__}"]
    templates = [json.loads((FOLDER / stem / "kernel-metadata.json").read_text()) for stem in TRAINING_NOTEBOOKS]
    assert calls[3]["metadata"]["kernel_sources"] == [f"someone/{meta['id'].split('/')[1]}" for meta in templates]
    assert "push --notebooks 04" not in done.stdout


def test_a_refused_push_names_the_account_steps(fake_kaggle):
    """The kaggle CLI may report a refused kernel push on stdout and exit 0."""
    done, calls = fake_kaggle("--owner", "other", FAKE_KAGGLE_REFUSE="Phone verification required")
    assert done.returncode == 1
    assert calls[0]["args"] == ["datasets", "status", "other/qlora-helpers"]  # --owner over kaggle.json's user
    assert "`kaggle kernels push -p" in done.stderr and "Phone verification required" in done.stderr
    assert "phone-verified account" in done.stderr


def test_without_the_kaggle_cli_the_push_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(kaggle.KaggleError, match="the kaggle CLI is not on PATH: `python -m pip install kaggle`"):
        kaggle.push("someone", ["01_full_precision_baseline"], tmp_path / "dist")
    assert not (tmp_path / "dist").exists()


# The README's Kaggle section ---------------------------------------------------------------------
def kaggle_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## On Kaggle\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line.split("#")[0].strip() for block in blocks for line in block.splitlines() if line.split("#")[0].strip()]


def test_readme_kaggle_commands_are_what_the_repository_runs():
    """The README's steps parse as the module's command line; 04 is pushed after waiting for 01-03."""
    commands = kaggle_commands()
    prefix = "python -m qlora_helpers.runners.kaggle "
    parsed = [kaggle.command_line().parse_args(c.removeprefix(prefix).split()) for c in commands if c.startswith(prefix)]
    assert [(args.command, args.notebooks) for args in parsed] == [("push", list(TRAINING_NOTEBOOKS)), ("push", ["04"])]
    slugs = {json.loads(p.read_text())["id"].split("/")[1] for p in FILES}
    statuses = [i for i, c in enumerate(commands) if c.startswith("kaggle kernels status USER/")]
    assert statuses and all(commands[i].split("/")[-1] in slugs for i in statuses)
    assert commands[0].startswith(prefix + "push") and 0 < statuses[0] < len(commands) - 1
    assert commands[-1] == prefix + "push --notebooks 04"


@pytest.mark.parametrize("installed, offline", [("65.5.0", False), ("76.1.0", False), ("77.0.3", True), ("84.2.1", True)])
def test_the_wheel_builds_offline_only_with_a_setuptools_that_can(monkeypatch, installed, offline):
    """Python 3.10/3.11 ship setuptools 65, which cannot read pyproject.toml's SPDX license (77+): there the build
    must go through pip's isolation, which fetches a new one, instead of failing with a traceback."""
    from importlib import metadata

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: installed if name == "setuptools" else real(name))
    assert kaggle._setuptools_builds_this() is offline
