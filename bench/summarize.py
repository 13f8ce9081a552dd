"""Every table of the benchmark from the results' JSON (no GPU): bench/results/SUMMARY.md, which gathers the runs'
own with the markdown beside them (sweeps, notebooks, two GPUs, T4 estimate, and records of code that is gone), and
the real-weights notebook tables (qwen_*.md, smollm2_*.md). Its fixed prose is bench/summary_text.md's."""
from __future__ import annotations

import json
import re
from pathlib import Path

from qlora_helpers import memory

GIB = 2**30
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
NOTEBOOK_TABLES = ("qwen_*", "smollm2_*")  # folders of notebooks' results.json files: a table each
NOTES = dict(re.findall(r"^@@ (\w+)\n(.*?)\n*(?=^@@ |\Z)", (REPO / "bench" / "summary_text.md").read_text(), re.S | re.M))
# How much more a later speed setup of one model may start with than the first (cuBLAS's workspace for the
# first backward, ~34 MiB, is made by then); more means a setup left memory behind, which an estimator
# cell measured later in the same process would count in its peak.
LEFTOVER_LIMIT = 64 * 2**20  # bytes


def _f(value, fmt="{:.1f}"):
    return "-" if value is None else fmt.format(value)


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def table(header: str, rows) -> list[str]:
    """A markdown table: `header` (columns joined by " | ") and one line per row of cells."""
    return [f"| {header} |", "|" + " --- |" * (header.count(" | ") + 1), *(f"| {' | '.join(map(str, r))} |" for r in rows)]


def load_runs(folder: Path = RESULTS) -> dict[str, dict]:
    """Every run*.json by tag, in the order the runs were made (run 10 after run 9, not after run 1)."""
    paths = sorted(folder.glob("run*.json"), key=lambda p: (int(re.match(r"run(\d+)", p.stem).group(1)), p.stem))
    return {p.stem: _read(p) for p in paths}


def speed_rows(runs: dict[str, dict]) -> list[dict]:
    """Speed rows with their run, commit, peak in GiB and ratio to the same run's tutorial recipe."""
    rows = []
    for tag, result in runs.items():
        tutorial = {r["method"]: r.get("examples_per_second") for r in result.get("speed", []) if r["config"] == "tutorial"}
        for r in result.get("speed", []):
            eps = r.get("examples_per_second")
            rows.append({**r, "run": tag, "commit": result.get("env", {}).get("commit"), "peak_gib": r["peak_bytes"] / GIB,
                         "vs_tutorial": eps / tutorial[r["method"]] if eps and tutorial.get(r["method"]) else None})
    return rows


def speed_table(rows: list[dict]) -> list[str]:
    return table("run | model | config | batch x accum | max len | ckpt | LoRA dropout | optimizer | ex/s | real tok/s | "
                 "x tutorial (same run) | peak GiB | reserved GiB | padding | median step s | MFU | HFU | useful MFU | "
                 "steps | status", [(
                     r["run"].split("_", 1)[0], f"{r['model'].replace('Qwen2.5-', '')} {r['method']}", r["config"],
                     f"{r['batch_size']} x {r['gradient_accumulation']}",
                     "128 (fixed)" if r.get("fixed_padding") else r["max_length"],
                     "on" if r["gradient_checkpointing"] else "off", r["lora_dropout"] if r["method"] != "full" else "-",
                     r["optimizer"], _f(r.get("examples_per_second")), _f(r.get("real_tokens_per_second"), "{:.0f}"),
                     _f(r["vs_tutorial"], "{:.2f}x"), f"{r['peak_gib']:.2f}",
                     _f(r["peak_reserved_bytes"] / GIB if r.get("peak_reserved_bytes") else None, "{:.2f}"),
                     _f(r.get("padding_share"), "{:.0%}"),
                     _f(r.get("median_step_seconds"), "{:.3f}"), _f(r.get("mfu"), "{:.1%}"), _f(r.get("hfu"), "{:.1%}"),
                     _f(r.get("useful_mfu"), "{:.1%}"), r.get("timed_steps", 0), r["status"]) for r in rows])


def profile_table(rows: list[dict]) -> list[str]:
    profiled = [(r, r["profile"]) for r in rows if r.get("profile", {}).get("gpu_ops")]
    return ["### Where a step's time goes (torch.profiler, one step)", "", *table(
        "run | model | config | GPU ops per step | GPU busy ms | step wall ms (profiled) | GPU busy",
        [(r["run"].split("_", 1)[0], f"{r['model']} {r['method']}", r["config"], f"{p['gpu_ops']:,}",
          f"{p['gpu_busy_ms']:.0f}", f"{p['profiled_step_wall_ms']:.0f}",
          f"{p['gpu_busy_ms'] / p['profiled_step_wall_ms']:.0%}") for r, p in profiled]), ""] if profiled else []


