"""One DDP worker (run under torchrun): LoRA on the tiny Qwen2, then evaluate and write results.
Each rank also dumps a checksum of its trainable weights, so the test can see they stayed in sync."""
import json
import sys
from pathlib import Path

import torch

from qlora_helpers import data, distributed, evaluation, modeling, training
from qlora_helpers.notebook import results

model_path, output_dir = sys.argv[1], Path(sys.argv[2])
bank = data.load_banking77()
loaded = modeling.load_model(model_path, "lora")
train_rows = data.tokenize(data.stratified_subsample(bank.train, 400, seed=0), loaded.tokenizer, max_length=64)
test_rows = data.tokenize(data.stratified_subsample(bank.test, 160, seed=0), loaded.tokenizer, max_length=64)
config = training.default_train_config("lora", output_dir=str(output_dir / "checkpoints"), max_steps=6,
                                       batch_size=8, learning_rate=5e-3, save_steps=100)
stats = training.train(loaded, train_rows, config)
evaluated = evaluation.evaluate(loaded.model, test_rows, loaded.tokenizer, bank.label_names)
record = results.build_result(run_name="ddp", loaded=loaded, stats=stats, evaluation=evaluated,
                              label_names=bank.label_names, data={}, demo=True, config={})
results.write_result(record, output_dir / "results.json")
trainable = {n: p.detach().double().sum().item() for n, p in loaded.model.named_parameters() if p.requires_grad}
(output_dir / f"rank{distributed.rank()}.json").write_text(json.dumps({
    "world_size": distributed.world_size(), "trainable": trainable, "examples": stats.examples,
    "predictions": evaluated.predictions.tolist()}))
