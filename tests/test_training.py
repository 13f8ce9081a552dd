"""A few real optimizer steps per method on the tiny Qwen2: what trains, trains; what is frozen, stays."""
import math

import pytest
import torch
from scripts import nan_loss
from transformers import TrainerCallback

from qlora_helpers import data, modeling, training


def _snapshot(model) -> dict[str, tuple[torch.Tensor, bool]]:
    return {name: (param.detach().clone(), param.requires_grad) for name, param in model.named_parameters()}


@torch.no_grad()
def _mean_loss(loaded, rows) -> float:
    loaded.model.eval()
    collator = training.LengthDroppingCollator(loaded.tokenizer)
    batch = collator([dict(row) for row in rows])
    labels = batch.pop("labels") if "labels" in batch else batch.pop("label")
    return float(loaded.model(**batch, labels=labels).loss)


@pytest.mark.parametrize("method, learning_rate", [("full", 2e-3), ("lora", 5e-3), ("qlora", 5e-3)])
def test_training_lowers_loss_trains_adapters_and_head_and_keeps_the_base(
        tiny_qwen2, small_split, tmp_path, method, learning_rate):
    train_rows, _ = small_split
    loaded = modeling.load_model(tiny_qwen2, method)
    rows = data.tokenize(train_rows, loaded.tokenizer, max_length=64)
    probe = rows.select(range(0, len(rows), 5))
    before, loss_before = _snapshot(loaded.model), _mean_loss(loaded, probe)
    config = training.default_train_config(method, output_dir=str(tmp_path), max_steps=40, batch_size=16,
                                           learning_rate=learning_rate, logging_steps=10, save_steps=1000)
    stats = training.train(loaded, rows, config)
    after = dict(loaded.model.named_parameters())

    assert _mean_loss(loaded, probe) < loss_before - 0.3
    trainable = [n for n, (_, grad) in before.items() if grad]
    frozen = [n for n, (_, grad) in before.items() if not grad]
    assert trainable and all(not torch.equal(before[n][0], after[n].detach()) for n in trainable)
    assert all(torch.equal(before[n][0], after[n].detach()) for n in frozen)
    head = modeling.head_parameters(loaded.model)
    assert head and all(not torch.equal(before[n][0], p.detach()) for n, p in head.items())
    if method == "full":
        assert not frozen
    else:
        assert all("lora_" in n or "modules_to_save" in n for n in trainable)
        assert any("embed_tokens" in n for n in frozen) and any("q_proj.base_layer" in n for n in frozen)

    per_epoch = math.ceil(len(rows) / 16)  # 25 for the 400 rows: the other 15 steps are in epoch 2
    assert stats.steps == 40 and stats.examples == len(rows) + (40 - per_epoch) * 16
    assert 0 < stats.padding_share < 0.5 and stats.real_tokens < stats.padded_tokens
    assert stats.examples_per_second > 0 and stats.peak_memory_bytes > 0
    assert len(stats.losses) == 4 and all(math.isfinite(l) for l in stats.losses)
    # logged at steps 10, 20, 30, 40: examples seen, to within one batch of what was trained on
    seen = stats.loss_examples_seen
    assert len(seen) == 4 and abs(seen[-1] - stats.examples) < 16 and abs(seen[0] - 10 * 16) < 16
    assert all(later - earlier > 0 for earlier, later in zip(seen, seen[1:]))


def _trainable(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}


def _lora_run(tiny_qwen2, small_split, output_dir, method="lora", **changes):
    """A fresh LoRA model (seeded: the same adapters each time), its training rows and a short config."""
    torch.manual_seed(0)
    loaded = modeling.load_model(tiny_qwen2, method)
    rows = data.tokenize(small_split[0].select(range(192)), loaded.tokenizer, max_length=64)
    config = training.default_train_config(method, **{
        "output_dir": str(output_dir), "max_steps": 10, "batch_size": 16, "learning_rate": 5e-3,
        "logging_steps": 2, "save_steps": 1000, **changes})
    return loaded, rows, config


class _LastSchedule(TrainerCallback):
    """What the optimizer and the schedule hold when training ends."""

    def on_train_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self.lrs = [group["lr"] for group in optimizer.param_groups]
        self.base_lrs, self.position = list(lr_scheduler.base_lrs), lr_scheduler.last_epoch
        self.lambdas, self.last_lr = lr_scheduler.lr_lambdas, lr_scheduler.get_last_lr()


