"""CUDA graphs for the decoder stack of a classifier in training (`TrainConfig.cuda_graphs`).

A QLoRA step on a small model, or on a 7B on a fast GPU, waits on kernel launches, not arithmetic:
Qwen2.5-7B's step launches ~11.6k GPU operations and keeps the GPU busy 27% of the time
(bench/results/SUMMARY.md, "Where a step's time goes"). As torch.cuda.make_graphed_callables does
(PyTorch's "partial-network capture"), the decoder stack's forward, and its backward with the
checkpointed layers' recomputation, are recorded as two CUDA graphs that each replay with one
launch. The head, the loss, the gradient scaler and the optimizer stay eager, so the Trainer, its
hooks and its callbacks see an ordinary model.

One pair of graphs per batch shape (micro-batch, padded length), recorded the first time that shape
trains; length-grouped batches padded to a multiple of 8 make a handful of shapes. All pairs share
one memory pool, which is safe because each micro-batch's backward replays before the next forward
does, and one side stream, warmed up once, before the first
capture: a later shape is captured without an eager pass of its own (a new shape's step on the 7B:
~0.9-1.2 s in run 9, ~1.4-1.5 s in run 8, which warmed up for every shape; bench/results/SUMMARY.md).
A shape that runs out of memory while recording beside others drops every recording and starts an
empty pool (`_record_or_start_afresh`): the shared pool's free blocks serve captures only.
The graphs compute what the eager stack computes (same kernels, same order), with two limits:
nothing random may run inside (LoRA dropout 0, no attention dropout), and one process only.
"""
from __future__ import annotations

import functools
import gc
from dataclasses import dataclass, field

import torch

from .distributed import is_main_process, launched_processes, world_size
from .modeling import base_model, decoder_layers


@dataclass
class GraphedStack:
    """What `enable` changed on a model, so that `disable` can undo it."""
    stack: torch.nn.Module  # the decoder stack (e.g. Qwen2Model): embeddings, decoder layers, final norm
    graphs: dict[tuple[int, ...], ShapeGraphs] = field(default_factory=dict)  # input_ids shape -> its graphs
    pool: object = None  # the memory pool every capture shares (torch.cuda.graph_pool_handle); new after a drop
    stream: object = None  # the side stream the warm-up and every capture run on
    warmed_up: bool = False  # the stream has run one eager pass (its lazy initialisation is done)
    checkpoint_functions: dict[torch.nn.Module, object] = field(default_factory=dict)  # layer -> its own
    fall_back: bool = False  # a failed recording turns the graphs off (one printed line) instead of raising
    started_afresh: bool = False  # the recordings were dropped once for memory (_record_or_start_afresh)


