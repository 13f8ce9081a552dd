"""Tables from the notebook runs on the lent two-GPU machine (bench/lease_jobs.sh), read from their
results.json files, written to bench/results/notebooks_<tag>.md:

1. one GPU against two *through a notebook*: 03 of the reference run (reference/smollm2-t4, one
   GPU emulating a T4) and 03 again with both GPUs visible, whose training cell then trains on both
   (notebook/all_gpus.py) at the same effective batch;
2. notebook 01 on Gemma 3 270M under the T4 profile (fp16 autocast over fp32 weights): a finite loss
   and a sane accuracy, or not;
3. with --tag h200_t4_graphs: notebook 03's steps with its cuda_graphs parameter on against off, on
   one GPU in one lease (graphs_03.json, eager_03.json; bench/lease_jobs.sh notebook-graphs).

    python bench/notebook_runs.py          # after copying the lease's results.json files (see README)
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def row(name: str, r: dict) -> str:
    t = r["training"]
    losses = t["losses"]
    finite = "yes" if all(math.isfinite(x) for x in losses) else "no"
    gpus = f"{t.get('processes', 1)} x {t['batch_size']} x {t['gradient_accumulation']}"
    return (f"| {name} | {r['model_id']} | {r['method']} | {r['compute_dtype']} | {gpus} | "
            f"{t['examples_per_second']:.1f} | {t['train_seconds']:.0f} | {t['peak_memory_bytes'] / 2**30:.2f} | "
            f"{losses[0]:.2f} -> {losses[-1]:.2f} ({finite}) | {r['metrics']['accuracy']:.2%} | "
            f"{r['metrics']['macro_f1']:.3f} | {r['commit']} |")


HEADER = ("| run | model | method | compute | GPUs x batch x accum | examples/s | train s | peak GiB/GPU | "
          "loss first -> last (all finite) | test accuracy | macro-F1 | commit |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def graphs_lines(folder: Path) -> list[str]:
    """Notebook 03 with cuda_graphs=True against False, each trained and tested end to end."""
    read = lambda path: json.loads(path.read_text())  # noqa: E731
    graphs, eager = read(folder / "graphs_03.json"), read(folder / "eager_03.json")
    hw, versions = graphs["hardware"], graphs["versions"]
    speed = graphs["training"]["examples_per_second"] / eager["training"]["examples_per_second"]
    return [f"# Notebook 03 with CUDA graphs on {hw['count']}x {hw['name']}, emulating a {hw['emulating'].upper()}", "",
            "Libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + ". Notebook 03's steps "
            "as its cells call them (`experiment.load_data` to `save_results`, in one process: bench/lease_jobs.sh "
            "notebook-graphs) with the smollm2-t4 profile's parameters and `cuda_graphs` on, then off: real "
            "SmolLM2-135M weights, full Banking77 (10,003 training rows x 2 epochs, 3,080 test rows), one after "
            "the other on one GPU. examples/s and train s count the whole training, each batch shape's "
            "recording included.", "",
            *HEADER, row("03, cuda_graphs=True", graphs), row("03, cuda_graphs=False (the default)", eager), "",
            f"CUDA graphs against the default through the notebook: {speed:.2f}x the examples/s, "
            f"{100 * (graphs['metrics']['accuracy'] - eager['metrics']['accuracy']):+.2f} points of test accuracy "
            f"(one seed each), peak memory {graphs['training']['peak_memory_bytes'] / 2**30:.2f} against "
            f"{eager['training']['peak_memory_bytes'] / 2**30:.2f} GiB.", ""]


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="h200x2_t4")
    parser.add_argument("--reference", type=Path, default=REPO / "reference" / "smollm2-t4")
    args = parser.parse_args(argv)
    folder = REPO / "bench" / "results" / f"notebooks_{args.tag}"
    if (folder / "graphs_03.json").exists():
        text = "\n".join(graphs_lines(folder))
        (folder.parent / f"notebooks_{args.tag}.md").write_text(text)
        print(text)
        return text
    read = lambda path: json.loads(path.read_text())  # noqa: E731
    one = read(args.reference / "03_qlora_qwen2.5_7b" / "results.json")
    two = read(folder / "two_gpus_03.json")
    gemma = read(folder / "gemma_01.json")
    hw, versions = two["hardware"], two["versions"]
    lines = [f"# Notebooks on {hw['count']}x {hw['name']}, each emulating a {hw['emulating'].upper()} ({args.tag})", "",
             "Libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + ". Full Banking77 "
             "(10,003 training rows x 2 epochs, 3,080 test rows), each notebook through "
             "`python -m qlora_helpers.runners.run` (bench/lease_jobs.sh). GPUs x micro-batch x accumulation: "
             "the effective batch is the product.", "",
             *HEADER,
             row("03, one GPU (reference run)", one), row("03, both GPUs (training cell on all GPUs)", two),
             row("01 on Gemma 3 270M", gemma), "",
             f"Two GPUs against one through the notebook: {two['training']['examples_per_second'] / one['training']['examples_per_second']:.2f}x "
             f"the examples/s, {100 * (two['metrics']['accuracy'] - one['metrics']['accuracy']):+.2f} points of "
             "test accuracy at the same effective batch. Each GPU takes half of every batch, so a small "
             "model whose step time is set by kernel launches, not by the batch, gains little; see "
             "two_gpus_*.md for the 7B's shape.", ""]
    text = "\n".join(lines)
    (folder.parent / f"notebooks_{args.tag}.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