@pytest.mark.parametrize("method", ["lora", "qlora"])  # AdamW, and the 8-bit AdamW's state
def test_a_nan_loss_is_rolled_back_at_a_lower_learning_rate_and_training_finishes(
        tiny_qwen2, small_split, tmp_path, monkeypatch, capsys, method):
    loaded, rows, config = _lora_run(tiny_qwen2, small_split, tmp_path, method)
    schedule = _LastSchedule()
    nan_loss.add_to_every_trainer(monkeypatch, 5, schedule)  # step 6's loss, its gradients, then the weights: NaN

    stats = training.train(loaded, rows, config)

    # caught at the logging step after it (6) and rolled back to the last healthy one (4)
    assert "loss nan at step 6 is not finite: rolled back to step 4 and lowered the learning rate 5e-3 -> 2.5e-3 " \
           "(try 1 of 3)" in capsys.readouterr().out
    [recovery] = stats.recoveries
    assert math.isnan(recovery.pop("loss")) and recovery == {
        "step": 6, "reason": "non-finite", "rolled_back_to": 4, "old_learning_rate": 5e-3, "new_learning_rate": 2.5e-3}
    assert stats.peak_learning_rate == 2.5e-3 and stats.steps == 10
    assert all(torch.isfinite(p).all() for p in _trainable(loaded.model).values())
    assert math.isnan(stats.losses[2]) and all(math.isfinite(loss) for loss in stats.losses[3:])
    # the optimizer trains on at half the rate, where the schedule was at step 4: 2 steps behind the count
    assert schedule.base_lrs == [2.5e-3, 2.5e-3] and schedule.position == 10 - 2
    expected = 2.5e-3 * schedule.lambdas[0](schedule.position)
    assert schedule.lrs == pytest.approx([expected, expected], rel=1e-12) and schedule.last_lr == schedule.lrs


def test_a_second_divergence_restarts_from_the_first_state_at_the_lower_rate(tiny_qwen2, small_split, tmp_path,
                                                                           monkeypatch, capsys):
    """On an H100 (Qwen2.5-0.5B, lr 8e-3) the loss turned NaN again 7 steps after each rollback to the last
    healthy step, even at 1e-3, which trains from scratch: weights a too high rate grew stay fragile. So a
    second divergence goes back to where training began, and counts its losses afresh."""
    loaded, rows, config = _lora_run(tiny_qwen2, small_split, tmp_path)
    nan_loss.add_to_every_trainer(monkeypatch, (5, 7))  # caught at the logging steps 6 and 8

    stats = training.train(loaded, rows, config)

    out = capsys.readouterr().out
    assert "loss nan at step 6 is not finite: rolled back to step 4 and lowered the learning rate 5e-3 -> 2.5e-3" in out
    assert "loss nan at step 8 is not finite: rolled back to step 0 and lowered the learning rate 2.5e-3 -> 1.25e-3" in out
    assert [(r["step"], r["rolled_back_to"], r["new_learning_rate"]) for r in stats.recoveries] == [
        (6, 4, 2.5e-3), (8, 0, 1.25e-3)]
    assert stats.steps == 10 and math.isfinite(stats.final_loss)
    assert all(torch.isfinite(p).all() for p in _trainable(loaded.model).values())


class _Killed(Exception):
    pass


