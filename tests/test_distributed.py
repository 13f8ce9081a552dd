"""Two DDP processes on CPU (gloo): gradients stay in sync, evaluation is gathered, results written once."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "scripts" / "train_ddp.py"


def test_two_processes_train_in_sync_and_write_results_once(tiny_qwen2, tmp_path):
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          str(SCRIPT), tiny_qwen2, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # the job trained on 6 steps x 8 examples x 2 processes, each process on its own shard ...
    assert [r["examples"] for r in ranks] == [96, 96]
    # ... yet the weights are identical: DDP averaged the gradients before every step
    assert ranks[0]["trainable"] == ranks[1]["trainable"]
    assert ranks[0]["predictions"] == ranks[1]["predictions"] and len(ranks[0]["predictions"]) > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "rank0.json", "rank1.json",
                                                          "results.json"]
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["training"]["examples"] == 96


def test_a_nan_loss_on_one_process_rolls_both_back_in_step_and_is_reported_once(tiny_qwen2, tmp_path):
    """Rank 1's loss turns NaN at step 4: both processes must take the same rollback at the same
    logging step (else one waits forever in the next collective: the timeout), at the same lower
    learning rate, and end with identical weights; the line and results.json say it once."""
    # PYTHONPATH: this tree's qlora_helpers, not the one the venv's editable install points at
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          str(SCRIPT.with_name("diverge_ddp.py")), tiny_qwen2, str(tmp_path)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[2])})
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [8, 8]
    for rank in ranks:
        [recovery] = rank["recoveries"]
        assert math.isnan(recovery.pop("loss")) and recovery == {"step": 4, "reason": "non-finite", "rolled_back_to": 2,
                                                                "old_learning_rate": 5e-3, "new_learning_rate": 2.5e-3}
        assert all(math.isfinite(loss) for loss in rank["losses"][2:])
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert run.stdout.count("rolled back to step 2 and lowered the learning rate 5e-3 -> 2.5e-3 (try 1 of 3)") == 1
    record = json.loads((tmp_path / "results.json").read_text())
    assert [r["step"] for r in record["training"]["recoveries"]] == [4]
    assert record["training"]["peak_learning_rate"] == 2.5e-3


def test_a_notebooks_steps_run_on_two_processes_through_the_cli(tmp_path):
    """`accelerate launch -m qlora_helpers.runners.train_all_gpus` on Kaggle's two T4s, here as two CPU processes."""
    from qlora_helpers.notebook import results

    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                          "qlora_helpers.runners.train_all_gpus", "--profile", "smoke", "--notebook",
                          "02_lora_qwen2.5_1.5b", "--run-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "02_lora_qwen2.5_1.5b on 2 process(es)" in run.stdout
    folder = tmp_path / "02_lora_qwen2.5_1.5b"
    assert sorted(p.name for p in folder.iterdir()) == ["confusion_matrix.png", "confusion_zoom.png",
                                                        "loss_curve.png", "results.json"]
    record = results.read_result(folder / "results.json")
    assert record["method"] == "lora" and record["demo"] is True
    assert sum(sum(row) for row in record["confusion_matrix"]) == record["data"]["test_examples"]


class NcclLikeGroup:
    """Stands in for a two-process NCCL group on CPU: refuses CPU tensors as NCCL does, and answers
    object collectives with this process's object and a second process's copy of it."""

    def __init__(self):
        self.object_calls = 0

    def refuse_cpu(self, tensor, *args, **kwargs):
        if tensor.device.type == "cpu":
            raise RuntimeError("No backend type associated with device type cpu")

    def all_gather_object(self, pieces, value, group=None):
        self.object_calls += 1
        pieces[:] = [value, value]


def test_every_collective_works_where_nccl_refuses_cpu_tensors(monkeypatch):
    import numpy as np
    import torch.distributed as dist

    from qlora_helpers import distributed

    group = NcclLikeGroup()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce", "broadcast", "reduce_scatter"):
        monkeypatch.setattr(dist, name, group.refuse_cpu)
    monkeypatch.setattr(dist, "all_gather_object", group.all_gather_object)

    assert distributed.sum_across_processes([96, 1000, 1200]) == [192, 2000, 2400]
    mine = distributed.shard(np.arange(5))  # rank 0 of 2: rows 0, 2, 4
    assert list(distributed.gather_shards(mine * 10, 6)) == [0, 0, 20, 20, 40, 40]
    assert distributed.mean_across_processes(1.5) == 1.5
    assert group.object_calls == 3


def test_the_effective_batch_is_split_over_the_gpus_never_changed():
    import pytest

    from qlora_helpers.distributed import split_batch

    assert split_batch(32, 2, 2) == (32, 1)  # fewer accumulation steps first: each GPU keeps its micro-batch
    assert split_batch(64, 1, 2) == (32, 1)
    assert split_batch(64, 1, 1) == (64, 1)
    with pytest.raises(ValueError, match="multiple of 2.*batch_size=32"):
        split_batch(33, 1, 2)


