"""bitsandbytes' 8-bit AdamW over one flat buffer (flat_optimizer): the same update as tensor by tensor, in one call,
through the Trainer's scaling, schedules, rollbacks and checkpoints."""
import shutil

import pytest
import torch
from transformers import TrainerCallback

bnb = pytest.importorskip("bitsandbytes")

from qlora_helpers import data, modeling, training  # noqa: E402
from qlora_helpers.flat_optimizer import FlatOptimizer  # noqa: E402

# multiples of bitsandbytes' 256-value blocks and over its 4,096-value minimum for 8-bit state, like LoRA's A and B
SHAPES = [(16, 512), (512, 16), (16, 256), (77, 512)]
PAGED_8BIT = dict(optim_bits=8, is_paged=True, betas=(0.9, 0.999), eps=1e-8)


def _tensors(seed=0, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(shape, generator=generator) * 0.02).to(device)) for shape in SHAPES]


def _set_grads(tensors, step):
    generator = torch.Generator().manual_seed(100 + step)
    for tensor in tensors:
        tensor.grad = torch.randn(tensor.shape, generator=generator).to(tensor.device)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="bitsandbytes' CUDA kernels (and paging) need a GPU"))])
def test_the_flat_update_is_bitsandbytes_update_tensor_by_tensor(device):
    """Bit for bit where each tensor fills whole 256-value blocks (LoRA at rank 16 on Qwen2.5's sizes does)."""
    per_tensor, flat = _tensors(device=device), _tensors(device=device)
    groups = lambda tensors: [{"params": tensors[:3], "weight_decay": 0.01}, {"params": tensors[3:], "weight_decay": 0.0}]
    reference = bnb.optim.AdamW(groups(per_tensor), lr=1e-3, **PAGED_8BIT)
    optimizer = FlatOptimizer(groups(flat), optimizer_cls=bnb.optim.AdamW, lr=1e-3, **PAGED_8BIT)
    assert [bucket.flat.numel() for bucket in optimizer.buckets] == [8192 + 8192 + 4096, 77 * 512]
    for step in range(12):
        if step == 6:  # a schedule changes the rate on the groups it sees: the flat update must follow
            for group in reference.param_groups + optimizer.param_groups:
                group["lr"] = 3e-4
        _set_grads(per_tensor, step), _set_grads(flat, step)
        reference.step(), optimizer.step()
    for expected, got, start in zip(per_tensor, flat, _tensors(device=device)):
        assert not torch.equal(got, start)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_one_bitsandbytes_update_per_group_a_step(monkeypatch):
    calls = []
    real = bnb.functional.optimizer_update_8bit_blockwise
    monkeypatch.setattr(bnb.functional, "optimizer_update_8bit_blockwise",
                        lambda *args, **kwargs: calls.append(args[1].numel()) or real(*args, **kwargs))
    tensors = _tensors()
    optimizer = FlatOptimizer([{"params": tensors}], optimizer_cls=bnb.optim.AdamW, lr=1e-3, **PAGED_8BIT)
    _set_grads(tensors, 0)
    optimizer.step()
    assert calls == [sum(tensor.numel() for tensor in tensors)]


def test_weights_written_in_place_between_steps_are_the_ones_updated():
    """A rollback or a resumed checkpoint writes the model's tensors: the next update must start from them."""
    tensors = _tensors()
    optimizer = FlatOptimizer([{"params": tensors, "weight_decay": 0.0}], optimizer_cls=bnb.optim.AdamW, lr=1e-3,
                              **PAGED_8BIT)
    _set_grads(tensors, 0)
    optimizer.step()
    restored = _tensors(seed=7)
    with torch.no_grad():
        for tensor, value in zip(tensors, restored):
            tensor.copy_(value)
    optimizer.param_groups[0]["lr"] = 0.0
    _set_grads(tensors, 1)
    optimizer.step()
    for tensor, value in zip(tensors, restored):
        torch.testing.assert_close(tensor, value, rtol=0, atol=0)


