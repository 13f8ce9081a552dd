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