def test_one_gpu_or_a_launched_process_trains_in_the_notebooks_own_process(monkeypatch):
    import torch

    from qlora_helpers.distributed import gpus_to_train_on

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert gpus_to_train_on(True) == 2
    assert gpus_to_train_on(False) == 1
    monkeypatch.setenv("WORLD_SIZE", "2")  # already one of a launcher's processes
    assert gpus_to_train_on(True) == 1


def _qlora_notebook(tiny_qwen2, banking77_dir, run_dir):
    from qlora_helpers.notebook import experiment
    from qlora_helpers.notebook.parameters import NotebookParameters

    params = NotebookParameters(notebook="03_qlora_qwen2.5_7b", model_id=tiny_qwen2, method="qlora",
                                data_dir=str(banking77_dir), data_source="local", max_train_samples=160,
                                max_eval_samples=80, epochs=1.0, batch_size=16, learning_rate=5e-3,
                                max_length=32, run_dir=str(run_dir), profile="test", seed=0)
    bank = experiment.load_data(params)
    loaded = experiment.build_model(params, bank)
    return params, bank, loaded, *experiment.tokenize_splits(params, bank, loaded)


def test_a_notebook_that_sees_two_gpus_trains_on_both_and_gets_the_weights_back(
        tiny_qwen2, banking77_dir, tmp_path, monkeypatch, capsys):
    """Kaggle's T4 x2 in a notebook: the training cell launches two processes (here two CPU ones under
    gloo), they train at the notebook's effective batch, and the notebook's own 4-bit model comes back
    trained, ready for the evaluation cell; results are written once."""
    import torch

    from qlora_helpers import modeling
    from qlora_helpers.notebook import experiment

    params, bank, loaded, train_rows, test_rows = _qlora_notebook(tiny_qwen2, banking77_dir, tmp_path)
    before = {name: param.detach().clone() for name, param in loaded.model.named_parameters() if param.requires_grad}
    monkeypatch.setattr(experiment, "gpus_to_train_on", lambda use_all_gpus: 2 if use_all_gpus else 1)

    stats = experiment.train_model(params, loaded, train_rows)

    assert "training on 2 GPUs" in capsys.readouterr().out
    assert stats.processes == 2 and (stats.batch_size, stats.gradient_accumulation) == (8, 1)  # 16 = 8 x 2 GPUs
    # each process trains on its half of the rows (DistributedSampler pads the halves to equal size)
    assert stats.steps == math.ceil(math.ceil(len(train_rows) / 2) / 8) and stats.examples >= len(train_rows)
    after = dict(loaded.model.named_parameters())
    lora_b = [name for name in before if "lora_B" in name]
    assert lora_b and all(not torch.equal(before[name], after[name]) for name in lora_b)  # B starts at zero
    assert any(modeling.is_packed_4bit(param) for param in loaded.model.parameters())  # still the 4-bit base
    assert not (params.output_dir / "all_gpus").exists()
    result = experiment.evaluate_on_test(params, loaded, test_rows, bank)
    record = experiment.save_results(params, loaded, stats, result, bank)
    assert record["training"]["processes"] == 2
    assert sorted(p.name for p in params.output_dir.iterdir()) == ["loss_curve.png", "results.json"]


def test_a_failed_launch_says_how_to_train_on_one_gpu_and_keeps_the_notebooks_model(
        tiny_qwen2, banking77_dir, tmp_path, monkeypatch):
    import shutil

    import pytest

    from qlora_helpers.notebook import experiment

    data_copy = tmp_path / "banking77"
    shutil.copytree(banking77_dir, data_copy)
    params, bank, loaded, train_rows, _ = _qlora_notebook(tiny_qwen2, data_copy, tmp_path / "run")
    shutil.rmtree(data_copy)  # the launched processes cannot load the data
    monkeypatch.setattr(experiment, "gpus_to_train_on", lambda use_all_gpus: 2)
    with pytest.raises(RuntimeError, match="use_all_gpus = False"):
        experiment.train_model(params, loaded, train_rows)
    assert loaded.model(**{k: v[:1] for k, v in loaded.tokenizer(["where is my card?"], return_tensors="pt").items()}).logits.shape[-1] == 77


def test_interrupting_the_training_cell_stops_the_launched_processes(tmp_path, monkeypatch):
    """Kernel > Interrupt while the GPUs train: the launched processes must not live on holding them."""
    import os
    import time

    import pytest

    from qlora_helpers.notebook import all_gpus

    pid_file = tmp_path / "pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); print('training', flush=True); time.sleep(120)"
    real_read, calls = os.read, []

    def read_then_interrupt(fd, n):
        calls.append(fd)
        if len(calls) > 1:
            while not pid_file.exists():  # the process is up and training
                time.sleep(0.1)
            raise KeyboardInterrupt
        return real_read(fd, n)

    monkeypatch.setattr(all_gpus.os, "read", read_then_interrupt)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        all_gpus._stream([sys.executable, "-c", child])
    assert time.monotonic() - start < 60
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone (reaped by _stream's wait)
