"""bitsandbytes' 8-bit AdamW over one flat buffer (flat_optimizer): the same update as tensor by tensor, in one call,
through the Trainer's scaling, schedules, rollbacks and checkpoints."""
import shutil

import pytest
import torch
from transformers import TrainerCallback

bnb = pytest.importorskip("bitsandbytes")

from qlora_helpers import data, modeling, training  # noqa: E402
from qlora_helpers.flat_optimizer import FlatOptimizer  # noqa: E402

# LoRA's A and B at rank 16 (whole 256-value blocks), Qwen2.5-0.5B's k/v B (2,048 values: under bitsandbytes' 4,096
# minimum for 8-bit state; two of them, 5,120 together, are not), a head and a bias that end mid-block, and tiny
# gradients beside large ones (below)
SHAPES = [(16, 512), (512, 16), (77, 896), (128, 16), (128, 16), (896,), (16, 256)]
PAGED_8BIT = dict(optim_bits=8, is_paged=True, betas=(0.9, 0.999), eps=1e-8)


def _tensors(seed=0, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(shape, generator=generator) * 0.02).to(device)) for shape in SHAPES]


def _set_grads(tensors, step):
    generator = torch.Generator().manual_seed(100 + step)
    for index, tensor in enumerate(tensors):  # scales 1 and 1e-4 in turn: a block shared by two tensors would show
        tensor.grad = (torch.randn(tensor.shape, generator=generator) * 1e-4 ** (index % 2)).to(tensor.device)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="bitsandbytes' CUDA kernels (and paging) need a GPU"))])
def test_the_flat_update_is_bitsandbytes_update_tensor_by_tensor(device):
    """Bit for bit, whatever the tensors' sizes: no 8-bit scale spans two tensors, small ones keep 32-bit state."""
    per_tensor, flat = _tensors(device=device), _tensors(device=device)
    groups = lambda tensors: [{"params": tensors[:6], "weight_decay": 0.01}, {"params": tensors[6:], "weight_decay": 0.0}]
    reference = bnb.optim.AdamW(groups(per_tensor), lr=1e-3, **PAGED_8BIT)
    optimizer = FlatOptimizer(groups(flat), optimizer_cls=bnb.optim.AdamW, lr=1e-3, **PAGED_8BIT)
    # 8-bit: 8192 + 8192 + 68992 rounded up to 69120 blocks' worth; 32-bit: 2048 + 2048 + 896 rounded up to 1024; group 2
    assert [bucket.flat.numel() for bucket in optimizer.buckets] == [8192 + 8192 + 69120, 2048 + 2048 + 1024, 4096]
    for step in range(12):
        if step == 6:  # a schedule changes the rate on the groups it sees: the flat update must follow
            for group in reference.param_groups + optimizer.param_groups:
                group["lr"] = 3e-4
        _set_grads(per_tensor, step), _set_grads(flat, step)
        reference.step(), optimizer.step()
    for expected, got, start in zip(per_tensor, flat, _tensors(device=device)):
        assert not torch.equal(got, start)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    widths = [optimizer.flat_optimizer.state[bucket.flat]["state1"].dtype for bucket in optimizer.buckets]
    assert widths == [torch.uint8, torch.float32, torch.uint8]


def test_bitsandbytes_overrides_left_by_an_earlier_optimizer_do_not_reach_the_flat_buffers():
    """The Trainer registers 32-bit state for trainable embeddings in bitsandbytes' process-wide table, which an
    optimizer built later would apply to its parameter (0, 0): here a flat buffer, 4x its state."""
    manager = bnb.optim.GlobalOptimManager.get_instance()
    embedding, linear = torch.nn.Embedding(64, 64), torch.nn.Linear(64, 64)
    manager.register_module_override(embedding, "weight", {"optim_bits": 32})
    earlier = bnb.optim.AdamW([embedding.weight, linear.weight], lr=1e-3, optim_bits=8)
    embedding.weight.grad, linear.weight.grad = torch.ones(64, 64), torch.ones(64, 64)
    try:
        earlier.step()
        tensors = _tensors()[:2]
        optimizer = FlatOptimizer([{"params": tensors}], optimizer_cls=bnb.optim.AdamW, lr=1e-3, **PAGED_8BIT)
        _set_grads(tensors, 0)
        optimizer.step()
        assert optimizer.flat_optimizer.state[optimizer.buckets[0].flat]["state1"].dtype == torch.uint8
    finally:
        manager.initialize()  # the table as a fresh process has it


def test_a_parameter_group_added_later_is_refused():
    tensors = _tensors()
    optimizer = FlatOptimizer([{"params": tensors[:2]}], optimizer_cls=bnb.optim.AdamW, lr=1e-3, **PAGED_8BIT)
    with pytest.raises(NotImplementedError, match="pass every parameter group to its constructor"):
        optimizer.add_param_group({"params": tensors[2:]})


def test_one_bitsandbytes_update_per_buffer_a_step(monkeypatch):
    calls = {"8bit_blockwise": [], "32bit": []}
    for kind, sizes in calls.items():
        real = getattr(bnb.functional, f"optimizer_update_{kind}")
        monkeypatch.setattr(bnb.functional, f"optimizer_update_{kind}",
                            lambda *args, real=real, sizes=sizes, **kwargs: sizes.append(args[1].numel()) or real(*args, **kwargs))
    tensors = _tensors()
    optimizer = FlatOptimizer([{"params": tensors}], optimizer_cls=bnb.optim.AdamW, lr=1e-3, **PAGED_8BIT)
    _set_grads(tensors, 0)
    optimizer.step()
    assert calls == {"8bit_blockwise": [8192 + 8192 + 69120 + 4096], "32bit": [2048 + 2048 + 1024]}


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
    with pytest.raises(ValueError, match=r"flat buffers of \[16384\] values, this model's are \[89600, 5120\]"):
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
    flattened = [id(tensor) for bucket in optimizer.buckets for tensor in bucket.tensors]
    assert sorted(flattened) == sorted(id(p) for p in loaded.model.parameters() if p.requires_grad)
    assert len(optimizer.buckets) == 2  # the tiny model's rank-16 LoRA: 8-bit and (under 4,096 values) 32-bit state
    trained = {name: p.detach().clone() for name, p in loaded.model.named_parameters() if p.requires_grad}

    resumed_loaded, resumed = _qlora_trainer(tiny_qwen2, small_split, tmp_path / "resumed", max_steps=6, save_steps=3)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert resumed.state.global_step == 6
    for name, p in resumed_loaded.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), trained[name], rtol=0, atol=1e-6)
