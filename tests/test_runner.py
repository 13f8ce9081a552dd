"""The runner's decisions (what is complete, what reruns) and its errors. Execution is replaced by a
fake here except in the failing-notebook test; test_notebooks.py runs the real series."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from qlora_helpers import data, training
from qlora_helpers.notebook import parameters, results
from qlora_helpers.runners import profiles, run, runner

PROFILE = profiles.get_profile("smoke")


def fake_record(notebook: str, injected: dict) -> dict:
    loaded = SimpleNamespace(model_id=injected["model_id"], method=injected["method"], compute_dtype=torch.float32,
                             footprint_bytes=1_000, trainable_params=10, total_params=100, kaggle_folder=None)
    stats = training.TrainStats(train_seconds=1.0, steps=2, examples=32, real_tokens=200, padded_tokens=256,
                                peak_memory_bytes=2**20, peak_memory_kind="process_peak_rss", final_loss=1.0,
                                losses=[2.0, 1.0])
    labels = list(data.BANKING77_INTENTS)
    evaluation = SimpleNamespace(accuracy=0.5, macro_f1=0.4, confusion=np.eye(len(labels), dtype=int),
                                 confused_pairs=[], absent_intents=[])
    return results.build_result(run_name=notebook, loaded=loaded, stats=stats, evaluation=evaluation,
                                label_names=labels, data={}, demo=True,
                                # as experiment.save_results records them: knobs left None resolved
                                config={"parameters": parameters.NotebookParameters(notebook=notebook,
                                                                                    **injected).as_dict()})


class FakeExecution:
    """Stands in for runner.execute_notebook: records the call and writes what a real run writes."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, notebook, run_dir, injected, kernel_name):
        self.calls.append(notebook)
        if notebook in profiles.TRAINING_NOTEBOOKS:
            results.write_result(fake_record(notebook, injected), run_dir / notebook / "results.json")
        for suffix in (".ipynb", ".html"):
            (run_dir / f"{notebook}{suffix}").write_text("{}")


@pytest.fixture
def fake(monkeypatch):
    execution = FakeExecution()
    monkeypatch.setattr(runner, "execute_notebook", execution)
    return execution


@pytest.fixture
def complete_run(tmp_path, fake):
    """A run folder as a finished smoke run leaves it."""
    runner.run("smoke", run_dir=tmp_path, echo=lambda line: None)
    assert fake.calls == list(profiles.NOTEBOOKS)
    fake.calls.clear()
    return tmp_path


def test_unknown_profile_lists_the_valid_ones(capsys):
    with pytest.raises(runner.RunnerError, match="unknown profile 'nope': valid profiles are demo, demo-decoder, smoke, kaggle-t4, smollm2-t4"):
        runner.run("nope")
    assert run.main(["--profile", "nope"]) != 0
    assert "unknown profile 'nope'" in capsys.readouterr().err


def test_unknown_notebook_lists_the_valid_ones():
    with pytest.raises(runner.RunnerError) as caught:
        runner.run("smoke", notebooks=["05_missing"])
    assert "unknown notebook '05_missing'" in str(caught.value)
    assert all(stem in str(caught.value) for stem in profiles.NOTEBOOKS)


def test_notebook_names_accept_numbers():
    assert profiles.resolve_notebooks(["4", "01", "02_lora_qwen2.5_1.5b.ipynb"]) == [
        "01_full_precision_baseline", "02_lora_qwen2.5_1.5b", "04_comparison"]


def test_complete_valid_results_are_skipped(complete_run, fake):
    lines = []
    outcomes = runner.run("smoke", run_dir=complete_run, echo=lines.append)
    assert fake.calls == []
    assert [o.status for o in outcomes] == ["skipped"] * 4
    assert sum("skipped, outputs complete" in line for line in lines) == 4


def test_truncated_results_make_the_notebook_rerun(complete_run, fake):
    path = complete_run / "02_lora_qwen2.5_1.5b" / "results.json"
    path.write_text(path.read_text()[:200])  # a write cut short
    runner.run("smoke", run_dir=complete_run, echo=lambda line: None)
    # the notebook reruns, and the comparison after it because its inputs changed
    assert fake.calls == ["02_lora_qwen2.5_1.5b", "04_comparison"]
    results.read_result(path)


@pytest.mark.parametrize("damage, expected", [
    (lambda d: (d / "01_full_precision_baseline.html").unlink(), ["01_full_precision_baseline", "04_comparison"]),
    (lambda d: (d / "04_comparison.ipynb").unlink(), ["04_comparison"]),
    (lambda d: (d / "03_qlora_qwen2.5_7b" / "results.json").write_text(json.dumps({"schema": "other"})),
     ["03_qlora_qwen2.5_7b", "04_comparison"]),
])
def test_incomplete_outputs_rerun(complete_run, fake, damage, expected):
    damage(complete_run)
    runner.run("smoke", run_dir=complete_run, echo=lambda line: None)
    assert fake.calls == expected


