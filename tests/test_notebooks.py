"""The notebook series: the committed notebooks are clean tutorials, and the whole series runs end to
end through the runner on the smoke profile (tiny random Qwen2, CPU, offline), once per module."""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pandas as pd
import pytest

from qlora_helpers.notebook import results
from qlora_helpers.runners import profiles, runner

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_FILES = sorted((ROOT / "notebooks").glob("*.ipynb"))
MACHINE_PATH = re.compile(r"/(work|root|home)/")
MAX_CELL_LINES = 15  # what a reader takes in at a glance; longer logic belongs in qlora_helpers


def read(path: Path):
    return nbformat.read(path, as_version=4)


def parameters_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell must be tagged `parameters`"
    return cells[0]


# The committed notebooks ------------------------------------------------------------------------
def test_the_series_is_complete():
    assert [p.stem for p in NOTEBOOK_FILES] == list(profiles.NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_committed_notebook_is_clean(path):
    nb = read(path)
    nbformat.validate(nb)
    text = path.read_text()
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a code cell has outputs (clear them before committing)"
            assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"
    assert not MACHINE_PATH.search(text), f"{path.name} contains a machine path: {MACHINE_PATH.search(text)[0]}"
    assert "matplotlib.use(" not in text  # the inline backend puts the figures in the HTML
    parameters_cell(nb)


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_notebook_reads_as_a_tutorial(path):
    nb = read(path)
    title = nb.cells[0]
    assert title.cell_type == "markdown" and title.source.startswith("# ")
    assert "kaggle.com/kernels/welcome?src=https://github.com/" in title.source and path.name in title.source
    assert "colab.research.google.com/github/" in title.source
    code = [c for c in nb.cells if c.cell_type == "code"]
    install = code[0].source
    assert "KAGGLE_KERNEL_RUN_TYPE" in install and "COLAB_RELEASE_TAG" in install and "google.colab" in install
    assert code[1] is parameters_cell(nb)
    assert "parameters.from_namespace(globals()" in code[2].source  # checked before anything heavy
    for index, cell in enumerate(nb.cells[1:], 1):
        if cell.cell_type == "code" and cell is not parameters_cell(nb):
            assert nb.cells[index - 1].cell_type == "markdown", f"{path.name}: code cell {index} has no prose above it"
            # The install cell runs before the package exists: it is qlora_helpers/notebook/install.py (test_install.py).
            if cell is not code[0]:
                assert len(cell.source.splitlines()) <= MAX_CELL_LINES, \
                    f"{path.name}: cell {index} is long: move logic to qlora_helpers"


@pytest.mark.parametrize("stem", profiles.TRAINING_NOTEBOOKS)
def test_parameter_defaults_are_the_kaggle_t4_profile(stem):
    namespace: dict = {}
    exec(parameters_cell(read(ROOT / "notebooks" / f"{stem}.ipynb")).source, namespace)
    for knob, value in profiles.KAGGLE_T4.parameters(stem).items():
        assert namespace[knob] == value, f"{stem}: {knob}={namespace[knob]!r} but kaggle-t4 has {value!r}"
    for knob in ("model_id", "method", "data_dir", "max_train_samples", "max_eval_samples", "epochs", "batch_size",
                 "learning_rate", "max_length", "run_dir", "profile", "seed"):
        assert knob in namespace, f"{stem}: the parameters cell lacks {knob}"


# A memory or trainable-share figure in prose would be the titled model's, which a stand-in's outputs
# contradict (02 once said ~3.1 GB and ~1% trainable over outputs of 0.27 GB and 3.5%): prose points
# to the run's output, or to experiment.titled_model_estimate's labelled estimate, instead.
PROSE_FIGURE = re.compile(r"(?:~|\babout \+?|\baround )\d+(?:\.\d+)?\s*(?:GB|GiB|MB)\b|\d+\.\d+\s*(?:GB|GiB|MB)\b"
                          r"|\d+(?:\.\d+)?\s*%\s+of\s+(?:the|its)\s+(?:weights|parameters)"
                          r"|\d+(?:\.\d+)?\s*%\s+(?:are\s+)?trainable|trainable[^.]{0,30}?\d+(?:\.\d+)?\s*%")


@pytest.mark.parametrize("stem", profiles.TRAINING_NOTEBOOKS)
def test_prose_states_no_memory_or_trainable_figure(stem):
    prose = [c.source for c in read(ROOT / "notebooks" / f"{stem}.ipynb").cells if c.cell_type == "markdown"]
    assert [m[0] for text in prose for m in PROSE_FIGURE.finditer(text)] == []


def test_qlora_notebook_explains_quantization():
    text = "\n".join(c.source for c in read(ROOT / "notebooks" / "03_qlora_qwen2.5_7b.ipynb").cells)
    for flag in ("nf4", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype", "llm_int8_skip_modules",
                 "prepare_model_for_kbit_training", "loaded in 4-bit (..%)"):
        assert flag in text


def recipe_cells(stem: str) -> list[str]:
    """The cells of a training notebook that build its method: BitsAndBytesConfig, LoraConfig, peft's
    calls on the model, the TrainingArguments and the Trainer."""
    markers = ("BitsAndBytesConfig(", "LoraConfig(", "get_peft_model(", "TrainingArguments(", "Trainer(")
    return [c.source for c in read(ROOT / "notebooks" / f"{stem}.ipynb").cells
            if c.cell_type == "code" and any(m in c.source for m in markers)]


def run_recipe(stem: str, params) -> dict:
    """The notebook's recipe cells executed as the notebook runs them, after its `params`."""
    namespace = {"params": params}
    for source in recipe_cells(stem):
        if "BitsAndBytesConfig(" in source or "LoraConfig(" in source:
            exec(source, namespace)
    return namespace


def calls(sources: list[str], name: str) -> bool:
    """True if a line of code (not a comment) in `sources` calls `name`."""
    return any(f"{name}(" in line.split("#", 1)[0] for source in sources for line in source.splitlines())


def test_the_notebooks_show_their_recipe():
    """The recipe a reader can paste into a notebook of their own, in plain transformers and peft calls."""
    for stem in profiles.TRAINING_NOTEBOOKS:
        cells = recipe_cells(stem)
        method = profiles.KAGGLE_T4.parameters(stem)["method"]
        assert calls(cells, "TrainingArguments") and calls(cells, "Trainer"), f"{stem} hides its Trainer"
        assert calls(cells, "LoraConfig") == calls(cells, "get_peft_model") == (method != "full"), \
            f"{stem}: a LoraConfig and get_peft_model cell iff LoRA"
        assert calls(cells, "BitsAndBytesConfig") == (method == "qlora"), f"{stem}: a BitsAndBytesConfig cell iff QLoRA"
        assert calls(cells, "prepare_model_for_kbit_training") == (method == "qlora"), stem
    lora_cell = [[s for s in recipe_cells(stem) if "LoraConfig(" in s] for stem in profiles.TRAINING_NOTEBOOKS[1:]]
    assert lora_cell[0] == lora_cell[1], "02 and 03 differ in the LoRA cell: the diff should show the method only"
    training_cells = [[s for s in recipe_cells(stem) if "Trainer" in s] for stem in profiles.TRAINING_NOTEBOOKS]
    assert training_cells[0] == training_cells[1] == training_cells[2], "01-03 differ in their training cells"


@pytest.mark.parametrize("stem", profiles.TRAINING_NOTEBOOKS)
def test_the_notebook_training_arguments_are_the_factorys(stem):
    """The TrainingArguments cell and training.training_arguments (what scripts, benchmarks and the
    launched processes train with) are one recipe: the same arguments, value for value."""
    from types import SimpleNamespace

    import torch

    from qlora_helpers import training
    from qlora_helpers.notebook import experiment
    from qlora_helpers.notebook.parameters import NotebookParameters

    params = NotebookParameters(notebook=stem, **profiles.KAGGLE_T4.parameters(stem))
    loaded = SimpleNamespace(compute_dtype=torch.float32, total_params=1_540_000_000)
    namespace = {"experiment": experiment, "params": params, "loaded": loaded, "train_rows": range(10_003)}
    exec(next(s for s in recipe_cells(stem) if "TrainingArguments(" in s), namespace)
    expected = training.training_arguments(loaded, experiment.train_config(params, 10_003, loaded.total_params))
    assert namespace["args"].to_dict() == expected.to_dict()


@pytest.mark.parametrize("stem", profiles.TRAINING_NOTEBOOKS[1:])
def test_training_runs_on_the_notebooks_own_trainer(stem, tiny_qwen2, banking77_dir, tmp_path, monkeypatch):
    """The notebook's cells, run in this process on the tiny model up to training: the Trainer whose
    train() ran is the cell's `Trainer`, built from the cell's `TrainingArguments`, on the peft model
    get_peft_model returned, and its trainable weights moved. Fails if the package trains a Trainer of its own."""
    import torch
    from transformers import Trainer

    for name, value in profiles.SMOKE.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    trained = []
    real_train = Trainer.train

    def train(self, *args, **kwargs):
        trained.append((self, {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}))
        return real_train(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train", train)
    code = [c.source for c in read(ROOT / "notebooks" / f"{stem}.ipynb").cells if c.cell_type == "code"]
    namespace: dict = {}
    exec(code[1], namespace)  # the parameters cell, then the smoke profile's values, as papermill injects them
    namespace.update(profiles.SMOKE.parameters(stem), run_dir=str(tmp_path), data_source="local",
                     data_dir=str(banking77_dir), use_all_gpus=False)
    namespace["model_id"] = tiny_qwen2
    for source in code[2:]:
        exec(source, namespace)
        if "train_model(" in source:
            break
    (trainer, before), = trained
    model = namespace["model"]
    assert trainer is namespace["trainer"] and trainer.args is namespace["args"]
    assert trainer.model is model is namespace["loaded"].model and hasattr(model, "peft_config")
    assert namespace["stats"].steps == trainer.state.global_step > 0
    moved = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p.detach(), before[n])}
    assert any("lora_" in n for n in moved) and any("score" in n for n in moved), sorted(moved)[:5]


