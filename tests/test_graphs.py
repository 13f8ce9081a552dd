"""qlora_helpers/graphs.py on CPU: what it refuses (before any work), what enable changes on a model
and what disable puts back, and that everything but a training forward on a GPU stays eager. The
recording and replaying themselves need a GPU: the last test compares their losses and gradients with
the eager stack's there (as bench/graphs_check.py did for bench/results/graphs_check_*.json)."""
import contextlib
import functools

import pytest
import torch

from qlora_helpers import graphs, modeling, training


@pytest.fixture
def qwen2_lora(tiny_qwen2):
    """The tiny Qwen2 with LoRA (dropout 0) and non-reentrant checkpointing, as QLoRA trains it."""
    loaded = modeling.load_model(tiny_qwen2, "lora", 77, lora_dropout=0.0, gradient_checkpointing=True)
    loaded.model.train()
    return loaded


@pytest.fixture
def pretend_gpu(monkeypatch):
    """Let enable() run on CPU: the device checks pass and the CUDA objects it makes are stand-ins."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: ("pool",))
    monkeypatch.setattr(torch.cuda, "Stream", lambda: "stream")
    monkeypatch.setattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: None, raising=False)


def _batch():
    ids = torch.randint(3, 200, (4, 8))
    mask = torch.ones_like(ids)
    ids[0, 5:], mask[0, 5:] = 0, 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 3])}


class _Recorded:
    """What _dispatch and disable use of a ShapeGraphs: a stand-in that remembers its pool and its release."""

    def __init__(self, pool=None):
        self.params, self.pool, self.released = [], pool, False

    def release(self):
        self.released = True


def _record_with_stand_ins(monkeypatch, model, record) -> None:
    """Let a training forward on CPU reach the recording: `record(state, ids, mask)` stands in for
    graphs._record, and a replay runs the stack eagerly (so a loss must equal the eager model's)."""
    def replay(graphs_of_shape, ids, mask, *params):
        stack = graphs.decoder_stack(model)
        return type(stack).forward(stack, ids, attention_mask=mask, use_cache=False).last_hidden_state

    monkeypatch.setattr(graphs, "_on_gpu", lambda tensor: True)
    monkeypatch.setattr(graphs, "_record", record)
    monkeypatch.setattr(graphs._Replay, "apply", replay)


def test_enable_refuses_what_graphs_cannot_replay_before_any_work(qwen2_lora, tiny_qwen2, minilm_path, monkeypatch):
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA GPU: train with cuda_graphs=False"):
        graphs.enable(qwen2_lora.model)
    with_dropout = modeling.load_model(tiny_qwen2, "lora", 77, lora_dropout=0.1)
    # on a CPU the GPU is the reason: setting lora_dropout=0 there would not make graphs run
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA GPU"):
        graphs.enable(with_dropout.model)
    with monkeypatch.context() as on_a_gpu, pytest.raises(ValueError, match=r"without dropout .*set lora_dropout=0"):
        on_a_gpu.setattr(torch.cuda, "is_available", lambda: True)  # on a GPU, the dropout
        graphs.enable(with_dropout.model)
    encoder = modeling.load_model(minilm_path, "lora", 77, lora_dropout=0.0)
    with pytest.raises(ValueError, match=r"decoder classifiers .* not BertForSequenceClassification"):
        graphs.enable(encoder.model)
    for model in (qwen2_lora.model, with_dropout.model):  # nothing changed by a refused call
        stack = graphs.decoder_stack(model)
        assert "forward" not in stack.__dict__ and not hasattr(stack, "_qlora_graphs")


def test_a_launched_process_refuses_graphs_before_its_process_group_exists(qwen2_lora, pretend_gpu, monkeypatch):
    """torchrun / the notebooks' launcher start each process with WORLD_SIZE set; the Trainer sets up the process
    group only later, after prepare_for_training chose the levers: the launch itself must count."""
    assert graphs.unavailable(qwen2_lora.model) is None  # one process, a (pretended) GPU, no dropout
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "runs in one process, not 2" in graphs.unavailable(qwen2_lora.model)


def test_cuda_graphs_knob_on_cpu_fails_in_build_trainer_with_the_fix(qwen2_lora, tmp_path):
    config = training.default_train_config("qlora", output_dir=str(tmp_path), cuda_graphs=True)
    with pytest.raises(ValueError, match="train with cuda_graphs=False"):
        training.build_trainer(qwen2_lora, [], config)


def test_enable_and_disable_round_trip(qwen2_lora, pretend_gpu):
    model = qwen2_lora.model
    stack = graphs.decoder_stack(model)
    layers = modeling.decoder_layers(stack)
    own = [layer._gradient_checkpointing_func for layer in layers]
    assert all(isinstance(f, functools.partial) and "preserve_rng_state" not in f.keywords for f in own)

    state = graphs.enable(model)
    assert stack.forward.func is graphs._dispatch and state.stack is stack
    # the recomputation of a checkpointed layer must not save or restore the CUDA RNG in a capture
    assert all(layer._gradient_checkpointing_func.keywords == {"use_reentrant": False, "preserve_rng_state": False}
               for layer in layers)
    graphs.enable(model)  # idempotent: the second call replaces the first, it does not wrap it
    assert stack.forward.func is graphs._dispatch

    graphs.disable(model)
    assert "forward" not in stack.__dict__ and not hasattr(stack, "_qlora_graphs")
    assert [layer._gradient_checkpointing_func for layer in layers] == own
    graphs.disable(model)  # nothing left to undo: a no-op


def test_dispatch_runs_the_stack_eagerly_unless_a_training_forward_on_a_gpu(qwen2_lora, pretend_gpu, monkeypatch):
    model = qwen2_lora.model
    batch = _batch()
    expected = model(**batch)
    expected.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    recorded = []
    monkeypatch.setattr(graphs, "_record", lambda state, ids, mask: recorded.append(ids.shape))
    graphs.enable(model)
    try:
        out = model(**batch)  # CPU tensors: eager
        out.loss.backward()
        model.eval()
        with torch.no_grad():
            evaluated = model(**batch)  # evaluation: eager
    finally:
        graphs.disable(model)
    assert recorded == []
    assert torch.equal(out.loss, expected.loss) and torch.allclose(evaluated.logits, expected.logits)
    assert {n: p.grad for n, p in model.named_parameters() if p.grad is not None}.keys() == grads.keys()
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters() if n in grads)


