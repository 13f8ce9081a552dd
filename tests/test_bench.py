"""The benchmark (`python bench/cli.py`): `speed` in its CPU mode (tiny shapes, a few steps) runs end to end
and writes its JSON; `summarize` rebuilds every table and SUMMARY.md from the committed results."""
import argparse
import importlib.util
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest

from qlora_helpers import defaults, modeling, training

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    """bench/<name>.py as a module (bench/cli.py first: it puts the repository on sys.path for `bench.*`)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    import torch

    out = tmp_path_factory.mktemp("bench")
    cli = _load("cli")
    threads = torch.get_num_threads()  # its CPU mode sets 1 thread for the process: give it back after
    common = ["speed", "--device", "cpu", "--out", str(out), "--models-dir", str(out / "models"),
              "--work-dir", str(out / "runs"), "--steps", "3", "--warmup", "1", "--est-steps", "2", "--rows", "160"]
    results = cli.main(common + ["--sections", "env,speed", "--cells", "7B:qlora,0.5B:full,1.5B:lora", "--tag", "cpu_test",
                                 "--only-configs", "tutorial,library_default,lever_half_checkpointing"])
    estimator = cli.main(common + ["--sections", "estimator", "--cells", "0.5B:qlora", "--tag", "cpu_test_est"])
    results["estimator"] += estimator["estimator"]
    torch.set_num_threads(threads)  # the tests after this one train real models on every core
    return out, results


def test_cpu_mode_runs_every_section(cpu_run):
    out, results = cpu_run
    assert not results.get("errors"), results.get("errors")
    written = json.loads((out / "cpu_test.json").read_text())
    assert written["profile"] == "cpu" and set(written["section_seconds"]) == {"env", "speed"}
    assert written["env"]["commit"] and written["env"]["torch"]

    runs = {(r["model"], r["config"]): r for r in results["speed"]}
    for model in ("tiny-7B", "tiny-0.5B", "tiny-1.5B"):
        tutorial = runs[(model, "tutorial")]
        assert tutorial["fixed_padding"] and tutorial["status"] == "ok" and tutorial["batch_size"] == 8
        assert tutorial["padding_share"] > 0.7  # Banking77 lengths padded to 128
        default = runs[(model, "library_default")]
        assert default["status"] == "ok" and default["examples_per_second"] > 0
        assert default["padding_share"] < tutorial["padding_share"]
        assert all(math.isfinite(v) for v in default["losses"])
    assert runs[("tiny-7B", "library_default")]["batch_size"] == defaults.for_method("qlora").batch_size
    half = runs[("tiny-7B", "lever_half_checkpointing")]
    assert half["status"] == "ok" and half["checkpoint_every"] == 2 and "hfu" not in half  # no MFU ceiling on CPU


def test_cpu_estimator_footprints_are_exact(cpu_run):
    _, results = cpu_run
    rows = results["estimator"]
    assert {(r["model"], r["method"]) for r in rows} >= {("tiny-7B", "qlora"), ("tiny-0.5B", "full"),
                                                         ("tiny-1.5B", "lora"), ("tiny-0.5B", "qlora")}
    assert all(r["status"] == "ok" and r["footprint_error"] == 0 for r in rows)


def test_step_flops_follow_the_stated_formula():
    _load("cli")
    from bench.timing import step_flops
    from qlora_helpers.memory import QWEN2_5

    shape = QWEN2_5["7B"]
    n, n_lora = shape.matmul_params(77), shape.lora_params(16)
    attention = 4 * 8 * 32 * 32 * shape.hidden_size * shape.num_layers
    model, hardware = step_flops(shape, "qlora", [(8, 32, 200)], checkpointing=True, lora_r=16)
    tokens = 8 * 32
    assert model == pytest.approx(4 * n * tokens + 6 * n_lora * tokens + 3 * attention)
    assert hardware == pytest.approx(model + 2 * n * tokens + 2 * n_lora * tokens + attention)
    full, _ = step_flops(shape, "full", [(8, 32, 200)], checkpointing=False, lora_r=16)
    assert full == pytest.approx(6 * n * tokens + 3 * attention)


def test_each_lever_changes_the_default_as_its_name_says():
    """The levers are timed in the same run against `levers_off`, the defaults before issue 27 (no graphs,
    every micro-batch checkpointed, AdamW without the fused kernel outside QLoRA): each must be that with its
    own change and nothing else (a lever once trained another batch than the default's); `library_default`
    is what the notebooks train."""
    _load("cli")
    from bench.speed import setups

    qlora = {s.name: s for s in setups("qlora")}
    default, off = qlora["library_default"], qlora["levers_off"]
    assert default.train == training.default_train_config("qlora")
    assert default.train.cuda_graphs is None and default.train.checkpoint_above_tokens == "auto"
    assert off.train.cuda_graphs is False and off.train.checkpoint_above_tokens is None
    assert off.train.optimizer == default.train.optimizer == "paged_adamw_8bit"
    assert {s.name: s.train.batch_size for s in qlora.values() if s.name != "tutorial"} == {
        name: default.train.batch_size for name in qlora if name != "tutorial"}
    assert qlora["lever_fused_adamw"].train == replace(off.train, optimizer="adamw_torch_fused")
    assert not qlora["lever_no_checkpointing"].checkpointing and qlora["lever_half_checkpointing"].checkpoint_every == 2
    assert qlora["lever_cuda_graphs"].train == replace(off.train, cuda_graphs=True)
    assert qlora["lever_cuda_graphs_fused_adamw_ckpt_long"].train.checkpoint_above_tokens == 64 * 16  # 7B on a T4
    assert qlora["lever_default_fused_adamw"].train == replace(default.train, optimizer="adamw_torch_fused")
    assert qlora["tutorial"].padded_to_128 and qlora["tutorial"].train.batch_size == 8
    assert qlora["tutorial"].train.cuda_graphs is False and qlora["tutorial"].train.checkpoint_above_tokens is None
    full = {s.name: s for s in setups("full")}
    assert list(full) == ["tutorial", "library_default", "levers_off"]
    assert full["levers_off"].train.optimizer == "adamw_torch" and full["library_default"].train.optimizer == "adamw_torch_fused"


def test_summary_rebuilds_from_committed_results(tmp_path):
    summarize = _load("summarize")
    text = summarize.main(out_path=tmp_path / "SUMMARY.md")
    assert "## Training speed and memory (T4 profile on the H200)" in text
    assert "b128_dropout0:long" in text and "+0.015% vs the floor" in text
    # runs that record their commit (today's code) get their own section, levers against the default
    current, older = text.split("## Older code")
    assert "| run5_h200_t4 | Qwen2.5-7B qlora | lever_compiled_fused_adamw | 22 | 5 | 132.8 | 1.27x |" in current
    assert "| run5 |" not in older.split("## 7B QLoRA footprint")[0]
    # Unsloth's row stands against our default measured at its commit, not against another run's
    unsloth = json.loads((summarize.RESULTS / "unsloth_h200_t4.json").read_text())
    ours = json.loads((summarize.RESULTS / "run6_h200_t4.json").read_text())
    assert unsloth["commit"] == ours["env"]["commit"]
    default = next(r["examples_per_second"] for r in ours["speed"] if r["config"] == "library_default")
    assert (f"| {unsloth['examples_per_s']:.1f} | {unsloth['peak_memory_gib']:.2f} | {default:.1f} (run6_h200_t4) | "
            f"{unsloth['examples_per_s'] / default:.2f}x | ok |") in current
    # each estimator row names the run that measured it: the latest one per model and method
    estimator = text.split("## Estimator")[1]
    assert "| run6_h200_estimator | Qwen2.5-7B | full |" in estimator and "| run2_" not in estimator
    # run 8's cells came after CUDA-graph setups that left memory allocated (54f5065): set aside, named;
    # run 9's came after graphs that release what they held (fd55589): the latest 7B QLoRA cell
    assert "| run9_h200_t4 | Qwen2.5-7B | qlora |" in estimator and "| run8_" not in estimator
    assert "- Set aside: run8_h200_t4 (Qwen2.5-7B qlora 5.67 GiB), measured after a setup that left 430 MiB" in estimator
    # run 10's came after a setup whose checkpointing limit the benchmark did not undo (then): named, with why
    assert "- Set aside: run10_h200_t4 (Qwen2.5-7B qlora 10.62 GiB), measured while the checkpointing limit" in estimator
    assert "| run10_" not in estimator
    runs = list(summarize.load_runs())
    assert runs.index("run10_h200_t4") > runs.index("run9_h200_t4") > runs.index("run2_h200_t4")  # made in this order
    assert (tmp_path / "SUMMARY.md").read_text() == text


def test_readme_cuda_graph_ratios_are_the_summarys():
    """bench/README.md's CUDA-graph rows quote ratios, each followed by the run it came from; each must be
    one SUMMARY.md computed for that run."""
    readme = (REPO / "bench" / "README.md").read_text().splitlines()
    rows = [line for line in readme if line.startswith("| CUDA graphs")]
    summary = (REPO / "bench" / "results" / "SUMMARY.md").read_text().splitlines()
    quoted = []
    for row in rows:
        for cell in row.split("|")[2:-1]:
            for ratios, run in re.findall(r"((?:[^()]*?\d+\.\d+x)+)[^()]*\(run (\d+)\)", cell):
                quoted += [(ratio, run) for ratio in re.findall(r"(\d+\.\d+)x", ratios)]
    assert len(quoted) == 11
    lines_of = {run: [line for line in summary if line.startswith(f"| run{run}_")] for _, run in quoted}
    assert [(r, run) for r, run in quoted if not any(f"| {r}x |" in line for line in lines_of[run])] == []


def test_leftover_bytes_compares_each_setup_with_the_first_of_its_model():
    summarize = _load("summarize")
    mib = 2**20

    def run(*starts):
        return {"estimator": [{}], "speed": [{"model": model, "start_allocated_bytes": start * mib}
                                            for model, start in starts]}

    steady = run(("7B", 4000), ("7B", 4034), ("0.5B", 500), ("0.5B", 534))  # cuBLAS's first workspace only
    leaky = run(("7B", 4000), ("7B", 4034), ("7B", 4450))
    other_model = run(("7B", 4000), ("0.5B", 500))  # a smaller model starts lower: not a leftover
    assert summarize.leftover_bytes(steady) == 34 * mib and summarize.leftover_bytes(other_model) == 0
    assert list(summarize.set_aside_reasons({"a": steady, "b": leaky, "c": other_model})) == ["b"]
    assert "left 450 MiB allocated" in summarize.set_aside_reasons({"b": leaky})["b"]


def test_sweep_cpu_mode_records_curves_and_chooses_by_time_to_accuracy(tmp_path):
    """bench/sweep.py end to end on the tiny Qwen2: two candidates of one method, one of them under
    a second seed too, their validation curves and solo throughput, the report (table, per-seed
    summary, plot) and the choice."""
    sweep = _load("sweep")
    sweep.main(["run", "--device", "cpu", "--model", "offline:tiny-qwen2", "--candidates",
                "lora_b32_lr1e-3,lora_b64_lr2e-3", "--seeds", "42,7", "--max-train", "200", "--max-validation", "100",
                "--eval-every", "64", "--solo-steps", "2", "--solo-warmup", "1", "--tag", "cpu",
                "--out-dir", str(tmp_path), "--work-dir", str(tmp_path / "work")])
    folder = tmp_path / "sweep_cpu"
    records = sweep.load_sweep(folder)
    assert sorted(r["candidate"]["name"] for r in records) == ["lora_b32_lr1e-3", "lora_b32_lr1e-3_seed7",
                                                               "lora_b64_lr2e-3", "lora_b64_lr2e-3_seed7"]
    assert {(r["candidate"]["base"], r["candidate"]["seed"]) for r in records} == {
        (name, seed) for name in ("lora_b32_lr1e-3", "lora_b64_lr2e-3") for seed in (42, 7)}
    for record in records:
        assert record["status"] == "done" and record["solo"]["examples_per_second"] > 0
        examples = [p["examples"] for p in record["curve"]]
        assert examples == sorted(examples) and examples[-1] >= 2 * record["train_rows"] - 64  # 2 epochs
    chosen = sweep.choose(folder)["lora"]
    best = max(max(p["validation_accuracy"] for p in r["curve"]) for r in records)
    assert chosen["target"] == best - 0.005
    assert chosen["solo_seconds"] == min(t for t in (sweep.time_to(r, chosen["target"]) for r in records) if t)
    sweep.main(["report", str(folder)])
    text = (tmp_path / "sweep_cpu.md").read_text()
    assert (tmp_path / "sweep_cpu.png").stat().st_size > 0 and "| lora_b64_lr2e-3_seed7 |" in text
    by_seed = {r["candidate"]["seed"]: r["curve"][-1]["validation_accuracy"] for r in records
               if r["candidate"]["base"] == "lora_b64_lr2e-3"}
    assert (f"- lora_b64_lr2e-3: final validation accuracy {by_seed[7]:.2%} (seed 7), {by_seed[42]:.2%} (seed 42); "
            f"mean {(by_seed[42] + by_seed[7]) / 2:.2%};") in text


def test_t4_estimate_batches_every_row_once_and_pads_as_each_recipe_does():
    from bench import t4_estimate

    rows = t4_estimate.epoch_lengths()
    assert len(rows) == 10_003
    tutorial = t4_estimate.batches(rows, 8, pad_to=128, grouped=False)
    grouped = t4_estimate.batches(rows, 64, pad_to=None, grouped=True)
    for steps in (tutorial, grouped):
        assert sum(b for b, _, _ in steps) == 10_003 and sum(r for _, _, r in steps) == rows.sum()
        assert all(length >= real / batch for batch, length, real in steps)
    assert {length for _, length, _ in tutorial} == {128}
    assert all(length % 8 == 0 for _, length, _ in grouped)
    # grouping by length pads far less than padding every row to 128
    assert sum(b * l for b, l, _ in grouped) < sum(b * l for b, l, _ in tutorial) / 5


def test_partial_checkpointing_recomputes_every_other_layer(tiny_qwen2):
    """The half-checkpointing lever checkpoints layers 0, 2, 4, ... and only those; off clears all."""
    _load("cli")
    from bench.speed import set_checkpointing
    loaded = modeling.load_model(tiny_qwen2, "qlora")
    layers = modeling.decoder_layers(loaded.model)
    assert len(layers) >= 2
    set_checkpointing(loaded.model, True, every=2)
    assert [layer.gradient_checkpointing for layer in layers] == [i % 2 == 0 for i in range(len(layers))]
    set_checkpointing(loaded.model, False)
    assert not any(layer.gradient_checkpointing for layer in layers)


def test_a_lifted_cap_stays_lifted_through_a_model_load(monkeypatch):
    """load_model applies the T4 profile's 14.5 GiB cap itself when $QLORA_EMULATE_GPU=t4: the
    estimator cells that cannot fit a T4 (7B full / LoRA) then ran out of memory at 14.5 GiB on the
    device although the cap had been lifted. Around a load the cap is now put back as the benchmark
    set it: lifted (the variable hidden meanwhile), or the T4 cap above the cell's baseline."""
    import types

    import torch

    _load("cli")
    from bench.timing import MemoryCap
    from qlora_helpers import emulation

    total, fractions = 100 * 2**30, []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(total_memory=total))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device=None: fractions.append(f))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 2 * 2**30)
    monkeypatch.setenv(emulation.ENV_VAR, "t4")

    def load_model_stand_in():  # what modeling.load_model does first
        return emulation.emulated_gpu()

    cap = MemoryCap(cap_bytes=int(14.5 * 2**30))
    cap.start_cell()
    with cap.loading():
        assert load_model_stand_in() == "t4"
    assert fractions[-1] == pytest.approx(16.5 / 100)  # the T4 cap above the 2 GiB baseline
    cap.lift()
    with cap.loading():
        assert load_model_stand_in() is None  # no T4 cap applied during the load
    assert fractions[-1] == 1.0 and emulation.emulated_gpu() == "t4"


