"""Run the notebook series headless with papermill: one profile, four notebooks, one run folder.

For each notebook, in order: skip it if its outputs are complete (unless force), else execute it on
a kernel of this very interpreter with the profile's parameters injected, then write the executed
notebook and its HTML render (images embedded) under temporary names and rename them into place, so
a half-written file never passes as complete. A failing notebook stops the run with an error that
names the notebook and the cell.

Run folder layout (`runs/<profile>/` by default):
    01_full_precision_baseline.ipynb / .html     executed notebook and its render
    01_full_precision_baseline/results.json       metrics, memory, throughput (results schema v1)
    01_full_precision_baseline/*.png              confusion matrix, zoom, loss curve
    ...                                            likewise 02 and 03
    04_comparison.ipynb / .html, 04_comparison/   the comparison and its table (CSV) and figures
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import atomic
from ..notebook import parameters as params_module
from ..notebook import results
from . import profiles

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
KERNEL_NAME = "qlora-notebooks-runner"
# Knobs that change the numbers: a results.json written with other values is stale.
RESULT_KNOBS = ("model_id", "method", "max_train_samples", "max_eval_samples", "epochs", "batch_size",
                "gradient_accumulation", "learning_rate", "max_length", "lora_r", "lora_alpha",
                "lora_dropout", "upcast_all_to_fp32", "seed", "cuda_graphs")


class RunnerError(RuntimeError):
    """The run cannot go on: the message says what and how to fix it."""


class NotebookFailed(RunnerError):
    def __init__(self, notebook: str, cell: int | None, message: str):
        self.notebook, self.cell = notebook, cell
        super().__init__(message)


@dataclass
class Outcome:
    notebook: str
    status: str  # "ran" or "skipped"
    seconds: float
    note: str = ""


def default_run_dir(profile: str) -> Path:
    return REPO_ROOT / "runs" / profile


def require_data_dir() -> Path:
    """The Banking77 folder (data.find_data_dir), as a RunnerError if there is none."""
    from ..data import Banking77Error, find_data_dir as find_banking77

    try:
        return find_banking77()
    except Banking77Error as error:
        raise RunnerError(str(error)) from error


def local_data_dir(profile: profiles.Profile, overrides: dict) -> Path | None:
    """The Banking77 folder the run reads, absolute: the one an override names, else `require_data_dir` for
    data_source "local" and for "auto" the folder if there is one; or None where it needs none found here
    (the hub is the data source, or, for "auto", no folder was found)."""
    from ..data import default_data_dir

    data_source = overrides.get("data_source", profile.data_source)
    if overrides.get("data_dir"):  # absolute: the kernels run in the run folder's parent, not here
        return Path(overrides["data_dir"]).expanduser().resolve()
    if "data_dir" in overrides or data_source == "hub":
        return None
    return require_data_dir() if data_source == "local" else default_data_dir()


# What keeps a profile's kernels off the hub; the data needs it when no Banking77 folder is found.
HUB_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def reads_the_hub(profile: profiles.Profile, overrides: dict, data_dir: Path | None) -> bool:
    """True when the notebooks will read Banking77 from the hub: data_source "hub", or "auto" with no folder."""
    data_source = overrides.get("data_source", profile.data_source)
    return data_source == "hub" or (data_source == "auto" and data_dir is None and "data_dir" not in overrides)


def check_data(profile: profiles.Profile, overrides: dict, data_dir: Path | None) -> None:
    """Every problem of the Banking77 folder the notebooks will read (data.check_folder), as one
    RunnerError before any kernel starts: inside a notebook it would surface one problem per run,
    after the kernel's start-up."""
    from ..data import Banking77Error, check_folder

    if overrides.get("data_source", profile.data_source) == "hub" or data_dir is None:
        return
    try:
        check_folder(data_dir)
    except Banking77Error as error:
        raise RunnerError(str(error)) from error