def test_dispatch_records_one_graph_pair_per_batch_shape(qwen2_lora, pretend_gpu, monkeypatch):
    """A training forward on a GPU records its shape once and replays the recording after; the
    stand-in recording runs the stack eagerly, so the loss must equal the eager model's."""
    model = qwen2_lora.model
    batch = _batch()
    with torch.no_grad():
        expected = float(model(**batch).loss)

    recorded, made = [], []

    def record(state, ids, mask):
        recorded.append(tuple(ids.shape))
        made.append(_Recorded())
        return made[-1]

    _record_with_stand_ins(monkeypatch, model, record)
    graphs.enable(model)
    try:
        losses = [float(model(**b).loss.detach()) for b in (batch, batch, {k: v[:2] for k, v in batch.items()})]
    finally:
        graphs.disable(model)
    assert recorded == [(4, 8), (2, 8)] and all(r.released for r in made)  # disable released both
    assert losses[0] == losses[1] == pytest.approx(expected, abs=1e-6)


def test_out_of_memory_recording_beside_other_shapes_drops_them_and_records_afresh(qwen2_lora, pretend_gpu,
                                                                                   monkeypatch, capsys):
    """The shared pool keeps every earlier capture's free blocks, which only a capture can reuse: a new
    shape that runs out of memory beside them gets one more try in an empty pool (every recording
    released, a new pool, one printed line) and the step goes on with the same loss. Once per run: the
    next such error is SharedPoolTooSmall (with fall_back: graphs off, one line, eager from there on, so
    shapes that cannot share a pool never drop and record at every switch). Out of memory in the empty
    pool, or with nothing recorded to drop, it stays a plain out-of-memory error (training.train's retry)."""
    model, batch = qwen2_lora.model, _batch()
    with torch.no_grad():
        expected = {rows: float(model(**{k: v[:rows] for k, v in batch.items()}).loss) for rows in (4, 3)}
    pools = iter(range(100))
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: ("pool", next(pools)))

    made, attempts, full = [], [], {"left": 0}

    def record(state, ids, mask):
        attempts.append((tuple(ids.shape), state.pool[1]))
        if full["left"]:
            full["left"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        made.append(_Recorded(state.pool))
        return made[-1]

    _record_with_stand_ins(monkeypatch, model, record)
    rows = lambda n: {k: v[:n] for k, v in batch.items()}

    def start(fall_back: bool, first_full: int = 1) -> graphs.GraphedStack:
        """Graphs on, (2, 8) recorded, then (4, 8) out of memory `first_full` times beside it."""
        attempts.clear()
        state = graphs.enable(model, fall_back=fall_back)
        model(**rows(2))
        full["left"] = first_full
        return state

    state = start(fall_back=False)
    assert float(model(**batch).loss) == pytest.approx(expected[4], abs=1e-6)
    assert capsys.readouterr().out.count("CUDA graphs: out of memory recording batch shape (4, 8) beside 1 "
                                         "recorded shape: dropping their graphs") == 1
    assert made[-2].released and not made[-1].released  # the earlier shape's graphs gave their memory back
    assert attempts == [((2, 8), 0), ((4, 8), 0), ((4, 8), 1)] and list(state.graphs) == [(4, 8)]
    model(**rows(2))  # dropped with the others: recorded again, in the new pool
    assert attempts[-1] == ((2, 8), 1) and graphs.active(model)
    full["left"] = 1  # out of memory beside others again: no second drop
    with pytest.raises(graphs.SharedPoolTooSmall, match="dropped once: train with cuda_graphs=False"):
        model(**rows(3))
    graphs.disable(model)

    start(fall_back=True)
    model(**batch)
    full["left"] = 1
    assert float(model(**rows(3)).loss) == pytest.approx(expected[3], abs=1e-6)  # eager from here on
    out = capsys.readouterr().out
    assert "CUDA graphs: off from here on, training goes on without them (out of memory recording batch shape " \
           "(3, 8) beside other shapes' graphs after they were dropped once)" in out and not graphs.active(model)

    start(fall_back=True, first_full=2)  # out of memory in the empty pool too: a real out-of-memory error
    with pytest.raises(torch.OutOfMemoryError) as raised:
        model(**batch)
    assert type(raised.value) is torch.OutOfMemoryError and attempts == [((2, 8), 4), ((4, 8), 4), ((4, 8), 5)]
    graphs.disable(model)

    graphs.enable(model, fall_back=True)
    full["left"] = 1  # nothing recorded yet: nothing to drop, so no second try (and no fall-back either)
    with pytest.raises(torch.OutOfMemoryError):
        model(**batch)
    graphs.disable(model)
    capsys.readouterr()


def test_unalias_gradients_copies_only_existing_gradients():
    with_grad, without = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    buffer = torch.full((3,), 2.0)
    with_grad.grad = buffer  # as autograd leaves it: the backward graph's own output tensor
    graphs._unalias_gradients([with_grad, without])
    assert with_grad.grad is not buffer and torch.equal(with_grad.grad, buffer) and without.grad is None


def test_only_the_first_recording_on_a_stream_runs_an_eager_warm_up(qwen2_lora, pretend_gpu, monkeypatch):
    """A warm-up pass is for the capture stream's lazy initialisation (cuBLAS's workspace): once per
    stream, so each later batch shape costs its captures only; a failed recording warms up nothing."""
    asked = []

    def shape_graphs(stack, ids, mask, pool, stream, *, warm_up):
        asked.append((tuple(ids.shape), warm_up))
        if ids.shape[0] == 3:
            raise RuntimeError("capture failed")
        return object()

    monkeypatch.setattr(graphs, "ShapeGraphs", shape_graphs)
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *args: False)
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda *args: torch.float16)
    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: contextlib.nullcontext())
    state = graphs.enable(qwen2_lora.model)
    try:
        ids = torch.ones(3, 8, dtype=torch.long)
        with pytest.raises(RuntimeError, match="train with cuda_graphs=False"):
            graphs._record(state, ids, ids)
        for batch in (4, 2, 4):
            graphs._record(state, torch.ones(batch, 8, dtype=torch.long), torch.ones(batch, 8, dtype=torch.long))
    finally:
        graphs.disable(qwen2_lora.model)
    assert asked == [((3, 8), True), ((4, 8), True), ((2, 8), False), ((4, 8), False)]