def test_notebook_tables_state_their_runs_own_ratios():
    """notebooks_*.md are records (made by bench/notebook_runs.py, as of commit 4a53963) of the results.json
    files beside them; the ratios they state are those files' own."""
    def training(path):
        return json.loads(path.read_text())["training"]

    results_dir = REPO / "bench" / "results"
    graphs, eager = (training(results_dir / "notebooks_h200_t4_graphs" / f"{m}_03.json") for m in ("graphs", "eager"))
    ratio = graphs["examples_per_second"] / eager["examples_per_second"]
    assert f"through the notebook: {ratio:.2f}x the examples/s" in (results_dir / "notebooks_h200_t4_graphs.md").read_text()
    two = training(results_dir / "notebooks_h200x2_t4" / "two_gpus_03.json")
    one = training(results_dir / "notebooks_h200x2_t4" / "one_gpu_03.json")
    ratio = two["examples_per_second"] / one["examples_per_second"]
    assert f"Two GPUs against one through the notebook: {ratio:.2f}x" in (results_dir / "notebooks_h200x2_t4.md").read_text()


def test_a_setup_leaves_the_model_as_it_found_it(tiny_qwen2, tmp_path):
    """run_setup undoes what its setup changed for training (release_training_state): run 10's estimator
    cell, measured after a setup that limited checkpointing, trained its 16 x 64 batches without any
    because the limit stayed on. Under accumulation the logged loss is the micro-batches' mean (~ln 77)."""
    from dataclasses import replace

    _load("cli")
    from bench.speed import Cell, Setup, run_setup
    from bench.timing import MemoryCap
    from bench.workload import synthetic_dataset
    from qlora_helpers import memory

    loaded = modeling.load_model(tiny_qwen2, "lora")
    cell = Cell(memory.QWEN2_5["0.5B"], loaded, {}, {})  # the shape: FLOPs only
    train = replace(training.default_train_config("lora"), batch_size=4, gradient_accumulation=2,
                    checkpoint_above_tokens=32)
    data = synthetic_dataset(32, loaded.tokenizer.vocab_size, max_length=16)
    record = run_setup(cell, data, Setup("limited", train, True, 0.0), steps=2, warmup=0, cap=MemoryCap(),
                       out_dir=tmp_path)
    assert record["status"] == "ok" and record["checkpoint_above_tokens"] == 32 and record["steps"] == 2
    assert record["losses"] and max(record["losses"]) < 6.0, record["losses"]  # a sum of two would be ~8.7
    base = modeling.base_model(loaded.model)
    assert "_qlora_checkpoint_limit" not in base.__dict__ and not base._forward_pre_hooks
    assert all(layer.gradient_checkpointing for layer in modeling.decoder_layers(base))