class _StackCall(torch.nn.Module):
    """The stack as a capture calls it: tensors in, one tensor out (the last hidden state)."""

    def __init__(self, stack: torch.nn.Module):
        super().__init__()
        self.stack = stack

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # type(...).forward: the class's own forward, not the dispatcher `enable` set on the instance
        out = type(self.stack).forward(self.stack, input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state  # (batch, padded length, hidden size)


def decoder_stack(model: torch.nn.Module) -> torch.nn.Module:
    """The module under the classification head that holds every decoder layer (Qwen2Model for a
    Qwen2ForSequenceClassification). ValueError for a model whose head is not transformers'
    GenericForSequenceClassification (the head that reads only the stack's last hidden state)."""
    from transformers.modeling_layers import GenericForSequenceClassification

    classifier = base_model(model)
    if not isinstance(classifier, GenericForSequenceClassification):
        raise ValueError(f"cuda_graphs supports decoder classifiers (Qwen2, Llama/SmolLM2, Gemma 3 ...ForSequence"
                         f"Classification), not {type(classifier).__name__}: train it with cuda_graphs=False.")
    stack = getattr(classifier, classifier.base_model_prefix)
    layers = decoder_layers(stack)
    if not layers or len(layers) != len(decoder_layers(classifier)):
        raise ValueError(f"{type(stack).__name__} does not hold the decoder layers of {type(classifier).__name__}: "
                         "train it with cuda_graphs=False.")
    return stack


def _random_modules(model: torch.nn.Module) -> list[str]:
    """Names of modules that would draw random numbers in training (a replayed graph would repeat them)."""
    found = [name for name, module in model.named_modules()
             if isinstance(module, torch.nn.Dropout) and module.p > 0]
    config = getattr(base_model(model), "config", None)
    if getattr(config, "attention_dropout", 0.0):
        found.append(f"attention (attention_dropout={config.attention_dropout})")
    return found


def unavailable(model: torch.nn.Module) -> str | None:
    """Why `enable` would refuse `model` here (its message, naming the fix), or None if graphs can run:
    a model `decoder_stack` does not support, no CUDA GPU, several processes, dropout anywhere in it.
    The knob a user can change (dropout) comes last: on a CPU, setting it would not make graphs run."""
    try:
        decoder_stack(model)
    except ValueError as error:
        return str(error)
    if not torch.cuda.is_available():
        return "cuda_graphs needs a CUDA GPU: train with cuda_graphs=False on CPU."
    processes = max(world_size(), launched_processes())  # a launched process has no process group until the Trainer
    if processes > 1:
        return f"cuda_graphs runs in one process, not {processes}: train with cuda_graphs=False, or on one GPU."
    random = _random_modules(model)
    if random:
        return (f"cuda_graphs needs a model without dropout (a replayed graph would drop the same units every "
                f"time); found {', '.join(random[:3])}: set lora_dropout=0.")
    return None


def enable(model: torch.nn.Module, *, fall_back: bool = False) -> GraphedStack:
    """Make `model`'s decoder stack replay CUDA graphs in training (idempotent: graphs recorded
    earlier are dropped). Evaluation, inference and unusual calls (embeddings passed in, a cache)
    run the stack eagerly. A recording that runs out of memory beside other shapes' graphs drops
    them and records once more (`_record_or_start_afresh`). `fall_back`: if a recording fails (not
    for lack of memory in an empty pool), print one line, turn the graphs off and train on eagerly,
    instead of raising RuntimeError (or SharedPoolTooSmall).

    Raises ValueError, naming the fix, where `unavailable` gives a reason.
    """
    reason = unavailable(model)
    if reason is not None:
        raise ValueError(reason)
    stack = decoder_stack(model)
    disable(model)
    state = GraphedStack(stack, pool=torch.cuda.graph_pool_handle(), stream=torch.cuda.Stream(), fall_back=fall_back)
    # torch.utils.checkpoint saves and restores the CUDA RNG state around a recomputed layer, which a
    # capture cannot do (pytorch#162504); with nothing random inside, there is nothing to restore.
    for layer in decoder_layers(stack):
        own = getattr(layer, "_gradient_checkpointing_func", None)  # set by transformers' checkpointing
        if isinstance(own, functools.partial):
            state.checkpoint_functions[layer] = own
            layer._gradient_checkpointing_func = functools.partial(own.func, *own.args,
                                                                   **{**own.keywords, "preserve_rng_state": False})
    stack.forward = functools.partial(_dispatch, state)
    stack._qlora_graphs = state
    return state


def active(model: torch.nn.Module) -> bool:
    """True while `model`'s decoder stack replays graphs (enable, and no fall-back since)."""
    try:
        return "_qlora_graphs" in decoder_stack(model).__dict__
    except ValueError:
        return False


def disable(model: torch.nn.Module) -> None:
    """Undo `enable` (nothing to undo: no-op); the graphs and their memory pool are released."""
    try:
        stack = decoder_stack(model)
    except ValueError:
        return
    _turn_off(stack)


def _turn_off(stack: torch.nn.Module) -> None:
    state = stack.__dict__.pop("_qlora_graphs", None)
    if state is None:
        return
    del stack.forward  # the instance attribute: the class's forward is back
    for layer, own in state.checkpoint_functions.items():
        layer._gradient_checkpointing_func = own
    _drop_recordings(state)
    # cuBLAS's workspace for the capture stream outlives the graphs that used it; with every graph of
    # ours reset it can go (it is made again on the next matmul that needs one).
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()


def _drop_recordings(state: GraphedStack) -> None:
    """Release every shape's graphs and the memory their pool holds; the stack stays graphed."""
    # gradients accumulated from a replay may still be the backward graphs' own buffers: copies first
    _unalias_gradients([p for p in state.stack.parameters() if p.requires_grad])
    for recorded in state.graphs.values():
        recorded.release()
    state.graphs.clear()
    gc.collect()
    torch.cuda.empty_cache()


def _dispatch(state: GraphedStack, *args, **kwargs):
    """The stack's forward while graphs are on: replay (or first record) the graphs of this batch
    shape in training; anything else goes to the stack's own forward."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    stack = state.stack
    input_ids = args[0] if args else kwargs.pop("input_ids", None)
    mask = kwargs.pop("attention_mask", None)
    rest = list(args[1:]) + list(kwargs.values())
    graphable = (stack.training and torch.is_grad_enabled() and isinstance(input_ids, torch.Tensor)
                 and _on_gpu(input_ids) and (mask is None or mask.shape == input_ids.shape)
                 and all(value is None or value is False for value in rest))
    if not graphable:
        return type(stack).forward(stack, input_ids, *args[1:], attention_mask=mask, **kwargs)
    if mask is None:
        mask = torch.ones_like(input_ids)
    key = tuple(input_ids.shape)
    graphed = state.graphs.get(key)
    if graphed is None:
        why = None
        try:
            graphed = state.graphs[key] = _record_or_start_afresh(state, input_ids, mask)
        except RuntimeError as error:
            if not state.fall_back or (isinstance(error, torch.OutOfMemoryError)
                                       and not isinstance(error, SharedPoolTooSmall)):
                raise
            why = str(error).split(": train")[0]
        if why is not None:  # out of the except block: the failed capture's tensors are freed with its traceback
            if is_main_process():
                print(f"CUDA graphs: off from here on, training goes on without them ({why})")
            _turn_off(stack)
            return type(stack).forward(stack, input_ids, *args[1:], attention_mask=mask, **kwargs)
    _unalias_gradients(graphed.params)
    return BaseModelOutputWithPast(last_hidden_state=_Replay.apply(graphed, input_ids, mask, *graphed.params))


class SharedPoolTooSmall(torch.OutOfMemoryError):
    """Out of memory recording a shape beside others' graphs again, after their pool was already dropped once."""


def _record_or_start_afresh(state: GraphedStack, input_ids: torch.Tensor, mask: torch.Tensor) -> ShapeGraphs:
    """`_record`, and once more in an empty pool if it ran out of memory while other shapes' graphs were kept.

    The shared pool keeps the free blocks of every earlier capture, and only a capture can reuse them; a
    shape longer than those before needs bigger blocks, so the pool grows past what any one shape needs
    (Qwen2.5-1.5B's QLoRA at 64 rows on a T4: 14.41 GiB held, 4.63 GiB of it free in the pool, at 9.79
    GiB allocated; bench/results/sweep_h100_t4_qwen15.md). Dropping every recording gives that memory
    back; the shapes seen again are recorded again (~1 s each on a 7B).

    Once per run: shapes that cannot share a pool would drop and record again at every switch, so the next
    such error is SharedPoolTooSmall (with `fall_back`, `_dispatch` turns the graphs off and trains on
    eagerly). An out-of-memory error in an empty pool is a real one and stays a torch.OutOfMemoryError
    (training.train's retry: a smaller micro-batch, or every micro-batch checkpointed)."""
    try:
        return _record(state, input_ids, mask)
    except torch.OutOfMemoryError as error:
        if not state.graphs:
            raise
        if state.started_afresh:
            raise SharedPoolTooSmall(f"out of memory recording batch shape {tuple(input_ids.shape)} beside other "
                                     "shapes' graphs after they were dropped once: train with cuda_graphs=False, "
                                     "or a smaller micro-batch") from error
    if is_main_process():
        kept = len(state.graphs)
        print(f"CUDA graphs: out of memory recording batch shape {tuple(input_ids.shape)} beside {kept} recorded "
              f"shape{'s' if kept > 1 else ''}: dropping their graphs to free their memory pool, recording afresh")
    state.started_afresh = True
    _drop_recordings(state)
    state.pool = torch.cuda.graph_pool_handle()
    return _record(state, input_ids, mask)


def _on_gpu(tensor: torch.Tensor) -> bool:
    return tensor.is_cuda


class ShapeGraphs:
    """The stack's forward and backward graphs for one batch shape, and the static tensors they read
    and write: the inputs, the last hidden state, its incoming gradient, the trainable weights' gradients.

    What torch.cuda.make_graphed_callables builds for one callable, kept here so that `release` can
    free it when training ends: make_graphed_callables leaves its graphs to the cyclic garbage
    collector (pytorch#195397), which kept their memory after training and may destroy a graph in
    the middle of another capture.
    """

    def __init__(self, stack: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, pool,
                 stream: torch.cuda.Stream, *, warm_up: bool):
        call = _StackCall(stack)
        self.params = [p for p in stack.parameters() if p.requires_grad]  # the adapters' weights
        self.inputs = (input_ids.clone(), mask.clone())
        self.forward_graph, self.backward_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        stream.wait_stream(torch.cuda.current_stream())
        if warm_up:
            # One pass first, on the stream the captures use, so that lazy initialisation (cuBLAS's
            # workspace for that stream among it) stays out of the graphs. One stream for every shape:
            # cuBLAS keeps a workspace per stream (~80 MB on an H200) for as long as the process runs.
            with torch.cuda.stream(stream):
                hidden = call(*self.inputs)
                torch.autograd.grad(hidden, self.params, torch.ones_like(hidden), allow_unused=True)
            torch.cuda.current_stream().wait_stream(stream)
            del hidden
        gc.collect()  # garbage that holds a CUDA graph must not be collected during a capture
        collecting = gc.isenabled()
        gc.disable()
        try:
            with torch.cuda.graph(self.forward_graph, pool=pool, stream=stream):
                hidden = call(*self.inputs)
            self.hidden_grad = torch.empty_like(hidden)
            with torch.cuda.graph(self.backward_graph, pool=pool, stream=stream):
                self.grads = torch.autograd.grad(hidden, self.params, self.hidden_grad, allow_unused=True)
        finally:
            if collecting:
                gc.enable()
        self.hidden = hidden.detach()  # (batch, padded length, hidden size); its autograd graph is spent

    def release(self) -> None:
        self.forward_graph.reset()
        self.backward_graph.reset()
        self.inputs = self.hidden = self.hidden_grad = self.grads = ()


class _Replay(torch.autograd.Function):
    """One autograd node for the whole stack: forward replays the forward graph, backward the backward one."""

    @staticmethod
    def forward(ctx, graphs: ShapeGraphs, input_ids: torch.Tensor, mask: torch.Tensor, *params: torch.Tensor):
        graphs.inputs[0].copy_(input_ids)
        graphs.inputs[1].copy_(mask)
        graphs.forward_graph.replay()
        ctx.graphs = graphs
        return graphs.hidden.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, hidden_grad: torch.Tensor):
        graphs = ctx.graphs
        graphs.hidden_grad.copy_(hidden_grad)
        graphs.backward_graph.replay()
        return (None, None, None, *(g.detach() if g is not None else None for g in graphs.grads))