def test_auto_graphs_that_fail_to_record_turn_off_with_one_line_and_training_goes_on(qwen2_lora, pretend_gpu,
                                                                                     monkeypatch, capsys):
    """cuda_graphs=None (the default) must never crash a run: a recording that fails (not for memory)
    turns the graphs off, says so once, and that forward and every later one run eagerly; asked for
    explicitly (fall_back=False) the same failure stops the run with the fix."""
    monkeypatch.setattr(graphs, "_on_gpu", lambda tensor: True)
    monkeypatch.setattr(graphs, "_record", lambda *args: (_ for _ in ()).throw(
        RuntimeError("recording the CUDA graphs of Qwen2Model for batch shape (4, 8) failed (boom): train with "
                     "cuda_graphs=False.")))
    model, batch = qwen2_lora.model, _batch()
    eager = model(**batch).loss
    graphs.enable(model, fall_back=True)
    assert graphs.active(model)
    loss = model(**batch).loss
    loss.backward()
    assert torch.allclose(loss, eager) and not graphs.active(model)
    assert capsys.readouterr().out.count("CUDA graphs: off from here on") == 1
    model(**batch).loss.backward()  # eager from now on: nothing recorded, nothing printed
    assert capsys.readouterr().out == ""
    graphs.enable(model)  # explicitly asked for: the failure is an error naming the fix
    with pytest.raises(RuntimeError, match="train with cuda_graphs=False"):
        model(**batch)
    graphs.disable(model)