@pytest.mark.parametrize("stem", profiles.TRAINING_NOTEBOOKS[1:])
def test_the_notebook_recipe_is_the_default_and_is_what_the_model_carries(stem, tiny_qwen2):
    """The configs the cells build equal what the helpers build when given none (defaults.py), and a
    model loaded with them carries them: peft's LoraConfig and the base's quantization flags."""
    import torch

    from qlora_helpers import defaults, modeling
    from qlora_helpers.notebook.parameters import NotebookParameters

    method = profiles.KAGGLE_T4.parameters(stem)["method"]
    params = NotebookParameters(notebook=stem, model_id=tiny_qwen2, method=method, lora_r=8, lora_alpha=24,
                                lora_dropout=0.1)  # not the defaults: the cell must read the parameters
    recipe = run_recipe(stem, params)
    shown, bnb = recipe["lora_config"], recipe.get("bnb_config")
    default = modeling.default_lora_config(method, params.lora_r, params.lora_alpha, params.lora_dropout)
    assert shown.to_dict() == default.to_dict()
    if method == "qlora":
        assert bnb.to_dict() == modeling.default_quantization_config(modeling.choose_compute_dtype()).to_dict()
    loaded = modeling.load_model(tiny_qwen2, method, quantization_config=bnb, lora_config=shown)
    carried = loaded.model.peft_config["default"]
    assert (carried.r, carried.lora_alpha, carried.lora_dropout) == (8, 24, 0.1)
    # "all-linear", as peft resolved it: every linear layer of Qwen2's blocks
    assert {name.rsplit(".", 1)[-1] for name in carried.target_modules} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert "score" in carried.modules_to_save
    quantized = getattr(modeling.base_model(loaded.model).config, "quantization_config", None)
    if method == "qlora":
        for flag, value in defaults.QUANTIZATION.items():
            assert getattr(quantized, flag) == value, flag
        assert quantized.bnb_4bit_compute_dtype == recipe["compute_dtype"] == loaded.compute_dtype
        assert "score" in quantized.llm_int8_skip_modules
    else:
        assert quantized is None and loaded.compute_dtype == torch.float32  # CPU


