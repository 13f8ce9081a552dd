"""CUDA graphs for the decoder stack of a classifier in training (`TrainConfig.cuda_graphs`).

A QLoRA step on a small model, or on a 7B on a fast GPU, waits on kernel launches, not arithmetic:
Qwen2.5-7B's step launches ~11.6k GPU operations and keeps the GPU busy 27% of the time
(bench/results/SUMMARY.md, "Where a step's time goes"). `torch.cuda.make_graphed_callables`
records the decoder stack's forward, and its backward with the checkpointed layers' recomputation,
as two CUDA graphs that each replay with one launch. The head, the loss, the gradient scaler and
the optimizer stay eager, so the Trainer, its hooks and its callbacks see an ordinary model.

One pair of graphs per batch shape (micro-batch, padded length), recorded the first time that shape
trains; length-grouped batches padded to a multiple of 8 make a handful of shapes. All pairs share one
memory pool, which is safe because each micro-batch's backward replays before the next forward does.
The graphs compute what the eager stack computes (same kernels, same order), with two limits:
nothing random may run inside (LoRA dropout 0, no attention dropout), and one process only.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from .distributed import world_size
from .modeling import base_model, decoder_layers


@dataclass
class GraphedStack:
    """What `enable` changed on a model, so that `disable` can undo it."""
    stack: torch.nn.Module  # the decoder stack (e.g. Qwen2Model): embeddings, decoder layers, final norm
    graphs: dict[tuple[int, ...], object] = field(default_factory=dict)  # input_ids shape -> graphed callable
    pool: object = None  # the memory pool every capture shares (torch.cuda.graph_pool_handle)
    checkpoint_functions: dict[torch.nn.Module, object] = field(default_factory=dict)  # layer -> its own


class _StackCall(torch.nn.Module):
    """The stack as make_graphed_callables takes it: tensors in, one tensor out (last hidden state)."""

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


def enable(model: torch.nn.Module) -> GraphedStack:
    """Make `model`'s decoder stack replay CUDA graphs in training (idempotent: graphs recorded
    earlier are dropped). Evaluation, inference and unusual calls (embeddings passed in, a cache)
    run the stack eagerly.

    Raises ValueError, naming the fix, on CPU, under several processes, with dropout anywhere in
    the model, or for a model `decoder_stack` does not support.
    """
    if not torch.cuda.is_available():
        raise ValueError("cuda_graphs needs a CUDA GPU: train with cuda_graphs=False on CPU.")
    if world_size() > 1:
        raise ValueError(f"cuda_graphs runs in one process, not {world_size()}: train with cuda_graphs=False, "
                         "or on one GPU.")
    random = _random_modules(model)
    if random:
        raise ValueError(f"cuda_graphs needs a model without dropout (a replayed graph would drop the same "
                         f"units every time); found {', '.join(random[:3])}: set lora_dropout=0.")
    stack = decoder_stack(model)
    disable(model)
    state = GraphedStack(stack, pool=torch.cuda.graph_pool_handle())
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


def disable(model: torch.nn.Module) -> None:
    """Undo `enable` (nothing to undo: no-op); the graphs and their memory pool are released."""
    try:
        stack = decoder_stack(model)
    except ValueError:
        return
    state = stack.__dict__.pop("_qlora_graphs", None)
    if state is None:
        return
    del stack.forward  # the instance attribute: the class's forward is back
    for layer, own in state.checkpoint_functions.items():
        layer._gradient_checkpointing_func = own
    state.graphs.clear()
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
        graphed = state.graphs[key] = _record(state, input_ids, mask)
    _unalias_gradients(stack)
    return BaseModelOutputWithPast(last_hidden_state=graphed(input_ids, mask))


def _on_gpu(tensor: torch.Tensor) -> bool:
    return tensor.is_cuda


def _record(state: GraphedStack, input_ids: torch.Tensor, mask: torch.Tensor):
    """Record the stack's forward and backward for this batch shape (one warm-up pass on a side
    stream, then the captures; neither changes a gradient). RuntimeError naming the fix if it fails."""
    autocast = torch.is_autocast_enabled("cuda")
    try:
        # make_graphed_callables refuses autocast's weight cache; a cast inside the graph is replayed anyway
        with torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=autocast, cache_enabled=False):
            return torch.cuda.make_graphed_callables(_StackCall(state.stack), (input_ids.clone(), mask.clone()),
                                                     num_warmup_iters=1, pool=state.pool)
    except torch.OutOfMemoryError:
        raise
    except Exception as error:
        raise RuntimeError(f"recording the CUDA graphs of {type(state.stack).__name__} for batch shape "
                           f"{tuple(input_ids.shape)} failed ({type(error).__name__}: {error}): train with "
                           "cuda_graphs=False.") from error


def _unalias_gradients(stack: torch.nn.Module) -> None:
    """Keep accumulated gradients out of the graphs' output buffers.

    autograd takes the backward graph's output tensor itself as a parameter's `.grad` when the
    parameter had none, so the next replay of the same graph would overwrite it: with gradient
    accumulation, a second micro-batch of the same shape would replace the first's gradients.
    Copying the gradients that already exist before each replay keeps them (a no-op in the usual
    step, which starts with no gradients).
    """
    for param in stack.parameters():
        if param.grad is not None:
            param.grad = param.grad.clone()