def test_default_levers_on_cpu_are_off_each_with_its_line_and_recorded_in_the_stats(qwen2_lora, tmp_path, capsys):
    """The defaults choose the levers themselves (TrainConfig.cuda_graphs None, checkpoint_above_tokens
    "auto"): on a CPU both are off, one printed line says why the graphs are, and TrainStats records what
    trained, LoRA with torch's fused AdamW."""
    from datasets import Dataset

    config = training.default_train_config("lora", output_dir=str(tmp_path), max_steps=2, batch_size=4,
                                           save_steps=10**9, retry_on_oom=False)
    assert config.cuda_graphs is None and config.checkpoint_above_tokens == "auto"
    assert config.optimizer == "adamw_torch_fused"
    rows = Dataset.from_list([{"input_ids": [5 + i, 6, 7], "attention_mask": [1, 1, 1], "label": i % 3}
                              for i in range(8)])
    stats = training.train(qwen2_lora, rows, config)
    assert "CUDA graphs: off: cuda_graphs needs a CUDA GPU" in capsys.readouterr().out
    assert stats.step_levers == {"cuda_graphs": False, "checkpoint_above_tokens": None, "compile_layers": False,
                                 "optimizer": "adamw_torch_fused", "flat_optimizer": False}
    assert training.checkpoint_limit(qwen2_lora.model, config) is None  # CPU: every micro-batch recomputes
    with pytest.raises(ValueError, match="use a number of tokens, None or 'auto'"):
        training.checkpoint_limit(qwen2_lora.model, training.TrainConfig(**{**config.__dict__,
                                                                             "checkpoint_above_tokens": "all"}))


@pytest.fixture
def qwen2_full(tiny_qwen2):
    return modeling.load_model(tiny_qwen2, "full", 77)