def cell_knobs(notebook: str) -> set[str]:
    """The variables assigned in the notebook's `parameters` cell. Read as plain JSON (nbformat 4), so
    train_all_gpus needs no Jupyter package on a GPU machine."""
    cells = json.loads((NOTEBOOKS_DIR / f"{notebook}.ipynb").read_text())["cells"]
    cell = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise RunnerError(f"notebook {notebook} has no cell tagged `parameters`: papermill cannot inject.")
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    return {target.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


def notebook_parameters(profile: profiles.Profile, notebook: str, run_dir: Path,
                        data_dir: Path | None, overrides: dict | None = None) -> dict:
    """What the runner injects into `notebook`, validated before any notebook starts.

    Every knob of the notebook's parameters cell is injected: the profile's value, else the
    dataclass default, so a run never inherits a value from the cell's own (Kaggle) defaults.
    """
    if notebook == profiles.COMPARISON_NOTEBOOK:
        values = {"run_dir": str(run_dir), "profile": profile.name}
        params_module.ComparisonParameters(notebook=notebook, **values)
        return values
    # the dataclass's own defaults: None for the knobs whose default is the method's (defaults.py),
    # which the kernel then fills in for the notebook's method
    defaults = {item.name: item.default for item in dataclasses.fields(params_module.NotebookParameters)
                if item.default is not dataclasses.MISSING}
    knobs = cell_knobs(notebook)
    values = {name: value for name, value in defaults.items() if name in knobs and name != "notebook"}
    values.update({**profile.parameters(notebook), "run_dir": str(run_dir), "profile": profile.name,
                   "data_source": profile.data_source, "data_dir": str(data_dir) if data_dir else None,
                   **(overrides or {})})
    params_module.check_overrides(values)
    try:
        params_module.NotebookParameters(notebook=notebook, **values)
    except params_module.ParameterError as error:
        raise RunnerError(f"profile {profile.name!r}, notebook {notebook}: {error}") from error
    return values


# Completeness ---------------------------------------------------------------------------------
def outputs(run_dir: Path, notebook: str) -> dict[str, Path]:
    return {"ipynb": run_dir / f"{notebook}.ipynb", "html": run_dir / f"{notebook}.html",
            "results": run_dir / notebook / "results.json"}


def results_of_other_profiles(run_dir: Path, profile_name: str, notebooks: list[str]) -> dict[str, str]:
    """{notebook: profile} for each of `notebooks` whose results.json in run_dir another profile wrote
    (an unreadable one counts as nobody's: it is rerun anyway)."""
    found = {}
    for notebook in notebooks:
        path = outputs(run_dir, notebook)["results"]
        if notebook == profiles.COMPARISON_NOTEBOOK or not path.is_file():
            continue
        try:
            wrote = results.read_result(path).get("config", {}).get("parameters", {}).get("profile")
        except results.ResultsError:
            continue
        if wrote and wrote != profile_name:
            found[notebook] = wrote
    return found


def incomplete_reason(run_dir: Path, notebook: str, injected: dict) -> str | None:
    """None if `notebook`'s outputs in run_dir are complete and current, else why not."""
    files = outputs(run_dir, notebook)
    for kind in ("ipynb", "html"):
        if not files[kind].is_file():
            return f"no executed {kind}"
    if notebook == profiles.COMPARISON_NOTEBOOK:
        newest = max((outputs(run_dir, n)["results"].stat().st_mtime for n in profiles.TRAINING_NOTEBOOKS
                      if outputs(run_dir, n)["results"].is_file()), default=0)
        return "results newer than the comparison" if newest > files["ipynb"].stat().st_mtime else None
    try:
        record = results.read_result(files["results"])
    except results.ResultsError as error:
        return f"results.json unusable ({str(error).split(': ', 1)[-1][:80]})"
    ran_with = record.get("config", {}).get("parameters", {})
    wanted = params_module.NotebookParameters(notebook=notebook, **injected).as_dict()  # None: method default
    # a knob added since the results were written: they ran with its default (None, "the method's", is unknown)
    before = {item.name: item.default for item in dataclasses.fields(params_module.NotebookParameters)}
    changed = [k for k in RESULT_KNOBS if k in injected and ran_with.get(k, before.get(k)) != wanted[k]]
    if changed:
        return f"parameters changed: {', '.join(changed)}"
    return None


# Execution ------------------------------------------------------------------------------------
def _kernel_manager_class():
    """A kernel manager that talks to the kernel over local IPC sockets instead of TCP ports."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class LocalKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc"

        @default("ip")
        def _default_ip(self):
            # The sockets' path prefix. jupyter_client's default, "kernel-ipc" relative to the current
            # folder, is the same for every runner started there: two at once pick the same sockets
            # and read each other's messages ("Invalid Signature"). One private absolute prefix each.
            folder = Path(os.environ.get("JUPYTER_RUNTIME_DIR") or tempfile.mkdtemp(prefix="qlora-kernel-"))
            folder.mkdir(parents=True, exist_ok=True)
            return str(folder / f"kernel-{uuid.uuid4().hex[:12]}-ipc")

    return LocalKernelManager


# The executed notebooks are read as HTML: no text progress bars (ipywidgets is not installed
# here). Library notices are filtered one by one where the notebook steps meet them (experiment.py).
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


@contextmanager
def this_interpreter_kernel(env: dict[str, str]):
    """A kernelspec that starts `sys.executable` (this venv's python), found through JUPYTER_PATH,
    so the notebooks never run on some other Python that a `python3` kernelspec may point at."""
    with tempfile.TemporaryDirectory(prefix="qlora-kernel-") as folder:
        spec_dir = Path(folder) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (qlora-notebooks runner)", "language": "python",
                # the inline backend even if the caller exported MPLBACKEND=Agg: the HTML needs images
                "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline", **QUIET_ENV, **env}}
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        # The connection file and the IPC sockets go in a short temporary path too (a socket path
        # must stay under ~100 characters, which a deep $HOME can exceed).
        previous = {name: os.environ.get(name) for name in ("JUPYTER_PATH", "JUPYTER_RUNTIME_DIR")}
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (folder, previous["JUPYTER_PATH"]) if p)
        os.environ["JUPYTER_RUNTIME_DIR"] = str(Path(folder) / "run")
        try:
            yield KERNEL_NAME
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _remove_stale_partials(run_dir: Path, notebook: str) -> None:
    """Partial files left by a runner that was killed (its pid is gone): never complete, remove them."""
    for path in run_dir.glob(f".{notebook}.*.partial-*"):
        try:
            pid = int(path.name.rsplit(".partial-", 1)[1].split(".")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            continue


def _failed_cell(notebook_path: Path) -> tuple[int | None, str]:
    """(index among the executed notebook's cells, first source line) of the cell that raised."""
    import nbformat

    try:
        nb = nbformat.read(notebook_path, as_version=4)
    except Exception:  # noqa: BLE001 - the notebook may not have been written at all
        return None, ""
    code_cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
    for index, cell in enumerate(code_cells):
        if cell.cell_type == "code" and any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            return index, first.strip()[:100]
    return None, ""


def execute_notebook(notebook: str, run_dir: Path, injected: dict, kernel_name: str) -> None:
    """Execute one notebook into run_dir; the .ipynb and .html appear only once complete."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    files = outputs(run_dir, notebook)
    partial = atomic.partial_path(files["ipynb"])
    run_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(run_dir, notebook)
    try:
        # The kernel runs in the run folder's parent and gets the run folder by name, so the
        # injected cell, the parameter table and every path the notebook prints stay machine-free.
        papermill.execute_notebook(
            str(NOTEBOOKS_DIR / f"{notebook}.ipynb"), str(partial),
            parameters={**injected, "run_dir": run_dir.name}, cwd=str(run_dir.parent),
            kernel_name=kernel_name, progress_bar=False, log_output=False,
            kernel_manager_class=_kernel_manager_class(),
        )
    except PapermillExecutionError as error:
        failed = run_dir / f"{notebook}.failed.ipynb"
        cell, first_line = _failed_cell(partial) if partial.exists() else (None, "")
        if partial.exists():
            os.replace(partial, failed)
        cell = cell if cell is not None else error.cell_index
        raise NotebookFailed(
            notebook, cell,
            f"notebook {notebook} failed at cell {cell} (In [{error.exec_count}]: {first_line}): "
            f"{error.ename}: {error.evalue}\n  the executed notebook with the traceback: {failed}",
        ) from error
    except Exception as error:  # kernel died (out of memory, ...), timeout, missing kernel
        if partial.exists():
            os.replace(partial, run_dir / f"{notebook}.failed.ipynb")
        raise NotebookFailed(notebook, None, f"notebook {notebook} failed: {type(error).__name__}: {error}") from error
    except BaseException:  # Ctrl-C: leave no partial file behind
        partial.unlink(missing_ok=True)
        raise
    _tidy_executed(partial, notebook)
    os.replace(partial, files["ipynb"])
    write_html(files["ipynb"], files["html"])
    (run_dir / f"{notebook}.failed.ipynb").unlink(missing_ok=True)  # an earlier failure, now superseded


def _tidy_executed(path: Path, notebook: str) -> None:
    """What the reader of an executed notebook should not see. papermill records the absolute paths
    it read and wrote: keep the project-relative source and the output's own name instead. A kernel
    under load can send one printed line as two stream messages ("text", then "\n"), which the
    saved notebook keeps as two outputs with a blank line between: merge each run of consecutive
    outputs of one stream, as Jupyter's own display does (never across a figure or a table)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.metadata.setdefault("papermill", {}).update(
        input_path=f"{NOTEBOOKS_DIR.name}/{notebook}.ipynb", output_path=f"{notebook}.ipynb")
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = merge_consecutive_streams(cell.outputs)
    nbformat.write(nb, path)


def merge_consecutive_streams(outputs: list) -> list:
    """`outputs` with each run of consecutive stream outputs of the same name (stdout, stderr) as one."""
    merged: list = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (output.get("output_type") == "stream" and previous is not None
                and previous.get("output_type") == "stream" and previous.get("name") == output.get("name")):
            previous["text"] += output["text"]
        else:
            merged.append(output)
    return merged


def write_html(notebook_path: Path, html_path: Path) -> Path:
    """The executed notebook as standalone HTML (figures embedded as base64 PNG), written atomically; cells tagged
    `hide-input` (the install cell) show their output only."""
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    config = Config({"TagRemovePreprocessor": {"enabled": True, "remove_input_tags": {"hide-input"}}})
    body, _ = HTMLExporter(config=config).from_notebook_node(nbformat.read(notebook_path, as_version=4))
    return atomic.write_text(html_path, body)


def _summary(run_dir: Path, notebook: str) -> str:
    if notebook == profiles.COMPARISON_NOTEBOOK:
        return "comparison written"
    record = results.read_result(outputs(run_dir, notebook)["results"])
    return (f"{record['method']} {record['model_id']}: accuracy {record['metrics']['accuracy']:.2%}, "
            f"macro-F1 {record['metrics']['macro_f1']:.3f}")


def run(profile_name: str, run_dir: str | Path | None = None, force: bool = False,
        notebooks: list[str] | None = None, overrides: dict | None = None, echo=print) -> list[Outcome]:
    """Run the profile's notebooks in order into run_dir; raise RunnerError on any problem."""
    try:
        profile = profiles.get_profile(profile_name)
        selected = profiles.resolve_notebooks(notebooks)
    except profiles.UnknownNameError as error:
        raise RunnerError(str(error)) from error
    overrides = dict(overrides or {})
    try:
        params_module.check_overrides(overrides)
    except params_module.ParameterError as error:
        raise RunnerError(str(error)) from error
    fixed = sorted(set(overrides) & {"notebook", "run_dir", "profile"})
    if fixed:
        raise RunnerError(f"{', '.join(fixed)} cannot be overridden: use --run-dir and --profile.")
    missing = [n for n in selected if not (NOTEBOOKS_DIR / f"{n}.ipynb").is_file()]
    if missing:
        raise RunnerError(f"notebook(s) {', '.join(missing)} not found in {NOTEBOOKS_DIR}: run from a "
                          "clone of the repository (the notebooks are not part of the installed package).")
    run_dir = Path(run_dir or default_run_dir(profile.name)).resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise RunnerError(f"the run folder {run_dir} is a file: give --run-dir a folder (made if missing).")
    others = results_of_other_profiles(run_dir, profile.name, selected)
    if others and not force:
        raise RunnerError(
            f"the run folder {run_dir} holds results of another profile ("
            + "; ".join(f"{notebook}: {name}" for notebook, name in others.items())
            + f"): profile {profile.name} would replace them and mix two profiles in one comparison. Use "
            f"another --run-dir (the default is runs/{profile.name}), or --force to replace them.")
    data_dir = local_data_dir(profile, overrides)
    check_data(profile, overrides, data_dir)
    injected = {n: notebook_parameters(profile, n, run_dir, data_dir, overrides) for n in selected}

    # The kernel finds the data folder through $BANKING77_DIR (data_dir None: "look for one"), so
    # the machine's folder layout stays out of the rendered notebooks.
    kernel_env = dict(profile.env)
    if reads_the_hub(profile, overrides, data_dir) and HUB_OFFLINE_VARIABLES[0] in kernel_env:
        echo("no Banking77 folder found: the notebooks read the hub's copy (PolyAI/banking77); the models stay offline")
        kernel_env = {k: v for k, v in kernel_env.items() if k not in HUB_OFFLINE_VARIABLES}
    if data_dir is not None:
        kernel_env["BANKING77_DIR"] = str(data_dir)
        for values in injected.values():
            if "data_dir" in values:
                values["data_dir"] = None

    echo(f"profile {profile.name}: {profile.description}")
    echo(f"run folder: {run_dir}")
    outcomes: list[Outcome] = []
    ran_any = False
    with this_interpreter_kernel(kernel_env) as kernel_name:
        for position, notebook in enumerate(selected, 1):
            prefix = f"[{position}/{len(selected)}] {notebook}"
            reason = "forced" if force else incomplete_reason(run_dir, notebook, injected[notebook])
            if notebook == profiles.COMPARISON_NOTEBOOK and ran_any and reason is None:
                reason = "training results changed"
            if reason is None:
                echo(f"{prefix}: skipped, outputs complete ({_summary(run_dir, notebook)})")
                outcomes.append(Outcome(notebook, "skipped", 0.0))
                continue
            echo(f"{prefix}: running ({reason}) ...")
            start = time.perf_counter()
            execute_notebook(notebook, run_dir, injected[notebook], kernel_name)
            seconds = time.perf_counter() - start
            if notebook != profiles.COMPARISON_NOTEBOOK:
                try:
                    summary = _summary(run_dir, notebook)
                except results.ResultsError as error:
                    raise NotebookFailed(notebook, None, f"notebook {notebook} ran but left no valid "
                                                         f"results.json: {error}") from error
            else:
                summary = _summary(run_dir, notebook)
            ran_any = True
            echo(f"{prefix}: done in {seconds:.0f} s: {summary}")
            outcomes.append(Outcome(notebook, "ran", seconds, summary))
    if results.read_results(run_dir):
        write_readme(run_dir, profile, overrides)
    return outcomes


README_FILE = "README.md"


def write_readme(run_dir: str | Path, profile: profiles.Profile, overrides: dict | None = None) -> Path:
    """`<run_dir>/README.md`: what a reader of the run folder (e.g. on GitHub) sees first: the
    profile, when and on what hardware and code each notebook ran (read from its results.json),
    the comparison table, 04's findings, and the command that refreshes the folder."""
    from ..notebook.comparison import comparison_table, findings, hardware_label

    run_dir = Path(run_dir)
    records = results.read_results(run_dir)
    table = comparison_table(records).reset_index()
    versions = records[-1]["versions"]
    lines = [f"# Profile `{profile.name}`: {profile.description}", "",
             "The series as `python -m qlora_helpers.runners.run` executed it; each notebook below opens with its "
             "outputs (`.ipynb`, which GitHub renders, and `.html`).", "",
             "| notebook | ran (UTC) | hardware | commit |", "| --- | --- | --- | --- |"]
    lines += [f"| [{r['run_name']}]({r['run_name']}.ipynb) | {r['created_at'][:16].replace('T', ' ')} | "
              f"{hardware_label(r)} | {r.get('commit', 'not recorded')} |" for r in records]
    comparison = profiles.COMPARISON_NOTEBOOK
    ran = [r["run_name"] for r in records] + ([comparison] if (run_dir / f"{comparison}.ipynb").is_file() else [])
    # the command that remakes this folder: its notebooks when not the whole series, and the --set it ran with
    options = "".join([" --notebooks " + " ".join(name[:2] for name in ran) if len(ran) < len(profiles.NOTEBOOKS) else "",
                       *(f" --set {key}={value!r}" for key, value in (overrides or {}).items())])
    lines += ["", "Libraries: " + ", ".join(f"{name} {version}" for name, version in versions.items() if version) + ".",
              "", f"## Results ([{comparison}]({comparison}.ipynb))" if comparison in ran else "## Results", "",
              "| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in table.itertuples(index=False)]
    lines += ["", findings(records), "", "## Refresh", "", "From the folder that holds this one:", "", "```bash",
              f"python -m qlora_helpers.runners.run --profile {profile.name} --run-dir {run_dir.name}{options} --force",
              "```", ""]
    return atomic.write_text(run_dir / README_FILE, "\n".join(lines))


def comparison_text(run_dir: str | Path) -> str:
    """The comparison table as text, for the terminal."""
    import pandas as pd

    from ..notebook.comparison import comparison_table

    records = results.read_results(run_dir)
    if not records:
        return f"no results in {run_dir}"
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        return comparison_table(records).to_string()