@pytest.mark.parametrize("folder, row", [
    ("qwen_h100_t4", "| nb02_seed42 | 02 | lora | 42 | 0.00104 (by size) | 92.66% |"),
    # a rate that was set and lowered by two rollbacks shows both, not the lowered one as if it were asked
    ("qwen_15b_h100_t4", "| nb02_lr2e-3 | 02 | lora | 42 | 0.002 (set), ended 0.0005 | 93.08% |"),
    # runs of two leases at two commits in one table: each row says which commit trained it
    ("qwen_15b_h100_t4_levers", "| nb03_seed2 | 03 | qlora | 2 | 0.000588 (by size) | 93.57% | 0.936 | 187 | 107.0 | "
                                "9.79 | 0 | a79026c |"),
    # one notebook with a step-cost lever on and off: a mean for each setting, not one over both
    ("smollm2_h100_t4_graphs", "- 02_lora_qwen2.5_1.5b with cuda_graphs=True at its default learning rate: mean test "
                               "accuracy 92.27% over 2 seeds (lowest 92.05%).")])
def test_each_real_weights_notebook_table_is_what_its_results_say(tmp_path, folder, row):
    """bench/results/qwen_*.md and smollm2_*.md (the defaults on real Qwen2.5-Coder-0.5B and -1.5B and SmolLM2-135M
    weights) are generated from the notebooks' own results.json files: regenerated from a copy, each is the committed
    text."""
    import shutil

    summarize = _load("summarize")
    committed = summarize.RESULTS / folder
    copy = shutil.copytree(committed, tmp_path / committed.name)
    text = summarize.notebook_results_table(copy)
    assert text == committed.with_suffix(".md").read_text()
    assert row in text