def test_a_group_without_gradients_is_skipped_and_a_missing_gradient_counts_as_zero():
    tensors = _tensors()
    optimizer = FlatOptimizer([{"params": tensors[:2]}, {"params": tensors[2:]}], optimizer_cls=bnb.optim.AdamW,
                              lr=1e-3, **PAGED_8BIT)
    starts = [tensor.detach().clone() for tensor in tensors]
    _set_grads(tensors[:1], 0)  # the first group: one tensor with a gradient, one without; the second: none
    optimizer.step()
    assert not torch.equal(tensors[0], starts[0])
    for tensor, start in zip(tensors[2:], starts[2:]):
        assert torch.equal(tensor, start)
    assert optimizer.state_dict()["flat"]["state"].keys() == {0}


def test_state_saved_by_another_optimizer_or_for_other_tensors_is_refused_by_name():
    tensors = _tensors()
    optimizer = FlatOptimizer([{"params": tensors}], optimizer_cls=bnb.optim.AdamW, lr=1e-3, **PAGED_8BIT)
    per_tensor = bnb.optim.AdamW(_tensors(), lr=1e-3, **PAGED_8BIT)
    with pytest.raises(ValueError, match="not saved by FlatOptimizer.*delete the checkpoint folder"):
        optimizer.load_state_dict(per_tensor.state_dict())
    smaller = FlatOptimizer([{"params": _tensors()[:2]}], optimizer_cls=bnb.optim.AdamW, lr=1e-3, **PAGED_8BIT)
    with pytest.raises(ValueError, match=r"flat buffers of \[16384\] values, this model's are \[59904\]"):
        optimizer.load_state_dict(smaller.state_dict())


def _qlora_trainer(tiny_qwen2, small_split, output_dir, **knobs):
    loaded = modeling.load_model(tiny_qwen2, "qlora")
    rows = data.tokenize(small_split[0], loaded.tokenizer, max_length=64)
    config = training.default_train_config("qlora", output_dir=str(output_dir), batch_size=16, learning_rate=5e-3,
                                           logging_steps=1, **knobs)
    trainer, _ = training.build_trainer(loaded, rows, config)
    return loaded, trainer


class _KeepCheckpoint(TrainerCallback):
    """Copies checkpoint-`step` aside before save_total_limit deletes it."""

    def __init__(self, step, to):
        self.step, self.to = step, to

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            shutil.copytree(f"{args.output_dir}/checkpoint-{self.step}", self.to)


def test_qlora_trains_through_one_flat_paged_8bit_adamw_and_resumes_its_state(tiny_qwen2, small_split, tmp_path):
    loaded, trainer = _qlora_trainer(tiny_qwen2, small_split, tmp_path / "whole", max_steps=6, save_steps=3)
    trainer.add_callback(_KeepCheckpoint(3, tmp_path / "checkpoint-3"))
    trainer.train()
    optimizer = trainer.optimizer.optimizer  # inside accelerate's wrapper
    assert isinstance(optimizer, FlatOptimizer) and isinstance(optimizer.flat_optimizer, bnb.optim.AdamW)
    assert optimizer.flat_optimizer.args.optim_bits == 8 and optimizer.flat_optimizer.is_paged
    assert training.step_levers(trainer)["flat_optimizer"] is True  # what results.json records
    assert len(optimizer.buckets) == 1 and optimizer.buckets[0].tensors == [
        p for p in loaded.model.parameters() if p.requires_grad]
    trained = {name: p.detach().clone() for name, p in loaded.model.named_parameters() if p.requires_grad}

    resumed_loaded, resumed = _qlora_trainer(tiny_qwen2, small_split, tmp_path / "resumed", max_steps=6, save_steps=3)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert resumed.state.global_step == 6
    for name, p in resumed_loaded.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), trained[name], rtol=0, atol=1e-6)