def test_changed_parameters_and_force_rerun(complete_run, fake):
    runner.run("smoke", run_dir=complete_run, overrides={"epochs": 2}, echo=lambda line: None)
    assert fake.calls == list(profiles.NOTEBOOKS)
    fake.calls.clear()
    runner.run("smoke", run_dir=complete_run, notebooks=["01"], overrides={"epochs": 2}, force=True,
               echo=lambda line: None)
    assert fake.calls == ["01_full_precision_baseline"]


def test_cuda_graphs_reruns_what_it_changes_and_older_results_count_as_without_it(complete_run, fake, monkeypatch):
    path = complete_run / "03_qlora_qwen2.5_7b" / "results.json"
    record, written = json.loads(path.read_text()), path.stat().st_mtime
    del record["config"]["parameters"]["cuda_graphs"]  # written before the knob existed: it ran without graphs
    path.write_text(json.dumps(record))
    os.utime(path, (written, written))  # as old as it was: the comparison stays current
    runner.run("smoke", run_dir=complete_run, echo=lambda line: None)
    assert fake.calls == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the parameters accept graphs on one GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(results, "hardware", lambda: {"device": "cuda", "name": "a pretended GPU", "count": 1})
    runner.run("smoke", run_dir=complete_run, notebooks=["03"], overrides={"cuda_graphs": True}, echo=lambda line: None)
    assert fake.calls == ["03_qlora_qwen2.5_7b"]


def test_run_dir_and_profile_cannot_be_overridden(tmp_path):
    with pytest.raises(runner.RunnerError, match="run_dir cannot be overridden"):
        runner.run("smoke", run_dir=tmp_path, overrides={"run_dir": "elsewhere"})


def test_cli_parses_overrides():
    assert run.parse_overrides(["epochs=2", "learning_rate=1e-3", "data_dir=/tmp/x", "max_train_samples=None"]) == {
        "epochs": 2, "learning_rate": 1e-3, "data_dir": "/tmp/x", "max_train_samples": None}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        run.parse_overrides(["epochs"])


def test_failing_notebook_exits_non_zero_naming_notebook_and_cell(tmp_path, capsys, monkeypatch):
    """A real kernel: a data folder that does not exist fails in the notebook's data cell once the
    runner's own check of the folder (the test above) is off; the runner names the notebook and the
    cell and exits non-zero."""
    monkeypatch.setattr(runner, "check_data", lambda *args: None)
    missing = tmp_path / "no-such-folder"
    code = run.main(["--profile", "smoke", "--run-dir", str(tmp_path / "run"), "--notebooks", "01",
                     "--set", f"data_dir={missing}"])
    err = capsys.readouterr().err
    assert code != 0
    assert "notebook 01_full_precision_baseline failed at cell" in err
    assert re.search(r"cell \d+ \(In \[\d+\]: bank = experiment.load_data\(params\)\)", err)
    assert "Banking77Error" in err and "does not exist" in err
    folder = tmp_path / "run"
    assert (folder / "01_full_precision_baseline.failed.ipynb").is_file()
    assert not (folder / "01_full_precision_baseline.ipynb").exists()  # never passes as complete
    assert not list(folder.glob(".*partial*"))
    # fixed and rerun: the failed notebook's traceback no longer lies beside the good one
    assert run.main(["--profile", "smoke", "--run-dir", str(folder), "--notebooks", "01"]) == 0
    assert (folder / "01_full_precision_baseline.ipynb").is_file()
    assert not (folder / "01_full_precision_baseline.failed.ipynb").exists()


@pytest.mark.parametrize("stem", profiles.TRAINING_NOTEBOOKS)
def test_every_knob_of_the_cell_is_injected(stem, tmp_path):
    """A profile never inherits a value from the notebook's own (Kaggle) defaults."""
    from qlora_helpers.notebook.parameters import NotebookParameters

    injected = runner.notebook_parameters(PROFILE, stem, tmp_path, tmp_path, None)
    assert runner.cell_knobs(stem) <= set(injected)
    # the profile's value, else the dataclass's own default: None where that is the method's default
    defaults = {item.name: item.default for item in dataclasses.fields(NotebookParameters)}
    for knob, value in injected.items():
        expected = PROFILE.parameters(stem).get(knob, defaults[knob])
        if knob not in ("run_dir", "profile", "data_dir", "data_source"):
            assert value == expected, knob