def test_a_notebook_table_refuses_runs_of_other_library_versions(tmp_path):
    """The table's header names one GPU and one set of libraries: a run of another version in the folder stops the
    table with the run's name, instead of a header that misdescribes it."""
    import shutil

    summarize = _load("summarize")
    copy = shutil.copytree(summarize.RESULTS / "qwen_15b_h100_t4_levers", tmp_path / "levers")
    run = json.loads((copy / "nb03_seed2.json").read_text())
    (copy / "nb03_seed2.json").write_text(json.dumps({**run, "versions": {**run["versions"], "transformers": "5.26.0"}}))
    with pytest.raises(ValueError, match="nb03_seed2 ran on another GPU or other library versions than nb02_seed1"):
        summarize.notebook_results_table(copy)
    assert not (tmp_path / "levers.md").exists()


def test_the_sweep_table_is_what_its_records_say_with_a_bound_where_the_tutorial_never_reached_the_target(tmp_path):
    """bench/results/sweep_h100_t4_qlora_full.md is sweep.report of the JSON beside it. Its tutorial recipes never
    reached the target, so beside the bound on the target the report gives a second one at the tutorial's own best:
    QLoRA's default reached the tutorial's 73.08% by 7 solo s; the tutorial was still below it at 85."""
    import shutil

    sweep = _load("sweep")
    committed = REPO / "bench" / "results" / "sweep_h100_t4_qlora_full"
    copy = shutil.copytree(committed, tmp_path / committed.name, ignore=shutil.ignore_patterns("*.log"))
    text = sweep.report(argparse.Namespace(folder=str(copy)))
    assert text == committed.with_suffix(".md").read_text()
    assert ("- qlora_tutorial never reached the target. Its own best, 73.08%, it had not reached at 85 solo s and had "
            "by 170:\n  - qlora_default reached it by 7 solo s, > 11.9x sooner.") in text