def leftover_bytes(result: dict) -> int:
    """The most memory (bytes) a speed setup of a run started with above the first setup of the same model:
    what earlier setups left allocated (run 8: the CUDA graphs of 54f5065, fixed in fd55589)."""
    first: dict[str, int] = {}
    return max([start - first.setdefault(r["model"], start) for r in result.get("speed", [])
                if (start := r.get("start_allocated_bytes")) is not None], default=0)


def set_aside_reasons(runs: dict[str, dict]) -> dict[str, str]:
    """Runs whose estimator cells are left out of the table, each with why: they measured memory an earlier
    setup left behind, or something else the JSON cannot show (summary_text.md's `set_aside_<tag>`)."""
    reasons = {tag: f"measured after a setup that left {left / 2**20:.0f} MiB allocated into the next one (see "
                    "\"CUDA graphs against the eager stack\" above)" for tag, result in runs.items()
               if result.get("estimator") and (left := leftover_bytes(result)) > LEFTOVER_LIMIT}
    return {**reasons, **{tag: NOTES[f"set_aside_{tag}"] for tag in runs if f"set_aside_{tag}" in NOTES}}


def estimator_rows(runs: dict[str, dict]) -> list[dict]:
    """One measured row per model x method x checkpointing (the latest run's; run 1's cells were the calibration, and
    runs in `set_aside_reasons` measured something else), with the estimator's prediction as it is now."""
    latest: dict[tuple, dict] = {}
    set_aside = set_aside_reasons(runs)
    for tag, result in runs.items():
        if tag.startswith("run1_") or tag in set_aside:
            continue
        for r in result.get("estimator", []):
            if r.get("status") == "ok" and r["model"].startswith("Qwen2.5"):
                latest[(r["model"], r["method"], bool(r["gradient_checkpointing"]))] = {**r, "run": tag}
    rows = []
    order = lambda key: (memory.QWEN2_5[key[0][8:]].linear_params, ("full", "lora", "qlora").index(key[1]), key[2])
    for (model, method, _), r in sorted(latest.items(), key=lambda kv: order(kv[0])):
        dropout = r.get("lora_dropout", 0.05 if method != "full" else 0.0)  # runs 2-3: the default then
        est = memory.estimate(model[8:], method, batch_size=r["batch_size"], seq_len=r["seq_len"],
                              gradient_checkpointing=r["gradient_checkpointing"], optimizer=r["optimizer"],
                              lora_dropout=dropout)
        rows.append({**r, "lora_dropout": dropout, "estimated_footprint_bytes": est.footprint_bytes,
                     "estimated_peak_bytes": est.peak_bytes,
                     "footprint_error": est.footprint_bytes / r["measured_footprint_bytes"] - 1,
                     "peak_error": est.peak_bytes / r["measured_peak_bytes"] - 1})
    return rows


def _demoted(path: Path) -> list[str]:
    """A generated markdown file with its headings one level down, to sit under this file's."""
    return ["#" + line if line.startswith("#") else line for line in path.read_text().splitlines()] + [""]


def step_cost_section(current: dict[str, dict], results_dir: Path) -> list[str]:
    """Runs of the code as committed (each records its commit and versions): the step-cost levers against
    today's default, then the records of graphs against eager, Unsloth, and runs whose files were lost."""
    lines = ["## Step cost on today's code: levers against the QLoRA default (issue 12)", "", NOTES["step_cost"], ""]
    lines += [f"- {tag}: commit {env.get('commit')}, {env.get('gpu')}, torch {env.get('torch')}, transformers "
              f"{env.get('transformers')}, peft {env.get('peft')}, bitsandbytes {env.get('bitsandbytes')}."
              for tag, env in ((tag, result.get("env", {})) for tag, result in current.items())]
    rows, levers = speed_rows(current), []
    for r in rows:
        base = next((b for b in rows if b["run"] == r["run"] and b["model"] == r["model"]
                     and b["config"] == "library_default" and b.get("examples_per_second")), {})
        eps, steady, base_steady = (r.get("examples_per_second"), r.get("steady_examples_per_second"),
                                    base.get("steady_examples_per_second"))
        levers.append((r["run"], f"{r['model']} {r['method']}", r["config"], r.get("timed_steps", 0),
                       r.get("distinct_shapes", "-"), _f(eps), f"{eps / base['examples_per_second']:.2f}x" if eps and base else "-",
                       _f(steady), f"{steady / base_steady:.2f}x" if steady and base_steady else "-",
                       f"{r['peak_gib']:.2f}", r["status"]))
    lines += ["", "Each lever against `library_default` of the same run and model:", "", *table(
        "run | model | config | timed steps | shapes | ex/s | x library_default | steady ex/s | "
        "x library_default (steady) | peak GiB | status", levers), "", *speed_table(rows), "", *profile_table(rows)]
    lines += unsloth_table(current, results_dir)
    # records of code that is gone (bench/README.md): graphs against eager, Unsloth, runs whose files were lost
    for record in [results_dir / "graphs_check.md", results_dir / "unsloth_h200_t4.md",
                   *sorted(results_dir.glob("run*_transcript.md"))]:
        lines += _demoted(record)
    return lines