# The series, run end to end ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke-run")
    lines: list[str] = []
    start = time.perf_counter()
    outcomes = runner.run("smoke", run_dir=run_dir, echo=lines.append)
    return SimpleNamespace(run_dir=run_dir, outcomes=outcomes, lines=lines, seconds=time.perf_counter() - start)


def test_every_notebook_ran_with_a_progress_line(smoke):
    assert [(o.notebook, o.status) for o in smoke.outcomes] == [(n, "ran") for n in profiles.NOTEBOOKS]
    for stem in profiles.NOTEBOOKS:
        assert any(line.startswith(f"[") and stem in line and "done in" in line for line in smoke.lines)
    print(f"smoke profile, four notebooks: {smoke.seconds:.0f} s")


@pytest.mark.parametrize("stem", profiles.TRAINING_NOTEBOOKS)
def test_training_notebook_wrote_valid_results_and_figures(smoke, stem):
    folder = smoke.run_dir / stem
    record = results.read_result(folder / "results.json")
    injected = profiles.SMOKE.parameters(stem)
    assert (record["model_id"], record["method"], record["demo"]) == (injected["model_id"], injected["method"], True)
    assert record["run_name"] == stem
    assert record["data"]["test_examples"] == injected["max_eval_samples"]
    for png in ("confusion_matrix.png", "confusion_zoom.png", "loss_curve.png"):
        assert (folder / png).read_bytes().startswith(b"\x89PNG")
    assert not (folder / "checkpoints").exists()  # dropped once results.json is written