class _KillAfterSaving(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        raise _Killed


def test_a_run_resumed_after_a_rollback_keeps_its_lower_learning_rate_and_its_record(
        tiny_qwen2, small_split, tmp_path, monkeypatch):
    """The checkpoint saved after a rollback carries the lowered learning rate (optimizer and schedule
    state) and the recovery (the Trainer's log history): the resumed run goes on at it and reports it."""
    loaded, rows, config = _lora_run(tiny_qwen2, small_split, tmp_path, save_steps=8)
    with monkeypatch.context() as patch:
        nan_loss.add_to_every_trainer(patch, 5, _KillAfterSaving())
        with pytest.raises(_Killed):
            training.train(loaded, rows, config)
    schedule = _LastSchedule()
    nan_loss.add_to_every_trainer(monkeypatch, -1, schedule)  # no NaN this time
    stats = training.train(loaded, rows, config)
    assert stats.resumed_from_step == 8 and stats.steps == 10
    assert [(r["step"], r["new_learning_rate"]) for r in stats.recoveries] == [(6, 2.5e-3)]
    assert stats.peak_learning_rate == 2.5e-3 and schedule.base_lrs == [2.5e-3, 2.5e-3] and schedule.position == 8


def test_a_healthy_run_is_untouched_by_the_divergence_guard(tiny_qwen2, small_split, tmp_path):
    """Snapshots are taken (retries on) or not (off): the weights come out the same, bit for bit."""
    trained = {}
    for retries in (3, 0):
        loaded, rows, config = _lora_run(tiny_qwen2, small_split, tmp_path / str(retries), divergence_retries=retries)
        stats = training.train(loaded, rows, config)
        assert stats.recoveries == [] and stats.peak_learning_rate == 5e-3
        trained[retries] = _trainable(loaded.model)
    assert trained[3].keys() == trained[0].keys()
    assert all(torch.equal(trained[3][name], trained[0][name]) for name in trained[0])


def test_divergence_that_outlasts_the_retries_stops_naming_the_learning_rate(tiny_qwen2, small_split, tmp_path, capsys):
    """NaN weights from the start: every rollback (to them) diverges again, at a lower rate each time."""
    loaded, rows, config = _lora_run(tiny_qwen2, small_split, tmp_path, max_steps=20, learning_rate=2e-3)
    head = next(iter(modeling.head_parameters(loaded.model).values()))
    with torch.no_grad():
        head.fill_(float("nan"))
    with pytest.raises(training.NonFiniteLossError) as raised:
        training.train(loaded, rows, config)
    message = str(raised.value)
    assert message == ("the training loss nan at step 8 is not finite, after 3 rollbacks to a lower learning rate "
                       "(last 2.5e-4): lower learning_rate (now 2e-3), e.g. to 6.25e-5; if that does not help, "
                       "check the inputs and labels.")
    assert isinstance(raised.value, training.TrainingDivergedError)
    assert capsys.readouterr().out.count("rolled back to step 0") == 3
    with_fp16 = str(training.DivergenceGuard._advice("non-finite", "loss nan at step 8 is not finite", 0, 2e-3,
                                                     2e-3, fp16=True))
    assert with_fp16.index("lower learning_rate (now 2e-3), e.g. to 5e-4") < with_fp16.index("fp16")
    assert "fp16 overflows easily: train in" not in with_fp16  # the cause named is the learning rate


def test_divergence_names_nan_and_a_return_to_chance_after_learning_only():
    chance = math.log(77)
    assert training.divergence(float("nan"), 1.0, 77) == training.divergence(float("inf"), 9.0, None) == "non-finite"
    assert training.divergence(0.91 * chance, 0.49 * chance, 77) == "back to chance"
    assert training.divergence(0.91 * chance, 0.51 * chance, 77) is None  # it never learned much: not a relapse
    assert training.divergence(0.89 * chance, 0.1, 77) is None
    assert training.divergence(5.0, 0.1, None) is None and training.divergence(5.0, 0.1, 1) is None  # no chance level


def test_the_guard_decides_from_the_loss_all_processes_share(tiny_qwen2, small_split, tmp_path, monkeypatch, capsys):
    """A loss back at chance after having learned, and a NaN that another process saw (the value every
    process agrees on, mean_across_processes, says so while this one's own loss is fine), both roll back."""
    loaded, rows, config = _lora_run(tiny_qwen2, small_split, tmp_path, max_steps=8)
    agreed = {2: None, 4: 1.0, 6: 4.3, 8: float("nan")}  # own, learned, back at chance, another process's NaN
    seen = []

    def shared(loss):  # at the logging steps 2, 4, 6, 8
        seen.append(loss)
        return agreed[2 * len(seen)] or loss

    monkeypatch.setattr(training, "mean_across_processes", shared)
    stats = training.train(loaded, rows, config)
    assert [(r["step"], r["reason"], r["rolled_back_to"]) for r in stats.recoveries] == [
        (6, "back to chance", 4), (8, "non-finite", 0)]  # a second divergence: back to where training began
    assert all(math.isfinite(loss) for loss in seen)  # this process's own losses were all fine
    out = capsys.readouterr().out
    assert "loss 4.30 at step 6 is back at chance (ln 77 = 4.34): rolled back to step 4 and lowered the learning " \
           "rate 5e-3 -> 2.5e-3 (try 1 of 3)" in out
    assert "rolled back to step 0 and lowered the learning rate 2.5e-3 -> 1.25e-3 (try 2 of 3)" in out
    assert stats.peak_learning_rate == 1.25e-3


def test_length_grouping_cuts_padding(tiny_qwen2, banking77, tmp_path):
    """Dynamic padding of length-grouped batches, against random batches and the tutorial's fixed 128."""
    loaded = modeling.load_model(tiny_qwen2, "lora")
    rows = data.tokenize(data.stratified_subsample(banking77.train, 2_000, seed=0), loaded.tokenizer)
    shares = {}
    for grouped in (False, True):
        config = training.default_train_config("lora", output_dir=str(tmp_path / str(grouped)), max_steps=30,
                                               batch_size=32, save_steps=1000, pad_to_multiple_of=None,
                                               group_by_length=grouped)
        stats = training.train(loaded, rows, config)
        shares[grouped] = stats.padding_share
    fixed_padding_share = 1 - stats.real_tokens / (stats.examples * 128)
    assert shares[True] < shares[False] / 2 and fixed_padding_share > 0.8, shares


def test_qlora_on_cpu_trains_after_eval_forwards_on_the_avx512_bf16_path(tiny_qwen2, small_split, tmp_path,
                                                                          monkeypatch):
    """eval -> train -> eval -> train on 4-bit layers, as a resumed notebook or predict_texts-then-train does.

    bitsandbytes repacks 4-bit weights for its CPU inference kernel on CPUs with AVX-512 BF16; the test
    makes every CPU report that instruction set (as `Linear4bit` reads it when built) so the path is
    taken here whatever the machine."""
    import bitsandbytes.nn.modules

    from qlora_helpers import evaluation

    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)
    train_rows, test_rows = small_split

    def run(evaluate_between: bool):
        loaded = modeling.load_model(tiny_qwen2, "qlora")
        rows = data.tokenize(train_rows, loaded.tokenizer, max_length=64)
        tests = data.tokenize(test_rows, loaded.tokenizer, max_length=64)
        losses = []
        for part in range(2):
            if evaluate_between:
                losses.append(_mean_loss(loaded, rows.select(range(0, len(rows), 5))))
                evaluation.predict(loaded.model, tests, loaded.tokenizer)
            config = training.default_train_config("qlora", output_dir=str(tmp_path / f"{evaluate_between}{part}"),
                                                   max_steps=15, batch_size=16, learning_rate=5e-3,
                                                   save_steps=1000, seed=part)
            training.train(loaded, rows, config)
        losses.append(_mean_loss(loaded, rows.select(range(0, len(rows), 5))))
        packed = [m for m in loaded.model.modules()
                  if getattr(getattr(getattr(m, "weight", None), "quant_state", None), "packing_format_for_cpu", False)]
        return losses, evaluation.predict(loaded.model, tests, loaded.tokenizer), packed

    losses, predictions, packed = run(evaluate_between=True)
    _, fresh_predictions, _ = run(evaluate_between=False)
    assert losses[2] < losses[1] < losses[0] and losses[2] < losses[0] - 0.2, losses
    assert not packed  # the weights stayed in the layout training uses
    assert (predictions == fresh_predictions).mean() == 1.0