def test_partial_files_of_a_killed_runner_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".01_full_precision_baseline.ipynb.partial-{dead}.ipynb"
    alive = tmp_path / f".01_full_precision_baseline.ipynb.partial-{__import__('os').getpid()}.ipynb"
    for path in (stale, alive):
        path.write_text("{}")
    runner._remove_stale_partials(tmp_path, "01_full_precision_baseline")
    assert not stale.exists() and alive.exists()


def test_two_runners_at_once_get_their_own_kernel_sockets(tmp_path, monkeypatch):
    """Two runners started in the same folder (two profiles at once, or a GPU each) must not share
    the kernels' IPC sockets: they would read each other's messages ("Invalid Signature")."""
    monkeypatch.chdir(tmp_path)
    manager_class = runner._kernel_manager_class()
    with runner.this_interpreter_kernel({}):
        first, second = manager_class(), manager_class()
    assert first.transport == second.transport == "ipc"
    assert first.ip != second.ip
    assert all(Path(m.ip).is_absolute() and tmp_path not in Path(m.ip).parents for m in (first, second))


def test_another_profiles_results_are_kept_unless_forced(complete_run, fake):
    """A run folder of one profile once took another profile's run silently: its results were
    replaced and the comparison mixed two profiles. Now the runner refuses before any work, names
    what it would replace and the fix; --force replaces."""
    before = (complete_run / "01_full_precision_baseline" / "results.json").read_text()
    with pytest.raises(runner.RunnerError, match="holds results of another profile") as error:
        runner.run("demo", run_dir=complete_run, notebooks=["01"], echo=lambda line: None)
    assert "01_full_precision_baseline: smoke" in str(error.value) and "runs/demo" in str(error.value)
    assert fake.calls == [] and (complete_run / "01_full_precision_baseline" / "results.json").read_text() == before
    runner.run("demo", run_dir=complete_run, notebooks=["01"], force=True, echo=lambda line: None)
    assert fake.calls == ["01_full_precision_baseline"]


def test_a_run_folder_that_is_a_file_is_refused(tmp_path, fake):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(runner.RunnerError, match="is a file: give --run-dir a folder"):
        runner.run("smoke", run_dir=afile, echo=lambda line: None)


def test_the_data_folder_is_checked_before_any_notebook_starts(tmp_path, fake, monkeypatch):
    """An empty BANKING77_DIR used to pass until the notebook's data cell, after a kernel had
    started; now the runner names the missing files first."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("BANKING77_DIR", str(empty))
    with pytest.raises(runner.RunnerError, match="lacks train.csv, test.csv, categories.json"):
        runner.run("smoke", run_dir=tmp_path / "run", echo=lambda line: None)
    assert fake.calls == []


def test_a_folder_with_bad_rows_is_refused_with_every_problem_before_any_notebook_starts(tmp_path, fake,
                                                                                       banking77_dir):
    """The rows were checked only inside the notebook's data cell, one problem per run."""
    import shutil

    folder = tmp_path / "mine"
    shutil.copytree(banking77_dir, folder)
    (folder / "test.csv").write_text("text,category\n ,card_arrival\nhi,card_arival\n")
    with pytest.raises(runner.RunnerError) as error:
        runner.run("smoke", run_dir=tmp_path / "run", overrides={"data_dir": str(folder)}, echo=lambda line: None)
    assert "has 2 problem(s)" in str(error.value)
    assert "empty text(s) at row 1" in str(error.value) and "'card_arival' at row 2" in str(error.value)
    assert fake.calls == []
    assert run.main(["--profile", "smoke", "--run-dir", str(tmp_path / "run"), "--set", f"data_dir={folder}"]) != 0


def test_data_source_hub_needs_no_local_folder(tmp_path, fake, monkeypatch):
    """The missing-folder error suggests --set data_source=hub; the runner used to ask for the local
    folder anyway. A profile's default, "auto", reads the hub's copy where no folder is found, and says so."""
    monkeypatch.setattr(data, "default_data_dir", lambda: None)
    with pytest.raises(runner.RunnerError, match="--set data_source=hub"):
        runner.run("smoke", run_dir=tmp_path / "local", notebooks=["01"], overrides={"data_source": "local"},
                   echo=lambda line: None)
    said: list[str] = []
    runner.run("smoke", run_dir=tmp_path / "auto", notebooks=["01"], echo=said.append)
    runner.run("smoke", run_dir=tmp_path / "hub", notebooks=["01"], overrides={"data_source": "hub"},
               echo=lambda line: None)
    assert fake.calls == ["01_full_precision_baseline"] * 2
    assert any(line.startswith("no Banking77 folder found: the notebooks read the hub's copy") for line in said)