def notebook_results_table(folder: Path) -> str:
    """`<folder>.md`: the notebooks' own results.json files in `folder` (one per run, `<name>.json`), with the
    mean test accuracy of each notebook's runs at its default learning rate, apart for each setting of a step-cost
    lever that differs among them (and each run's commit, where they differ); returns the text. ValueError if the
    runs differ in GPU or library versions (the header names one of each)."""
    runs = {p.stem: _read(p) for p in sorted(folder.glob("*.json"))}
    first_name, first = next(iter(runs.items()))
    hardware, versions = first["hardware"], first["versions"]
    differ = [name for name, r in runs.items() if (r["hardware"]["name"], r["versions"]) != (hardware["name"], versions)]
    if differ:  # the header names one GPU and one set of libraries for every row
        raise ValueError(f"{folder}: {', '.join(differ)} ran on another GPU or other library versions than "
                         f"{first_name}; give them a folder (and table) of their own")
    by_commit = len({r.get("commit") for r in runs.values()}) > 1  # a commit column where the runs' commits differ
    levers = {name: r["training"].get("step_levers") or {} for name, r in runs.items()}
    notebooks: dict[str, list[str]] = {}  # notebook -> its runs here
    for name, r in runs.items():
        notebooks.setdefault(r["run_name"], []).append(name)
    differing = {notebook: sorted({k for n in names for k in levers[n] if len({repr(levers[o].get(k)) for o in names}) > 1})
                 for notebook, names in notebooks.items()}  # the step-cost levers that differ among a notebook's runs
    rows, by_notebook = [], {}
    for name, r in runs.items():
        t, asked = r["training"], r["config"]["parameters"]["learning_rate"]
        if asked is None:
            keys = differing[r["run_name"]]
            group = r["run_name"] + (" with " + ", ".join(f"{k}={levers[name].get(k)}" for k in keys) if keys else "")
            by_notebook.setdefault(group, []).append(r["metrics"]["accuracy"])
        rows.append((name, r["run_name"][:2], r["method"], r["config"]["parameters"]["seed"],
                     f"{t['peak_learning_rate']:.3g} (by size)" if asked is None else f"{asked:.3g} (set)" + (
                         f", ended {t['peak_learning_rate']:.3g}" if t['peak_learning_rate'] != asked else ""),
                     f"{r['metrics']['accuracy']:.2%}", f"{r['metrics']['macro_f1']:.3f}", f"{t['train_seconds']:.0f}",
                     f"{t['examples_per_second']:.1f}", f"{t['peak_memory_bytes'] / GIB:.2f}", len(t.get("recoveries", [])))
                    + ((r.get("commit") or "-")[:7],) * by_commit)
    lines = [f"# {folder.name}: notebooks on {first['model_id']} ({first['model_kind']})", "",
             f"Generated by bench/summarize.py from {folder.name}/*.json. {hardware['name']}"
             f"{', emulating a ' + hardware['emulating'].upper() if hardware.get('emulating') else ''}; "
             + ", ".join(f"{k} {v}" for k, v in versions.items()) + ". Each run trained alongside the others on the one GPU,"
             " so seconds and examples/s are shared-GPU figures.", "",
             *table("run | notebook | method | seed | peak learning rate | test accuracy | macro-F1 | train s | ex/s | "
                    "peak GiB | rollbacks" + " | commit" * by_commit, rows), "",
             *(f"- {stem} at its default learning rate: mean test accuracy {sum(a) / len(a):.2%} over "
               f"{len(a)} seed{'s' * (len(a) > 1)} "
               f"(lowest {min(a):.2%})." for stem, a in by_notebook.items())]
    text = "\n".join(lines) + "\n"
    folder.with_suffix(".md").write_text(text)
    return text