def test_compiled_decoder_layers_train_as_the_eager_ones(tiny_qwen2, small_split, tmp_path):
    """compile_layers=True compiles each decoder layer (and only those) and trains the same losses
    as eager QLoRA with checkpointing on (the 4-bit matmul, peft's adapters and the recompute
    traced); a model without decoder layers is refused with the knob to turn off."""
    rows = None
    losses = {}
    for compiled in (False, True):
        loaded = modeling.load_model(tiny_qwen2, "qlora")
        rows = rows or data.tokenize(small_split[0].select(range(64)), loaded.tokenizer, max_length=64)
        config = training.default_train_config("qlora", output_dir=str(tmp_path / str(compiled)), max_steps=4,
                                               batch_size=16, logging_steps=1, save_steps=1000,
                                               compile_layers=compiled)
        stats = training.train(loaded, rows, config)
        losses[compiled] = stats.losses
        assert stats.step_levers["compile_layers"] is compiled  # what results.json records
        compiled_modules = [m for m in loaded.model.modules() if getattr(m, "_compiled_call_impl", None) is not None]
        # checkpointed layers (QLoRA's default) compile their blocks, so the checkpoint stays eager around them
        assert {type(m).__name__ for m in compiled_modules} == (
            {"Qwen2Attention", "Qwen2MLP", "Qwen2RMSNorm"} if compiled else set())
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    with pytest.raises(ValueError, match="compile_layers=False"):
        training.compile_decoder_layers(torch.nn.Linear(4, 4))


