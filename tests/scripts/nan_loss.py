"""A test-only way to make training diverge for real: the loss of one optimizer step becomes NaN, so
its gradients and then the weights do too, and the DivergenceGuard meets it where it meets a real one
(the logged loss)."""
from transformers import TrainerCallback

from qlora_helpers import training


class NanLossAt(TrainerCallback):
    """Multiplies the loss of the optimizer step after `step` completed ones by NaN."""

    def __init__(self, model, step: int):
        self.step, self.now = step, False
        model.register_forward_hook(self._poison)

    def on_step_begin(self, args, state, control, **kwargs):
        self.now = state.global_step == self.step

    def _poison(self, module, args, output):
        if self.now and module.training and output.loss is not None:
            output.loss = output.loss * float("nan")
        return output


def add_to_every_trainer(patch, step: int | tuple[int, ...], *others: TrainerCallback) -> None:
    """Have training.build_trainer add a NanLossAt for `step` (or each of several), then `others`, to each
    Trainer it builds (`patch`: a pytest monkeypatch, or anything with its setattr)."""
    real = training.build_trainer
    steps = step if isinstance(step, tuple) else (step,)

    def build_trainer(loaded, *args, **kwargs):
        trainer, measure = real(loaded, *args, **kwargs)
        for callback in (*(NanLossAt(loaded.model, at) for at in steps), *others):
            trainer.add_callback(callback)
        return trainer, measure

    patch.setattr(training, "build_trainer", build_trainer)