def test_ctrl_c_ends_with_a_line_that_says_how_to_resume(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run", interrupted)
    assert run.main(["--profile", "smoke"]) == 130
    assert "interrupted: notebooks already finished are kept; the same command resumes" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--profile", "nope", "--notebook", "01"], "unknown profile 'nope'"),
    (["--profile", "smoke", "--notebook", "04"], "a training notebook is one of"),
    (["--profile", "smoke", "--notebook", "01", "--set", "epochs=two"], "epochs"),  # "01": a number is accepted
])
def test_train_all_gpus_answers_bad_input_with_one_line(argv, message, capsys):
    """Its bad input used to end in a Python traceback; now argparse's usage and one error line, exit 2."""
    from qlora_helpers.runners import train_all_gpus

    with pytest.raises(SystemExit) as stopped:
        train_all_gpus.main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and message in err and "Traceback" not in err


def test_a_printed_line_split_into_two_stream_messages_is_one_output():
    """Under load a kernel sent "trained ..." and "\\n" as two stream messages; the saved notebook
    kept them as two outputs and its render showed a stray blank line (a fresh-clone test run caught
    it). Consecutive outputs of one stream are merged; a figure between two prints keeps them apart."""
    import nbformat

    stream = lambda name, text: nbformat.v4.new_output("stream", name=name, text=text)  # noqa: E731
    figure = nbformat.v4.new_output("display_data", data={"text/plain": "<Figure>"})
    outputs = [stream("stdout", "trained 62 steps"), stream("stdout", "\n"), figure, stream("stdout", "after\n"),
               stream("stderr", "a warning\n"), stream("stdout", "last\n")]
    merged = runner.merge_consecutive_streams(outputs)
    assert [(o.output_type, o.get("text")) for o in merged] == [
        ("stream", "trained 62 steps\n"), ("display_data", None), ("stream", "after\n"), ("stream", "a warning\n"),
        ("stream", "last\n")]


def test_a_relative_data_folder_is_found_by_the_kernels_too(tmp_path, monkeypatch):
    """The kernels run in the run folder's parent: a relative data_dir or BANKING77_DIR passed the runner's
    check, then named no folder inside the notebook."""
    (tmp_path / "mydata").mkdir()
    monkeypatch.chdir(tmp_path)
    assert runner.local_data_dir(profiles.SMOKE, {"data_dir": "mydata"}) == tmp_path / "mydata"
    monkeypatch.setenv("BANKING77_DIR", "mydata")
    assert data.default_data_dir() == tmp_path / "mydata"
    assert runner.local_data_dir(profiles.SMOKE, {}) == tmp_path / "mydata"


def test_a_folder_of_one_notebook_run_with_a_set_says_how_to_remake_it(tmp_path):
    """reference/qwen-t4-lr2e-3 (02 alone, learning_rate=0.002) got a README linking a 04 it did not have and a
    refresh command that would have rerun the whole series at the default rate."""
    import shutil

    stem = "02_lora_qwen2.5_1.5b"
    source = Path(__file__).resolve().parents[1] / "reference" / "qwen-t4-lr2e-3" / stem / "results.json"
    (tmp_path / "lr" / stem).mkdir(parents=True)
    shutil.copy(source, tmp_path / "lr" / stem / "results.json")
    readme = runner.write_readme(tmp_path / "lr", profiles.get_profile("qwen-t4"), {"learning_rate": 0.002}).read_text()
    assert "04_comparison.ipynb" not in readme
    assert "--run-dir lr --notebooks 02 --set learning_rate=0.002 --force" in readme


def test_the_html_render_shows_the_install_cell_by_its_output_only(tmp_path):
    """The install cell (tagged hide-input, like every notebook's first code cell) renders as what it printed."""
    import nbformat

    from qlora_helpers.runners import kaggle

    hidden = nbformat.v4.new_code_cell("def install_qlora_helpers_body(): pass", metadata=kaggle.INSTALL_CELL_METADATA)
    hidden.outputs = [nbformat.v4.new_output("stream", name="stdout", text="qlora-helpers 0.1.0 is installed\n")]
    shown = nbformat.v4.new_code_cell("print('the recipe stays visible')")
    nbformat.write(nbformat.v4.new_notebook(cells=[hidden, shown]), tmp_path / "executed.ipynb")
    html = runner.write_html(tmp_path / "executed.ipynb", tmp_path / "executed.html").read_text()
    assert "qlora-helpers 0.1.0 is installed" in html and "the recipe stays visible" in html
    assert "install_qlora_helpers_body" not in html