def test_limit_checkpointing_recomputes_only_the_long_batches_and_changes_no_gradient(tiny_qwen2, tmp_path):
    """Batches over the limit go through each layer's checkpoint function, shorter ones do not; the
    gradients are the same either way (recomputing gives back what was kept); None undoes it."""
    loaded = modeling.load_model(tiny_qwen2, "lora", 77, lora_dropout=0.0, gradient_checkpointing=True)
    model = loaded.model
    model.train()
    layers = modeling.decoder_layers(model)
    calls = []
    for layer in layers:
        own = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, _own=own, **k: calls.append(1) or _own(*a, **k)

    def gradients(batch: int) -> dict:
        ids = torch.randint(3, 200, (batch, 8), generator=torch.Generator().manual_seed(batch))
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.arange(batch)).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    checkpointed = {batch: gradients(batch) for batch in (2, 4)}
    assert len(calls) == 2 * len(layers)
    calls.clear()
    training.limit_checkpointing(model, 16)  # 2 x 8 tokens keep their activations, 4 x 8 recompute
    limited = {batch: gradients(batch) for batch in (2, 4)}
    assert len(calls) == len(layers)
    for batch in (2, 4):
        assert all(torch.equal(limited[batch][n], g) for n, g in checkpointed[batch].items())
    training.limit_checkpointing(model, None)
    calls.clear()
    gradients(2)
    assert len(calls) == len(layers) and all(layer.gradient_checkpointing for layer in layers)
    # the knob: build_trainer sets the limit (training ends by undoing it, with graphs.disable)
    training.build_trainer(loaded, [], training.default_train_config("lora", output_dir=str(tmp_path),
                                                                      checkpoint_above_tokens=16))
    calls.clear()
    gradients(2)
    assert calls == []
    training.limit_checkpointing(model, None)
    plain = modeling.load_model(tiny_qwen2, "lora", 77, lora_dropout=0.0, gradient_checkpointing=False)
    with pytest.raises(ValueError, match="needs gradient checkpointing on .* checkpoint_above_tokens=None"):
        training.limit_checkpointing(plain.model, 16)


def test_tokens_without_checkpointing_is_the_longest_batch_the_estimator_fits_with_room_to_spare():
    from qlora_helpers import memory

    tokens = memory.tokens_without_checkpointing("7B", "qlora", "T4", batch_size=64)
    assert tokens % 64 == 0 and 0 < tokens < 64 * 64
    t4 = memory.GPUS["T4"].memory_mib * 2**20

    def left(length):  # bytes a T4 keeps free at this padded length, checkpointing off
        est = memory.estimate("7B", "qlora", batch_size=64, seq_len=length, gradient_checkpointing=False)
        return t4 - est.device_bytes("T4")

    assert left(tokens // 64) >= memory.GIB > left(tokens // 64 + 8)
    assert memory.tokens_without_checkpointing("0.5B", "qlora", "A100-80GB", batch_size=64) == 64 * 64


@pytest.mark.parametrize("in_notebook", [False, True])
def test_the_progress_bar_writes_no_line_per_logged_loss(tiny_qwen2, tmp_path, monkeypatch, capsys, in_notebook):
    """A notebook's training cell showed a 45-row loss table above the loss curve, a terminal a dict a log."""
    import transformers.trainer
    from transformers.utils.notebook import NotebookProgressCallback

    if in_notebook:  # what transformers picks when it runs in a Jupyter kernel
        monkeypatch.setattr(transformers.trainer, "DEFAULT_PROGRESS_CALLBACK", NotebookProgressCallback)
        monkeypatch.setattr("transformers.utils.notebook.disp.display", lambda *a, **k: None)
    loaded = modeling.load_model(tiny_qwen2, "lora")
    trainer, _ = training.build_trainer(loaded, [], training.default_train_config("lora", output_dir=str(tmp_path)))
    progress = trainer.pop_callback(transformers.trainer.DEFAULT_PROGRESS_CALLBACK)
    assert progress is not None  # the bar itself stays
    trainer.state.max_steps = 10
    trainer.state.epoch = 0.0
    progress.on_train_begin(trainer.args, trainer.state, trainer.control)
    capsys.readouterr()
    progress.on_log(trainer.args, trainer.state, trainer.control, logs={"loss": 1.25, "learning_rate": 1e-3})
    assert "1.25" not in capsys.readouterr().out
    if in_notebook:
        assert progress.training_tracker.inner_table is None


def test_peak_reserved_is_what_the_allocator_held_and_none_on_cpu(monkeypatch):
    """A T4's limit counts the allocator's cached blocks too (the CUDA graphs' pool held 4.6 GiB beyond
    max_memory_allocated when Qwen2.5-1.5B QLoRA ran out of the cap): runs record the reserved peak."""
    assert training.peak_reserved() is None  # a CPU has no allocator cache to report
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: 14 * 2**30)
    assert training.peak_reserved() == 14 * 2**30
    assert "peak_reserved_bytes" in training.TrainStats.__dataclass_fields__
