"""Notebook parameters: a wrong type or value stops the notebook with one clear error, before any
model is loaded, whether it comes from the parameters cell, papermill, or the runner."""
from __future__ import annotations

import pytest

from qlora_helpers import defaults, memory, training
from qlora_helpers.notebook import parameters
from qlora_helpers.notebook.parameters import NotebookParameters, ParameterError
from qlora_helpers.runners import profiles, runner


def build(**values):
    return NotebookParameters(notebook="01_full_precision_baseline", **values)


def test_defaults_are_valid_and_derive_paths():
    params = build(run_dir="runs/x")
    assert params.output_dir.as_posix() == "runs/x/01_full_precision_baseline"
    assert params.checkpoint_dir.name == "checkpoints"
    assert not params.demo
    assert build(model_id="offline:all-MiniLM-L6-v2").demo


@pytest.mark.parametrize("name, value, words", [
    ("epochs", "two", ["epochs='two'", "must be a number"]),
    ("batch_size", "32", ["batch_size='32'", "must be an integer", "without quotes", "batch_size=32"]),
    ("learning_rate", "1e-4", ["learning_rate='1e-4'", "without quotes"]),
    ("max_train_samples", 20.5, ["max_train_samples=20.5", "an integer or None"]),
    ("batch_size", True, ["batch_size=True", "must be an integer"]),
    ("keep_checkpoints", "yes", ["keep_checkpoints='yes'", "True or False"]),
])
def test_wrong_type_names_the_parameter_and_the_fix(name, value, words):
    with pytest.raises(ParameterError) as caught:
        build(**{name: value})
    message = str(caught.value)
    for word in words:
        assert word in message


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ParameterError, match=r"method='sft' is not a method: use one of 'full', 'lora', 'qlora'"):
        build(method="sft")


@pytest.mark.parametrize("values, fragment", [
    (dict(epochs=0), "epochs=0 must be greater than 0"),
    (dict(max_eval_samples=10), "at least 77"),
    (dict(data_source="kaggle"), "use one of 'auto', 'local', 'hub'"),
    (dict(lora_dropout=1.5), "lora_dropout=1.5 must be in [0, 1)"),
])
def test_bad_values_are_explained(values, fragment):
    with pytest.raises(ParameterError) as caught:
        build(**values)
    assert fragment in str(caught.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ParameterError) as caught:
        build(epochs="two", batch_size="32")
    assert "epochs='two'" in str(caught.value) and "batch_size='32'" in str(caught.value)


def test_numbers_are_accepted_as_numbers():
    params = build(epochs=3, learning_rate=1, max_train_samples=None)  # an int is a fine float
    assert params.epochs == 3


def test_from_namespace_takes_the_knobs_and_ignores_the_rest():
    namespace = {"model_id": "offline:tiny-qwen2", "method": "lora", "epochs": 1, "os": object(),
                 "In": [], "_": None}
    params = parameters.from_namespace(namespace, notebook="02_lora_qwen2.5_1.5b")
    assert (params.model_id, params.method, params.epochs) == ("offline:tiny-qwen2", "lora", 1)
    lora = defaults.for_method("lora")  # knobs the notebook left unset take the method's default
    assert (params.batch_size, params.lora_dropout) == (lora.batch_size, lora.lora_dropout)
    assert params.learning_rate is None  # set by the model's size once it is loaded
    assert params.learning_rate_for(135_000_000) == lora.learning_rate
    assert parameters.NotebookParameters(notebook="x", method="qlora", learning_rate=1e-4).learning_rate_for(
        7_000_000_000) == 1e-4  # a rate that is set is kept, whatever the size
    comparison = parameters.from_namespace({"run_dir": "runs/demo"}, notebook="04_comparison")
    assert isinstance(comparison, parameters.ComparisonParameters)
    with pytest.raises(ParameterError, match="focus_intents"):
        parameters.from_namespace({"focus_intents": "card_arrival"}, notebook="04_comparison")


def test_runner_refuses_bad_overrides_before_running_anything(tmp_path):
    with pytest.raises(runner.RunnerError) as caught:
        runner.run("smoke", run_dir=tmp_path, overrides={"batch_size": "32"}, echo=lambda line: None)
    assert "batch_size='32'" in str(caught.value) and "01_full_precision_baseline" in str(caught.value)
    with pytest.raises(runner.RunnerError, match="unknown parameter.*epoch\\b"):
        runner.run("smoke", run_dir=tmp_path, overrides={"epoch": 1}, echo=lambda line: None)
    assert not any(tmp_path.iterdir())  # nothing ran, nothing was written