def test_default_graphs_turn_on_for_adapters_where_they_can_run_and_never_for_full_fine_tuning(
        qwen2_lora, qwen2_full, pretend_gpu, tmp_path, capsys, monkeypatch):
    """cuda_graphs None on a (pretended) GPU: LoRA gets graphs, a full fine-tune does not (never measured; the
    notebooks' parameters refuse it too), each with its line."""
    monkeypatch.setattr(training, "set_seed", lambda seed: None)  # it would seed the pretended GPU
    config = training.default_train_config("lora", output_dir=str(tmp_path), checkpoint_above_tokens=None)
    training.prepare_for_training(qwen2_lora.model, config)
    assert graphs.active(qwen2_lora.model) and "CUDA graphs: on" in capsys.readouterr().out
    graphs.disable(qwen2_lora.model)
    training.prepare_for_training(qwen2_full.model, training.default_train_config("full", output_dir=str(tmp_path)))
    assert not graphs.active(qwen2_full.model)
    assert "CUDA graphs: off: full fine-tuning" in capsys.readouterr().out


def test_auto_checkpointing_limit_is_sized_from_the_estimate_and_falls_back_with_a_line(qwen2_lora, monkeypatch,
                                                                                         capsys):
    """"auto" gives the tokens memory.tokens_without_checkpointing allows this model (as LoRA, at the config's
    batch and length) on the GPU with 1 GiB spare; none where nothing fits, or where the shape cannot be read,
    each said in one line instead of a crash at start."""
    from qlora_helpers import memory

    config = training.default_train_config("lora", batch_size=8, max_length=32)
    shape = memory.ModelShape.from_config(modeling.base_model(qwen2_lora.model).config)
    expected = memory.tokens_without_checkpointing(shape, "lora", "T4", batch_size=8, max_length=32,
                                                   optimizer=config.optimizer, lora_r=16, lora_dropout=0.0)
    assert training.size_checkpoint_limit(qwen2_lora.model, config, memory.GPUS["T4"]) == expected == 8 * 32
    assert "no micro-batch recomputes its activations (even 8 x 32 tokens fit T4" in capsys.readouterr().out
    tiny_gpu = memory.GPU("a 1 GiB GPU", 1024, bf16=False)  # nothing fits with 1 GiB to spare
    assert training.size_checkpoint_limit(qwen2_lora.model, config, tiny_gpu) is None
    assert "every micro-batch (none fits a 1 GiB GPU's memory" in capsys.readouterr().out
    monkeypatch.setattr(memory.ModelShape, "from_config", classmethod(lambda cls, config: config.no_such_field))
    assert training.size_checkpoint_limit(qwen2_lora.model, config, memory.GPUS["T4"]) is None
    assert "every micro-batch (the limit could not be sized for Qwen2Config" in capsys.readouterr().out


def _gpu_micro_batch(length: int) -> dict:
    """32 rows of `length` random tokens on the GPU, with labels for 77 intents."""
    return {"input_ids": torch.randint(3, 200, (32, length), device="cuda"),
            "attention_mask": torch.ones(32, length, dtype=torch.long, device="cuda"),
            "labels": torch.randint(0, 77, (32,), device="cuda")}


def _train_steps(loaded, start: dict, steps: list[list[dict]], *, with_graphs: bool,
                 before_micro_batch=lambda index: None) -> tuple[list[float], list[dict]]:
    """Train `steps` (each a list of micro-batches whose gradients add up) from the trainable weights
    `start`, eagerly or with graphs, as the Trainer does under fp16 autocast; the graphs are disabled
    after. Returns each micro-batch's loss and each step's summed gradients by parameter name.
    `before_micro_batch(i)` runs before the i-th micro-batch of the run."""
    model = loaded.model
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in start:
                param.copy_(start[name])
    model.zero_grad(set_to_none=True)
    model.train()
    if with_graphs:
        graphs.enable(model)
    losses, grads = [], []
    try:
        for step in steps:
            for batch in step:
                before_micro_batch(len(losses))
                with torch.autocast("cuda", dtype=loaded.compute_dtype):
                    loss = model(**batch).loss
                (loss * 1024).backward()  # as a GradScaler scales it
                losses.append(float(loss))
                del loss  # as the Trainer does: no autograd graph outlives its backward
            grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
            model.zero_grad(set_to_none=True)
    finally:
        graphs.disable(model)
    return losses, grads


def _same_gradients(eager: list[dict], graphed: list[dict]) -> bool:
    return len(eager) == len(graphed) and all(
        e.keys() == g.keys() and all(torch.equal(e[n], g[n]) for n in e) for e, g in zip(eager, graphed))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs record and replay on a GPU")
