"""Run one training notebook's steps as a script, data-parallel on every visible GPU.

Kaggle's "GPU T4 x2" gives two T4s; a notebook kernel is one process and uses one. This runs the
same steps (experiment.py: data, model, tokens, training, evaluation, figures, results file) with
the same profile parameters, once per GPU under a launcher:

    accelerate launch --num_processes 2 -m qlora_helpers.runners.train_all_gpus \
        --profile kaggle-t4 --notebook 03_qlora_qwen2.5_7b

Each process holds the whole (4-bit) model on its own GPU, gradients are averaged every step,
evaluation is sharded and gathered, and only the main process writes
`<run_dir>/<notebook>/results.json` and the PNGs, which 04_comparison then reads. Without a
launcher it runs in one process, like the notebook does. The effective batch stays the parameters'
batch_size x gradient_accumulation on any number of GPUs (distributed.split_batch). A notebook
that sees several GPUs does the same from its training cell (notebook/all_gpus.py).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..distributed import end_process_group, is_main_process, world_size
from ..notebook import experiment
from ..notebook.parameters import NotebookParameters
from . import profiles, runner


def run_notebook_steps(params: NotebookParameters) -> dict:
    bank = experiment.load_data(params)
    loaded = experiment.build_model(params, bank)
    train_rows, test_rows = experiment.tokenize_splits(params, bank, loaded)
    stats = experiment.train_model(params, loaded, train_rows)
    result = experiment.evaluate_on_test(params, loaded, test_rows, bank)
    experiment.plot_confusions(params, result, bank.label_names)
    return experiment.save_results(params, loaded, stats, result, bank)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="kaggle-t4", help=f"one of {', '.join(profiles.PROFILES)}")
    parser.add_argument("--notebook", required=True,
                        help=f"one of {', '.join(profiles.TRAINING_NOTEBOOKS)} (or its number, e.g. 03)")
    parser.add_argument("--run-dir", type=Path, help="default: runs/<profile>")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a notebook parameter, e.g. --set max_train_samples=2000")
    args = parser.parse_args(argv)
    from .run import parse_overrides

    try:
        overrides = parse_overrides(args.set)
        profile = profiles.get_profile(args.profile)
        notebook = profiles.resolve_notebooks([args.notebook])[0]
        if notebook not in profiles.TRAINING_NOTEBOOKS:
            raise profiles.UnknownNameError(f"--notebook {args.notebook}: a training notebook is one of "
                                            f"{', '.join(profiles.TRAINING_NOTEBOOKS)}")
        for name, value in profile.env.items():  # what the runner gives the kernel (offline, T4 emulation)
            os.environ.setdefault(name, value)
        run_dir = (args.run_dir or runner.default_run_dir(profile.name)).resolve()
        values = runner.notebook_parameters(profile, notebook, run_dir, runner.local_data_dir(profile, overrides),
                                            overrides)  # checks the overrides (unknown keys, types, ranges)
    except (ValueError, runner.RunnerError) as error:  # bad input (ParameterError and UnknownNameError too)
        parser.error(str(error))
    record = run_notebook_steps(NotebookParameters(notebook=notebook, **values))
    if is_main_process():
        print(f"{notebook} on {world_size()} process(es): accuracy {record['metrics']['accuracy']:.2%}, "
              f"{record['training']['examples_per_second']:.1f} examples/s")
    end_process_group()


if __name__ == "__main__":
    main()