def test_papermill_injected_wrong_type_stops_at_the_check_cell(tmp_path):
    """Through papermill and a real kernel: the validation cell raises ParameterError, and no later
    cell (data, model) runs."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output = tmp_path / "out.ipynb"
    with runner.this_interpreter_kernel({"HF_HUB_OFFLINE": "1"}) as kernel:
        with pytest.raises(PapermillExecutionError) as caught:
            papermill.execute_notebook(str(runner.NOTEBOOKS_DIR / "01_full_precision_baseline.ipynb"), str(output),
                                       parameters={"epochs": "two", "model_id": "offline:tiny-qwen2"},
                                       kernel_name=kernel, progress_bar=False, cwd=str(runner.NOTEBOOKS_DIR),
                                       kernel_manager_class=runner._kernel_manager_class())
    assert caught.value.ename == "ParameterError"
    assert "epochs='two'" in caught.value.evalue and "must be a number" in caught.value.evalue
    cells = [c for c in nbformat.read(output, as_version=4).cells if c.cell_type == "code"]
    failed = next(i for i, c in enumerate(cells) if any(o.get("output_type") == "error" for o in c.outputs))
    assert "parameters.from_namespace" in cells[failed].source
    assert all(c.execution_count is None for c in cells[failed + 1:])  # nothing after it ran


def test_one_source_of_defaults_notebook_cells_profile_and_library_agree():
    """The notebooks' parameters cells show the kaggle-t4 profile's values, and those are each
    method's defaults (defaults.py); the one documented exception keeps the effective batch."""
    import ast

    import nbformat

    profile = profiles.get_profile("kaggle-t4")
    shown_by_stem = {}
    for stem in profiles.TRAINING_NOTEBOOKS:
        nb = nbformat.read(runner.NOTEBOOKS_DIR / f"{stem}.ipynb", as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        shown = shown_by_stem[stem] = {node.targets[0].id: ast.literal_eval(node.value)
                                       for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)}
        resolved = NotebookParameters(notebook=stem, **profile.parameters(stem))
        # what the runner injects resolves to the same, for this notebook's method (not the dataclass's)
        injected = runner.notebook_parameters(profile, stem, runner.default_run_dir(profile.name), None)
        assert NotebookParameters(notebook=stem, **injected).as_dict() == {**resolved.as_dict(), **{
            k: injected[k] for k in ("run_dir", "data_dir", "data_source", "profile")}}
        method = defaults.for_method(resolved.method)
        for knob in defaults.NOTEBOOK_KNOBS:
            if knob in shown:
                assert shown[knob] == getattr(resolved, knob), (stem, knob)
            if knob == "learning_rate":  # by the model's size (defaults.learning_rate)
                assert resolved.learning_rate is None, stem
            elif knob not in ("batch_size", "gradient_accumulation"):
                assert getattr(resolved, knob) == getattr(method, knob), (stem, knob)
        assert resolved.batch_size * resolved.gradient_accumulation == method.effective_batch, stem
        # a knob outside the methods' defaults is shown at the notebooks' own default
        if "cuda_graphs" in shown:
            assert shown["cuda_graphs"] == NotebookParameters(notebook=stem).cuda_graphs, stem
    assert "cuda_graphs" in shown_by_stem["03_qlora_qwen2.5_7b"]
    # the notebooks' default for CUDA graphs is the Trainer's
    assert NotebookParameters(notebook="x").cuda_graphs is training.TrainConfig.__dataclass_fields__[
        "cuda_graphs"].default
    assert memory.DEFAULT_BATCH_SIZE == {m: d.batch_size for m, d in defaults.DEFAULTS.items()}
    assert training.default_train_config("qlora").optimizer == defaults.for_method("qlora").optimizer


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has `count` CUDA GPUs (the checks read torch.cuda, not a device)."""
    import torch

    def pretend(count: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    return pretend


def qlora(**values):
    return NotebookParameters(notebook="03_qlora_qwen2.5_7b", method="qlora", **values)


def test_cuda_graphs_is_refused_where_graphs_enable_would_refuse_it_before_anything_loads(gpus, monkeypatch):
    """What graphs.enable refuses once the model is loaded (a CPU, dropout, several processes), the
    parameters refuse first, each problem with its fix."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    gpus(0)
    with pytest.raises(ParameterError, match=r"needs a CUDA GPU and this machine has none: set cuda_graphs=None"):
        qlora(cuda_graphs=True)
    gpus(1)
    assert qlora(cuda_graphs=True).cuda_graphs  # one GPU, the default dropout of 0: accepted
    with pytest.raises(ParameterError) as caught:
        NotebookParameters(notebook="01_full_precision_baseline", method="full", cuda_graphs=True)
    assert "for the adapter methods" in str(caught.value) and "lora_dropout" not in str(caught.value)
    with pytest.raises(ParameterError, match=r"lora_dropout=0 .* not 0\.05: set lora_dropout=0\.0 or cuda_graph"):
        qlora(cuda_graphs=True, lora_dropout=0.05)
    gpus(2)  # Kaggle's T4 x2: use_all_gpus would start one process per GPU
    with pytest.raises(ParameterError, match=r"all 2 GPUs: set use_all_gpus=False .* or cuda_graphs=False"):
        qlora(cuda_graphs=True)
    assert qlora(cuda_graphs=True, use_all_gpus=False).cuda_graphs
    monkeypatch.setenv("WORLD_SIZE", "2")  # one of a launcher's processes
    with pytest.raises(ParameterError, match=r"a launcher started 2: set cuda_graphs=False"):
        qlora(cuda_graphs=True, use_all_gpus=False)
    assert not qlora().cuda_graphs  # off, nothing is checked