@pytest.mark.parametrize("stem", profiles.NOTEBOOKS)
def test_executed_notebook_and_html(smoke, stem):
    executed = read(smoke.run_dir / f"{stem}.ipynb")
    injected = next(c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert f'run_dir = "{smoke.run_dir.name}"' in injected.source  # relative to the kernel's cwd
    assert not any(o.get("output_type") == "error" for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    html = (smoke.run_dir / f"{stem}.html").read_text()
    images = html.count("data:image/png;base64")
    assert images >= (3 if stem in profiles.TRAINING_NOTEBOOKS else 4), f"{stem}.html embeds {images} PNG(s)"
    if stem in profiles.TRAINING_NOTEBOOKS:
        assert "confusion matrix" in html or "rows normalised" in html
    if stem == "03_qlora_qwen2.5_7b":
        assert re.search(r"loaded in [^;]*4-bit \(\d+%\)[^;]*; \w+ compute\. footprint:", html)


@pytest.mark.parametrize("stem", profiles.TRAINING_NOTEBOOKS)
def test_a_stand_ins_render_opens_with_its_banner(smoke, stem):
    """The smoke profile's tiny random Qwen2 is no notebook's own model: the cell that checks the
    parameters shows the banner, above the parameters table, before any data or model is loaded."""
    from qlora_helpers.notebook import experiment
    from qlora_helpers.notebook.parameters import NotebookParameters

    banner = experiment.stand_in_banner(NotebookParameters(notebook=stem, profile="smoke", **profiles.SMOKE.parameters(stem)))
    cells = [c for c in read(smoke.run_dir / f"{stem}.ipynb").cells if c.cell_type == "code"]
    shown = {i: o["data"]["text/markdown"] for i, c in enumerate(cells) for o in c.outputs if "text/markdown" in o.get("data", {})}
    checking = next(i for i, c in enumerate(cells) if "parameters.from_namespace(" in c.source)
    assert shown == {checking: banner}
    html = (smoke.run_dir / f"{stem}.html").read_text()
    assert html.index("Stand-in model.") < html.index("The data: Banking77")


def readable_text(path: Path) -> str:
    """A rendered notebook (.ipynb or .html) without its embedded images, which are base64 noise."""
    text = path.read_text()
    if path.suffix == ".ipynb":
        nb = json.loads(text)
        for cell in nb["cells"]:
            for output in cell.get("outputs", []):
                output.get("data", {}).pop("image/png", None)
        return json.dumps(nb, indent=1)
    return re.sub(r"data:image/[a-z+]+;base64,[A-Za-z0-9+/=\s]+", "", text)


def machine_folders(run_dir: Path) -> set[str]:
    """Absolute folders of the machine that ran the series: none may appear in what it rendered."""
    folders = {ROOT, Path(sys.prefix), Path.home(), runner.require_data_dir(), run_dir}
    return {str(f) for folder in folders for f in (folder, folder.resolve())}


def render_problems(run_dir: Path) -> list[str]:
    """Machine paths and library noise in the executed notebooks and HTML of run_dir (a smoke run
    here; any render the project commits passes the same checks)."""
    noise = ("Failed to load CPU gemm_4bit_forward", "Paged optimizers are not supported on CPU",
             "`gradient_checkpointing_enable` is deprecated", "`is_gradient_checkpointing` is deprecated",
             "LOAD REPORT", "mtime may not be reliable")
    problems = []
    for stem in profiles.NOTEBOOKS:
        for path in (run_dir / f"{stem}.ipynb", run_dir / f"{stem}.html"):
            text = readable_text(path)
            problems += [f"{path.name}: machine path {f}" for f in machine_folders(run_dir) if f in text]
            problems += [f"{path.name}: library noise {n!r}" for n in noise if n in text]
        streams = [o for c in read(run_dir / f"{stem}.ipynb").cells if c.cell_type == "code"
                   for o in c.outputs if o.output_type == "stream"]
        problems += [f"{stem}.ipynb: stderr output {o.text[:200]!r}" for o in streams if o.name == "stderr"]
        problems += [f"{stem}.ipynb: empty lines in {o.text[:80]!r}" for o in streams
                     if o.text.startswith("\n") or "\n\n" in o.text]
    return problems


def test_render_has_no_machine_paths_and_no_library_noise(smoke):
    assert render_problems(smoke.run_dir) == []


def test_comparison_has_three_rows_and_says_what_kind_of_model_each_used(smoke):
    table = pd.read_csv(smoke.run_dir / "04_comparison" / "comparison.csv", index_col="run")
    assert list(table.index) == list(profiles.TRAINING_NOTEBOOKS)
    assert set(table["kind"]) == {"random weights (test)"}  # the smoke profile's tiny random Qwen2
    for column in ("accuracy", "macro_f1", "footprint_gb", "trainable_params", "examples_per_s", "train_time_s",
                   "hardware"):
        assert column in table.columns
    html = (smoke.run_dir / "04_comparison.html").read_text()
    assert "Random weights (test):" in html and "Fastest to train:" in html and "card_arrival -&gt; card_delivery_estimate" in html
    text = runner.comparison_text(smoke.run_dir)
    assert sum(stem in text for stem in profiles.TRAINING_NOTEBOOKS) == 3


def test_the_run_folder_opens_with_a_readme_that_says_what_ran_where(smoke):
    """What a reader of a committed run folder sees first: when, on what hardware and code each
    notebook ran, the table and the findings, links to the renders, and the refresh command."""
    readme = (smoke.run_dir / "README.md").read_text()
    for stem in profiles.TRAINING_NOTEBOOKS:
        record = json.loads((smoke.run_dir / stem / "results.json").read_text())
        assert f"| [{stem}]({stem}.ipynb) | {record['created_at'][:10]}" in readme
        assert record["commit"] and record["commit"] in readme
        assert f"{record['metrics']['accuracy']:.4f}".rstrip("0") in readme
    assert "CPU, " in readme and "Most accurate" in readme and "[04_comparison](04_comparison.ipynb)" in readme
    assert f"--profile smoke --run-dir {smoke.run_dir.name} --force" in readme


def test_no_partial_files_are_left(smoke):
    assert not [p for p in smoke.run_dir.rglob("*") if ".partial-" in p.name or p.name.endswith(".failed.ipynb")]


def test_a_second_run_skips_everything(smoke):
    start = time.perf_counter()
    outcomes = runner.run("smoke", run_dir=smoke.run_dir, echo=lambda line: None)
    assert [o.status for o in outcomes] == ["skipped"] * 4
    assert time.perf_counter() - start < 10  # no kernel was started


def test_a_truncated_results_file_reruns_that_notebook_for_real(smoke):
    path = smoke.run_dir / "01_full_precision_baseline" / "results.json"
    path.write_text(path.read_text()[:100])
    outcomes = runner.run("smoke", run_dir=smoke.run_dir, echo=lambda line: None)
    assert [o.status for o in outcomes] == ["ran", "skipped", "skipped", "ran"]
    assert json.loads(path.read_text())["run_name"] == "01_full_precision_baseline"


REFERENCE = ROOT / "reference" / "qwen-t4"


def test_the_committed_reference_render_is_complete_and_clean():
    """reference/qwen-t4, the render people read on GitHub (`make reference` on a GPU refreshes it):
    all four notebooks executed with valid results, no path of this machine or of the GPU machine
    that ran it, no library noise, and a README that says when, where and on which commit."""
    assert render_problems(REFERENCE) == []
    for path in REFERENCE.glob("*.ipynb"):
        text = path.read_text()
        assert not re.search(r"/(tmp|root|opt|home|work)/", text), f"{path.name} holds a machine path"
        assert all(cell.execution_count for cell in read(path).cells if cell.cell_type == "code"), \
            f"{path.name}: a code cell that did not run"
    records = results.read_results(REFERENCE)
    assert [r["run_name"] for r in records] == list(profiles.TRAINING_NOTEBOOKS)
    readme = (REFERENCE / "README.md").read_text()
    assert all(r["commit"] in readme for r in records)
    assert [r["model_id"] for r in records] == [profiles.QWEN_T4.parameters(n)["model_id"] for n in profiles.TRAINING_NOTEBOOKS]


def test_the_readme_results_table_is_the_reference_run():
    """README.md's headline table is typed from the reference render: each row must say what that run's
    results.json says (accuracy, macro-F1, training seconds, peak memory, trainable parameters)."""
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| (0[123]) \| [^|]+ \| [^|]+ \| \*\*([\d.]+)%\*\* \| ([\d.]+) \| (\d+) s \| ([\d.]+) GiB \| "
                      r"([\d.]+) M \(([\d.]+)%\) \|$", readme, re.M)
    records = results.read_results(REFERENCE)
    assert [row[0] for row in rows] == [r["run_name"][:2] for r in records]
    for (_, accuracy, macro_f1, seconds, gib, millions, share), r in zip(rows, records):
        t = r["training"]
        assert (accuracy, macro_f1) == (f"{100 * r['metrics']['accuracy']:.1f}", f"{r['metrics']['macro_f1']:.3f}")
        assert (seconds, gib) == (f"{t['train_seconds']:.0f}", f"{t['peak_memory_bytes'] / 2**30:.2f}")
        assert millions == f"{r['trainable_params'] / 1e6:.1f}"
        assert share == f"{100 * r['trainable_params'] / r['total_params']:.{0 if share == '100' else 2}f}"


def test_will_it_fit_shows_each_method_at_its_own_default_batch(smoke):
    """03's table once put QLoRA's batch on every row, so 0.5B full fine-tuning 'did not fit' the
    T4 that notebook 01 trains it on."""
    from qlora_helpers import defaults

    outputs = [o for c in read(smoke.run_dir / "03_qlora_qwen2.5_7b.ipynb").cells if "fit_table" in c.source
               for o in c.outputs if "text/plain" in o.get("data", {})]
    rows = re.findall(r"\b(full|lora|qlora)\s+(\d+)\s+(on|off)\b", outputs[0]["data"]["text/plain"])
    assert len(rows) == 9
    assert all(int(batch) == defaults.for_method(method).batch_size for method, batch, _ in rows)


@pytest.mark.parametrize("stem", profiles.TRAINING_NOTEBOOKS)
def test_the_render_cuts_no_text_and_explains_its_values(smoke, stem):
    """What a reader of the HTML met: 03's 'why' cut at 50 characters, a loss table per training cell above
    the loss curve, `epochs = None` injected while the table said 2.0, and a bare `warmup_steps 0.06`."""
    from qlora_helpers.notebook import experiment

    html = (smoke.run_dir / f"{stem}.html").read_text()
    assert not re.findall(r"<td>[^<]*\.\.\.</td>", html)  # pandas' cut: 01-03's examples too
    training_cell = next(c for c in read(smoke.run_dir / f"{stem}.ipynb").cells if "train_model(" in c.source)
    shown = "".join("".join(o.get("data", {}).get("text/html", "")) for o in training_cell.outputs)
    assert "<progress" in shown and "Training Loss" not in shown
    assert f"None: {profiles.SMOKE.parameters(stem)['method']}'s default" in html
    assert re.search(r"0\.06 \(6% of the \d+ steps: \d+ steps?\)", html)
    if stem == "03_qlora_qwen2.5_7b":
        assert all(why in html for why in experiment._FLAG_WHY.values())