def test_sweep_default_candidates_take_the_learning_rate_by_model_size(tmp_path):
    """`lora_default` leaves the learning rate None as the notebooks do: the worker sets it by the model's
    size (defaults.learning_rate) and records the rate it trained with."""
    from qlora_helpers import defaults

    sweep = _load("sweep")
    sweep.main(["run", "--device", "cpu", "--model", "offline:tiny-qwen2", "--candidates", "lora_default",
                "--max-train", "154", "--max-validation", "77", "--eval-every", "64", "--solo-steps", "1",
                "--solo-warmup", "1", "--tag", "cpu", "--out-dir", str(tmp_path), "--work-dir", str(tmp_path / "work")])
    (record,) = sweep.load_sweep(tmp_path / "sweep_cpu")
    assert record["status"] == "done" and record["candidate"]["learning_rate"] is None
    assert record["learning_rate"] == defaults.learning_rate("lora", 1)  # tiny: the rate is never raised
    sweep.main(["report", str(tmp_path / "sweep_cpu")])  # the table shows the rate it trained with
    assert f"| lora_default | 64 x 1 | {record['learning_rate']:g} |" in (tmp_path / "sweep_cpu.md").read_text()
    # a candidate that failed before its first evaluation (QLoRA out of a T4's memory can): a report, not a crash
    (tmp_path / "sweep_cpu" / "lora_default.json").write_text(json.dumps({**record, "curve": [], "status": "failed: X"}))
    sweep.main(["report", str(tmp_path / "sweep_cpu")])
    assert "No candidate recorded a validation point: lora_default failed: X" in (tmp_path / "sweep_cpu.md").read_text()