def test_cuda_graphs_reaches_the_trainer(gpus, monkeypatch):
    from qlora_helpers.notebook import experiment

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    gpus(1)
    assert experiment.train_config(qlora(cuda_graphs=True), 1000, 135_000_000).cuda_graphs
    assert experiment.train_config(qlora(), 1000, 135_000_000).cuda_graphs is None  # on where they can run
    assert experiment.train_config(qlora(cuda_graphs=False), 1000, 135_000_000).cuda_graphs is False
    gpus(2)  # the notebook hands training to two launched processes: it records no graphs of its own
    assert experiment.train_config(qlora(), 1000, 135_000_000).cuda_graphs is False
    monkeypatch.setenv("WORLD_SIZE", "2")  # each launched process decides (graphs.unavailable: off, with its line)
    assert experiment.train_config(qlora(), 1000, 135_000_000).cuda_graphs is None


def test_the_adapter_methods_learning_rate_falls_with_the_model_size():
    """2e-3 sent LoRA and QLoRA on Qwen2.5-1.5B back to chance, then to NaN: larger models get a lower rate."""
    rule = {n: defaults.learning_rate("lora", n) for n in (20_000_000, 135_000_000, 494_000_000, 1_540_000_000,
                                                           7_620_000_000)}
    assert rule[20_000_000] == rule[135_000_000] == 2e-3  # never raised above the rate chosen on SmolLM2
    assert rule[494_000_000] == pytest.approx(1.05e-3, rel=0.01)
    assert rule[1_540_000_000] == pytest.approx(5.9e-4, rel=0.01)
    assert rule[7_620_000_000] == pytest.approx(2.66e-4, rel=0.01)
    assert defaults.learning_rate("qlora", 1_540_000_000) == rule[1_540_000_000]
    assert defaults.learning_rate("full", 270_000_000) == defaults.for_method("full").learning_rate
    assert experiment_rate(1_540_000_000) == rule[1_540_000_000]
    table = NotebookParameters(notebook="02_lora_qwen2.5_1.5b", method="lora").table()
    assert table.loc["learning_rate", "value"].startswith("by size: 0.002 x sqrt(135M / N)")


def experiment_rate(parameters: int) -> float:
    """The learning rate notebook 02's training step gives the Trainer for a model of that size."""
    from qlora_helpers.notebook import experiment

    params = NotebookParameters(notebook="02_lora_qwen2.5_1.5b", method="lora", use_all_gpus=False)
    return experiment.train_config(params, 1000, parameters).learning_rate


def test_an_unknown_offline_model_is_refused_before_anything_loads():
    """`offline:nope` failed only at the model cell, after the data had loaded, and left a .failed notebook."""
    with pytest.raises(ParameterError, match=r"model_id='offline:nope' is not an offline model: use one of "
                                             r"offline:smollm2-135m, .*offline:qwen2.5-1.5b"):
        NotebookParameters(notebook="02_lora_qwen2.5_1.5b", model_id="offline:nope", method="lora")


def test_the_parameters_table_says_which_knobs_were_left_none_and_what_filled_them():
    """papermill's injected cell shows `epochs = None` while the table showed 2.0, with nothing to say why."""
    table = NotebookParameters(notebook="03_qlora_qwen2.5_7b", method="qlora", batch_size=8, epochs=None,
                               learning_rate=None, gradient_checkpointing=None).table()
    assert table.loc["epochs"].tolist() == [repr(defaults.for_method("qlora").epochs), "None: qlora's default"]
    assert table.loc["batch_size"].tolist() == ["8", "notebook"]
    assert table.loc["learning_rate", "from"] == "None: by the model's size"
    assert table.loc["gradient_checkpointing"].tolist() == ["True", "None: qlora's default"]
    assert table.loc["method", "from"] == "notebook"
    full = NotebookParameters(notebook="01_full_precision_baseline", method="full", learning_rate=None).table()
    assert full.loc["learning_rate"].tolist() == ["0.0002 (full's default, any size)", "None: full's default"]
