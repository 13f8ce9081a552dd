"""Train LoRA on the tiny Qwen2 into OUTPUT_DIR (resuming if a checkpoint is there), then write the
per-step losses and the test predictions to OUTPUT_DIR/outcome.json. Used by the resume test, which
SIGKILLs one run mid-epoch and reruns it."""
import json
import sys
import time

from transformers import TrainerCallback

from qlora_helpers import data, evaluation, modeling, training

model_path, output_dir, slow = sys.argv[1], sys.argv[2], sys.argv[3] == "slow"
bank = data.load_banking77()
loaded = modeling.load_model(model_path, "lora")
train_rows = data.tokenize(data.stratified_subsample(bank.train, 600, seed=0), loaded.tokenizer, max_length=64)
test_rows = data.tokenize(data.stratified_subsample(bank.test, 200, seed=0), loaded.tokenizer, max_length=64)
config = training.default_train_config("lora", output_dir=output_dir, epochs=2, batch_size=16,
                                       learning_rate=5e-3, logging_steps=1, save_steps=10)


class SlowDown(TrainerCallback):
    """Gives the test time to kill the process between checkpoints."""

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.2 if slow else 0)


trainer, _ = training.build_trainer(loaded, train_rows, config)
trainer.add_callback(SlowDown())
last = training.last_complete_checkpoint(output_dir)
last = str(last) if last else None
trainer.train(resume_from_checkpoint=last)
losses = {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}
predictions = evaluation.predict(loaded.model, test_rows, loaded.tokenizer).tolist()
(training.Path(output_dir) / "outcome.json").write_text(
    json.dumps({"resumed_from": last, "losses": losses, "predictions": predictions}))