def _record(state: GraphedStack, input_ids: torch.Tensor, mask: torch.Tensor) -> ShapeGraphs:
    """Record the stack's graphs for this batch shape (no gradient changes). RuntimeError naming the fix
    if capturing fails; an out-of-memory error stays one."""
    autocast = torch.is_autocast_enabled("cuda")
    try:
        # autocast's cache of cast weights would live outside the graphs' memory: off while capturing
        with torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=autocast, cache_enabled=False):
            recorded = ShapeGraphs(state.stack, input_ids, mask, state.pool, state.stream,
                                   warm_up=not state.warmed_up)
            state.warmed_up = True
            return recorded
    except torch.OutOfMemoryError:
        raise
    except Exception as error:
        raise RuntimeError(f"recording the CUDA graphs of {type(state.stack).__name__} for batch shape "
                           f"{tuple(input_ids.shape)} failed ({type(error).__name__}: {error}): train with "
                           "cuda_graphs=False.") from error


def _unalias_gradients(params: list[torch.nn.Parameter]) -> None:
    """Keep accumulated gradients out of the graphs' output buffers.

    autograd takes the backward graph's output tensor itself as a parameter's `.grad` when the
    parameter had none, so the next replay of the same graph would overwrite it: with gradient
    accumulation, a second micro-batch of the same shape would replace the first's gradients.
    Copying the gradients that already exist before each replay keeps them (a no-op in the usual
    step, which starts with no gradients).
    """
    for param in params:
        if param.grad is not None:
            param.grad = param.grad.clone()