def unsloth_table(current: dict[str, dict], results_dir: Path) -> list[str]:
    """Issue 27: the QLoRA defaults before it (`levers_off`), today's and today's with fused AdamW against Unsloth's
    row (bench/unsloth_row.py) measured in the same lease at the same commit, GPU and micro-batch."""
    rows = []
    for path in sorted(results_dir.glob("unsloth_*.json")):
        peer = _read(path)
        run = next((tag for tag, r in current.items() if r["env"].get("commit") == peer.get("commit")
                    and r["env"].get("gpu") == peer.get("hardware", {}).get("name") and r.get("speed")), None)
        if run is None or peer.get("status") != "ok":
            continue
        ours = {s["config"]: s for s in current[run]["speed"] if s["method"] == "qlora" and s["status"] == "ok"}
        old = ours.get("levers_off", {}).get("examples_per_second")  # a run without the old default: no ratio to it
        for name, eps, peak in [*((c, ours[c]["examples_per_second"], ours[c]["peak_bytes"] / GIB) for c in ours),
                                (f"Unsloth {peer['versions']['unsloth']} ({path.name})", peer["examples_per_s"],
                                 peer["peak_memory_gib"])]:
            rows.append((run, name, f"{eps:.1f}", f"{eps / old:.2f}x" if old else "-", f"{eps / peer['examples_per_s']:.2f}x",
                         f"{peak:.2f}"))
    return ["", NOTES["unsloth_same_run"], "", *table("run | setup | ex/s | x levers_off | x Unsloth | peak GiB", rows), ""] if rows else []


def main(results_dir: Path = RESULTS, out_path: Path | None = None) -> str:
    """Rebuild SUMMARY.md from every table; return its text."""
    runs = load_runs(results_dir)
    # runs that record their commit measured the code as committed then; runs 1-3 predate that record
    current = {tag: r for tag, r in runs.items() if r.get("env", {}).get("commit")}
    lines = ["# Benchmark summary (generated by bench/summarize.py from bench/results/)", "",
             "## Current code: defaults chosen on real weights", "", NOTES["header"], ""]
    for folder in sorted(p for pattern in NOTEBOOK_TABLES for p in results_dir.glob(pattern) if p.is_dir()):
        notebook_results_table(folder)
    for pattern in (*(f"{pattern}.md" for pattern in NOTEBOOK_TABLES), "sweep_*.md", "notebooks_*.md", "two_gpus_*.md",
                    "t4_estimate.md"):
        lines += [line for generated in sorted(results_dir.glob(pattern)) for line in _demoted(generated)]
    lines += step_cost_section(current, results_dir) if current else []
    lines += _demoted(results_dir / "older_runs_1-3.md") + ["## 7B QLoRA footprint", ""]  # a record: code that is gone
    shape = memory.QWEN2_5["7B"]
    floor = shape.linear_params // 2 + 2 * (shape.embedding_params + shape.head_params(77))
    for tag, result in runs.items():
        if load := result.get("loads", {}).get("Qwen2.5-7B:qlora"):
            lines.append(NOTES["footprint"].format(
                tag=tag, footprint=load["footprint_bytes"], over_floor=load["footprint_bytes"] / floor - 1, floor=floor,
                allocated=load["allocated_after_bytes"] / 1e9, load_peak=load["load_peak_bytes"] / 1e9,
                dtypes=load["param_dtypes"]))
        if (up := result.get("upcast")) and up["load"]["footprint_bytes"] > 1e9:  # runs 1 and 3 (older code)
            load, run = up["load"], up["run"]
            lines.append(NOTES["upcast"].format(
                tag=tag, footprint=load["footprint_after_adapters_bytes"], allocated=load["allocated_after_bytes"] / 1e9,
                load_peak=load["load_peak_bytes"] / 1e9, batch=run["batch_size"], dtypes=load["param_dtypes"],
                outcome=run["status"] + (f" ({run.get('error', '')[:160]})" if run["status"] != "ok"
                                         else f", peak {run['peak_bytes'] / GIB:.2f} GiB")))
    lines.append("")
    if estimated := estimator_rows(runs):
        lines += ["## Estimator (qlora_helpers.memory.estimate) vs measured, fixed shape", "", NOTES["estimator"], ""]
        for tag, why in set_aside_reasons(runs).items():
            cells = ", ".join(f"{r['model']} {r['method']} {r['measured_peak_bytes'] / GIB:.2f} GiB"
                              for r in runs[tag]["estimator"] if r.get("status") == "ok")
            lines.append(f"- Set aside: {tag} ({cells}), {why}.")
        lines += ["", *table("run | model | method | optimizer | ckpt | LoRA dropout | footprint meas GB | est GB | "
                             "error | peak meas GiB | est GiB | error", [(
                                 r["run"], r["model"], r["method"], r["optimizer"], "on" if r["gradient_checkpointing"] else "off",
                                 r["lora_dropout"], f"{r['measured_footprint_bytes'] / 1e9:.3f}",
                                 f"{r['estimated_footprint_bytes'] / 1e9:.3f}", f"{r['footprint_error']:+.2%}",
                                 f"{r['measured_peak_bytes'] / GIB:.2f}", f"{r['estimated_peak_bytes'] / GIB:.2f}",
                                 f"{r['peak_error']:+.1%}") for r in estimated]), ""]
    text = "\n".join(lines) + "\n"
    Path(out_path or results_dir / "SUMMARY.md").write_text(text)
    return text