def test_sweep_trains_each_method_on_its_own_model_when_asked(tmp_path, tiny_qwen2):
    """--method-model full=MODEL: 01's full fine-tuning trains MODEL beside the adapters on --model, as the
    qwen-t4 profile runs 01 on Gemma and 02/03 on Qwen2.5, and the report names each method's model; a
    malformed option stops before any worker starts."""
    sweep = _load("sweep")
    sweep.main(["run", "--device", "cpu", "--model", "offline:tiny-qwen2", "--candidates", "lora_default,full_default",
                "--method-model", f"full={tiny_qwen2}", "--max-train", "154", "--max-validation", "77",
                "--eval-every", "64", "--solo-steps", "1", "--solo-warmup", "1", "--tag", "cpu",
                "--out-dir", str(tmp_path), "--work-dir", str(tmp_path / "work")])
    records = {r["candidate"]["name"]: r for r in sweep.load_sweep(tmp_path / "sweep_cpu")}
    assert {name: (r["model"], r["status"]) for name, r in records.items()} == {
        "lora_default": ("offline:tiny-qwen2", "done"), "full_default": (tiny_qwen2, "done")}
    assert records["full_default"]["learning_rate"] == 2e-4  # 01's rate, any size
    text = sweep.report(argparse.Namespace(folder=str(tmp_path / "sweep_cpu")))
    assert f"## full on {tiny_qwen2}: " in text and "## lora on offline:tiny-qwen2: " in text
    assert sweep.choose(tmp_path / "sweep_cpu")["full"]["model"] == tiny_qwen2
    for bad, why in ((["full"], "give METHOD=MODEL"), (["fulll=offline:tiny-qwen2"], "give METHOD=MODEL"),
                     (["full="], "give METHOD=MODEL"), (["full=a", "full=b"], "two models"),
                     (["lora=a"], "no candidate of --candidates trains that method")):
        with pytest.raises(SystemExit, match=why):
            sweep.main(["run", "--device", "cpu", "--candidates", "full_default", "--tag", "bad", "--out-dir",
                        str(tmp_path / "bad")] + [arg for item in bad for arg in ("--method-model", item)])
    assert not (tmp_path / "bad").exists()


