"""One DDP worker (run under torchrun): LoRA on the tiny Qwen2 with the loss of step 4 made NaN on
rank 1 only, then results written. Each rank dumps a hash of its trainable weights and its recoveries,
so the test can see both rolled back at the same step and stayed in sync."""
import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

from nan_loss import add_to_every_trainer

from qlora_helpers import data, distributed, evaluation, modeling, training
from qlora_helpers.notebook import results

model_path, output_dir = sys.argv[1], Path(sys.argv[2])
if distributed.launched_processes() > 1 and int(__import__("os").environ["RANK"]) == 1:
    add_to_every_trainer(SimpleNamespace(setattr=setattr), step=3)  # DDP spreads its NaN gradients to rank 0
bank = data.load_banking77()
loaded = modeling.load_model(model_path, "lora")
train_rows = data.tokenize(data.stratified_subsample(bank.train, 400, seed=0), loaded.tokenizer, max_length=64)
test_rows = data.tokenize(data.stratified_subsample(bank.test, 80, seed=0), loaded.tokenizer, max_length=64)
config = training.default_train_config("lora", output_dir=str(output_dir / "checkpoints"), max_steps=8,
                                       batch_size=8, learning_rate=5e-3, logging_steps=2, save_steps=100)
stats = training.train(loaded, train_rows, config)
evaluated = evaluation.evaluate(loaded.model, test_rows, loaded.tokenizer, bank.label_names)
record = results.build_result(run_name="ddp", loaded=loaded, stats=stats, evaluation=evaluated,
                              label_names=bank.label_names, data={}, demo=True, config={})
results.write_result(record, output_dir / "results.json")
digest = hashlib.sha256()
for name, param in sorted(loaded.model.named_parameters()):
    if param.requires_grad:
        digest.update(name.encode() + param.detach().cpu().numpy().tobytes())
(output_dir / f"rank{distributed.rank()}.json").write_text(json.dumps({
    "world_size": distributed.world_size(), "weights_sha256": digest.hexdigest(), "steps": stats.steps,
    "recoveries": stats.recoveries, "losses": stats.losses}))