def test_graphs_train_as_the_eager_stack_does_and_leave_no_memory_behind(tiny_qwen2):
    """The same micro-batches from the same weights, eagerly then with graphs: two steps of three
    micro-batches (two of one shape accumulated into one gradient, the case graphs._unalias_gradients
    exists for, then a third shape; the second step replays what the first recorded). Losses and
    gradients match exactly, and once graphs.disable has run nothing more is allocated than after the
    eager run (54f5065's graphs left 198 MiB for the next setup in the process)."""
    loaded = modeling.load_model(tiny_qwen2, "qlora", 77)
    start = {n: p.detach().clone() for n, p in loaded.model.named_parameters() if p.requires_grad}
    steps = [[_gpu_micro_batch(16), _gpu_micro_batch(16), _gpu_micro_batch(24)] for _ in range(2)]
    eager_losses, eager_grads = _train_steps(loaded, start, steps, with_graphs=False)
    after_eager = torch.cuda.memory_allocated()
    graph_losses, graph_grads = _train_steps(loaded, start, steps, with_graphs=True)
    assert graph_losses == eager_losses
    assert _same_gradients(eager_grads, graph_grads)
    assert torch.cuda.memory_allocated() <= after_eager


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs record and replay on a GPU")
@pytest.mark.parametrize("capture", ["forward", "backward"])
def test_a_real_out_of_memory_inside_a_capture_is_survived_and_training_matches_eager(tiny_qwen2, monkeypatch, capsys,
                                                                                      capture):
    """The CUDA side of the start-afresh path: an allocation the GPU cannot hold, made inside the forward
    capture of a second shape (or inside its backward capture, on autograd's thread), raises from the
    caching allocator mid-capture as an out-of-memory error; the graphs of the first shape are dropped
    and their pool's memory given back, the second is recorded in a new pool, and the losses and
    gradients of the whole run (one step of four micro-batches) still equal the eager stack's exactly."""
    loaded = modeling.load_model(tiny_qwen2, "qlora", 77)
    start = {n: p.detach().clone() for n, p in loaded.model.named_parameters() if p.requires_grad}
    steps = [[_gpu_micro_batch(length) for length in (16, 24, 16, 24)]]
    too_big = {"left": 0}
    forward = graphs._StackCall.forward

    def run_out():
        too_big["left"] -= 1
        torch.empty(2 * torch.cuda.get_device_properties(0).total_memory, dtype=torch.uint8, device="cuda")

    def forward_that_may_run_out(self, input_ids, attention_mask):
        hidden = forward(self, input_ids, attention_mask)
        if too_big["left"] and torch.cuda.is_current_stream_capturing():
            if capture == "forward":
                run_out()
            hidden = hidden * 1.0  # a node whose gradient hook runs inside the backward capture
            hidden.register_hook(lambda grad: run_out() if too_big["left"] else grad)
            hidden = hidden + 0.0
        return hidden

    monkeypatch.setattr(graphs._StackCall, "forward", forward_that_may_run_out)
    reserved = []
    drop = graphs._drop_recordings

    def measured_drop(state):
        before = torch.cuda.memory_reserved()
        drop(state)
        reserved.append((before, torch.cuda.memory_reserved()))

    monkeypatch.setattr(graphs, "_drop_recordings", measured_drop)
    eager_losses, eager_grads = _train_steps(loaded, start, steps, with_graphs=False)
    capsys.readouterr()
    reserved.clear()

    def second_shape_runs_out(index: int) -> None:  # the second shape's first capture runs out
        too_big["left"] = int(index == 1)

    graph_losses, graph_grads = _train_steps(loaded, start, steps, with_graphs=True,
                                             before_micro_batch=second_shape_runs_out)
    assert "CUDA graphs: out of memory recording batch shape (32, 24) beside 1 recorded shape" in capsys.readouterr().out
    (before, after), *_ = reserved  # the drop, then disable's
    assert after < before  # the first shape's pool was given back
    assert graph_losses == eager_losses
    assert _same_gradients(eager_grads, graph_grads)