def test_unsloth_row_records_a_failure_with_its_commit_and_versions(tmp_path):
    """bench/unsloth_row.py, run as on a lent GPU but with an Unsloth that fails to import (a stand-in module), still
    writes its JSON: status "error" at that stage with the error text, the commit ($QLORA_COMMIT), the libraries found
    and the defaults' batch and length; and nothing it imports first loads transformers or peft (Unsloth patches them
    as it is imported, and runs with the device's transformers 5.17, not the project's)."""
    import os
    import subprocess
    import sys

    import torch

    (tmp_path / "unsloth.py").write_text("raise ImportError('Unsloth stand-in: not installed')\n")
    out = tmp_path / "results" / "row.json"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "QLORA_COMMIT": "abc1234", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "unsloth_row.py"), "--out", str(out),
                           "--models-dir", str(tmp_path / "models")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["status"] == "error" and record["stage"] == "import_unsloth", record
    assert "ImportError: Unsloth stand-in: not installed" in record["error"] and "Traceback" in record["traceback"]
    assert record["commit"] == "abc1234" and record["imported_before_unsloth"] == []
    assert record["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert {"unsloth", "unsloth_zoo", "trl", "transformers", "peft", "bitsandbytes"} <= set(record["versions"])
    qlora = defaults.DEFAULTS["qlora"]
    assert (record["args"]["batch_size"], record["args"]["max_length"]) == (qlora.batch_size, qlora.max_length)
    assert record["profile"] == "t4" and not (tmp_path / "models").exists()  # it stopped before building the 7B
