"""Two DDP processes on CPU (gloo): gradients stay in sync, evaluation is gathered, results written once."""
import json
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
    assert group.object_calls == 2
