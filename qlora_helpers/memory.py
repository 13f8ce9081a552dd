"""How much GPU memory a fine-tuning run needs, predicted from the model's shape alone.

`estimate(shape, method, ...)` predicts two numbers for a Qwen2-style sequence classifier loaded by
`modeling.load_model` and trained by `training.build_trainer`:

- `footprint_bytes`: what `get_memory_footprint()` reports right after loading (the
  `LoadedModel.footprint_bytes` of the run): fp32 weights for full fine-tuning, 16-bit for LoRA,
  packed NF4 linear layers + 16-bit embeddings, norms, biases and head for QLoRA.
- `peak_bytes`: the CUDA allocator's peak while training (`torch.cuda.max_memory_allocated()`):
  resident weights (+ 4-bit quantization constants, LoRA adapters, the fp32 copy of the head),
  gradients, optimizer state, the activations kept for the backward pass and the largest transients.

`fit_table(...)` turns that into "does it fit on a T4 / L4 / A100" for the three notebooks' models.
Everything here is arithmetic on the model shape (no torch import), so it runs anywhere instantly.

The activation model, per token and decoder layer, counts the tensors autograd saves in the layer
as transformers 5 writes Qwen2 (RMSNorm in fp32, SDPA attention with k/v repeated to all heads when
a padding mask is present), PEFT's LoRA layers (dropout mask + dropped input per adapted module;
an input shared by q/k/v or gate/up is stored once when lora_dropout is 0) and bitsandbytes'
4-bit matmul (which saves no activation). With gradient checkpointing each layer keeps only its
input and one layer is recomputed at a time. bench/speed.py checks it against measured peaks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .defaults import DEFAULTS

GIB = 2**30
GB = 10**9

# Default optimizer, checkpointing and micro-batch per method: the same as
# training.default_train_config and modeling.load_model (tests/test_memory.py checks that they agree).
# Each method's defaults (defaults.py), as the estimator uses them.
DEFAULT_OPTIMIZER = {method: d.optimizer for method, d in DEFAULTS.items()}
DEFAULT_CHECKPOINTING = {method: d.gradient_checkpointing for method, d in DEFAULTS.items()}
DEFAULT_BATCH_SIZE = {method: d.batch_size for method, d in DEFAULTS.items()}
BNB_8BIT_MIN_SIZE = 4096  # bitsandbytes keeps 32-bit state for tensors smaller than this


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a Qwen2-style config that decide memory and FLOPs."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int = 151936
    tie_word_embeddings: bool = False
    qkv_bias: bool = True  # Qwen2 has biases on q, k and v (none on o and the MLP); Llama and Gemma none
    attention_head_dim: int = 0  # 0: hidden_size / num_heads (Qwen2, Llama); Gemma 3 sets its own (256)

    @classmethod
    def from_config(cls, config, name: str | None = None) -> "ModelShape":
        """The shape of a transformers config: Qwen2's (no attention_bias field: biases on q, k, v), Llama's or
        Gemma 3's (attention_bias False; Gemma's head_dim is not hidden_size / heads)."""
        head_dim = getattr(config, "head_dim", None) or 0
        return cls(name or getattr(config, "_name_or_path", "") or config.model_type,
                   config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                   config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads,
                   config.vocab_size, bool(getattr(config, "tie_word_embeddings", False)),
                   qkv_bias=bool(getattr(config, "attention_bias", config.model_type == "qwen2")),
                   attention_head_dim=0 if head_dim * config.num_attention_heads == config.hidden_size else head_dim)

    def config_kwargs(self) -> dict:
        """Keyword arguments for `transformers.Qwen2Config` (real Qwen2.5 defaults for the rest)."""
        return dict(hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                    num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
                    num_key_value_heads=self.num_kv_heads, vocab_size=self.vocab_size,
                    tie_word_embeddings=self.tie_word_embeddings, max_position_embeddings=32768,
                    rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu")

    @property
    def head_dim(self) -> int:
        return self.attention_head_dim or self.hidden_size // self.num_heads

    @property
    def q_dim(self) -> int:
        """Width of q_proj's output and o_proj's input: hidden_size, except where head_dim is set apart."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def layer_linears(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer in one decoder layer."""
        h, i, q, kv = self.hidden_size, self.intermediate_size, self.q_dim, self.kv_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        """Weights of all decoder-layer linear layers: what NF4 quantizes."""
        return self.num_layers * sum(a * b for a, b in self.layer_linears().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def small_params(self) -> int:
        """Biases and norm weights: never quantized."""
        bias = (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        return self.num_layers * (bias + 2 * self.hidden_size) + self.hidden_size

    def head_params(self, num_labels: int) -> int:
        return num_labels * self.hidden_size

    def total_params(self, num_labels: int = 77) -> int:
        return self.linear_params + self.embedding_params + self.small_params + self.head_params(num_labels)

    def matmul_params(self, num_labels: int = 77) -> int:
        """Parameters that take part in a matmul per token (no embedding lookup): N in 2·N·tokens."""
        return self.linear_params + self.head_params(num_labels)

    def lora_tensor_sizes(self, r: int) -> list[int]:
        sizes = []
        for in_f, out_f in self.layer_linears().values():
            sizes += [r * in_f, out_f * r]
        return sizes * self.num_layers

    def lora_params(self, r: int) -> int:
        return sum(self.lora_tensor_sizes(r))

    def full_tensor_sizes(self, num_labels: int) -> list[int]:
        h, kv = self.hidden_size, self.kv_dim
        layer = [a * b for a, b in self.layer_linears().values()] + [h, h]
        if self.qkv_bias:
            layer += [self.q_dim, kv, kv]
        return [self.embedding_params, h, num_labels * h] + layer * self.num_layers


# The real configs (config.json of each Hugging Face repo), written out because nothing can be
# downloaded here. Qwen2.5-7B and -14B have a padded vocabulary of 152064 rows; the smaller ones
# 151936 (that is why the 7B 4-bit causal LM measures 5.443e9 B, not 5.441e9).
QWEN2_5 = {
    "0.5B": ModelShape("Qwen2.5-0.5B", 896, 4864, 24, 14, 2, 151936, True),
    "1.5B": ModelShape("Qwen2.5-1.5B", 1536, 8960, 28, 12, 2, 151936, True),
    "3B": ModelShape("Qwen2.5-3B", 2048, 11008, 36, 16, 2, 151936, True),
    "7B": ModelShape("Qwen2.5-7B", 3584, 18944, 28, 28, 4, 152064, False),
    "14B": ModelShape("Qwen2.5-14B", 5120, 13824, 48, 40, 8, 152064, False),
}


@dataclass(frozen=True)
class GPU:
    name: str
    memory_mib: int  # what nvidia-smi reports as total
    bf16: bool
    context_mib: int = 500  # CUDA context + cuBLAS/cuDNN workspaces, outside PyTorch's allocator

    @property
    def usable_bytes(self) -> int:
        return (self.memory_mib - self.context_mib) * 2**20


GPUS = {
    "T4": GPU("T4", 15360, bf16=False),
    "L4": GPU("L4", 23034, bf16=True),
    "A100-40GB": GPU("A100-40GB", 40960, bf16=True),
    "A100-80GB": GPU("A100-80GB", 81920, bf16=True),
}
FRAGMENTATION = 0.05  # share of the allocator peak kept free for fragmentation when answering "fits"

# Calibration, from one probe on an H200 (run 1's probe, bench/ at 4a53963, Qwen2.5-0.5B shape,
# torch 2.11, transformers 5.17, peft 0.21, bitsandbytes 0.50.2, fp16 autocast, batches of 8 and 16
# x 64 tokens): what autograd kept per token and layer beyond the tensors counted analytically
# below, in units of hidden_size, and with gradient checkpointing the share of one un-checkpointed
# layer that is alive at the backward peak, on top of the stored layer inputs. Keyed by
# (method, lora_dropout > 0). Validated on the other shapes (1.5B, 7B) by the benchmark's estimator cells.
EXTRA_PER_LAYER_H = {("full", False): 5.6, ("full", True): 5.6, ("lora", True): 2.0, ("lora", False): 11.8,
                     ("qlora", True): 2.7, ("qlora", False): 4.4}
CHECKPOINT_LAYER_SHARE = {("full", False): 1.0, ("full", True): 1.0, ("lora", True): 1.42, ("lora", False): 1.18,
                          ("qlora", True): 0.81, ("qlora", False): 0.77}


@dataclass
class MemoryEstimate:
    model: str
    method: str
    batch_size: int
    seq_len: int
    gradient_checkpointing: bool
    optimizer: str
    compute_bytes: int
    footprint_bytes: int  # get_memory_footprint() after loading (LoadedModel.footprint_bytes)
    quant_state_bytes: int  # NF4 absmax/scales: on the GPU, not counted by get_memory_footprint()
    adapter_bytes: int  # fp32 LoRA adapters + the trainable fp32 copy of the head (+ upcasts)
    trainable_params: int
    gradient_bytes: int
    optimizer_bytes: int  # optimizer state in PyTorch's allocator
    paged_optimizer_bytes: int  # paged (CUDA managed) optimizer state: not in max_memory_allocated
    autocast_cache_bytes: int  # 16-bit copies of fp32 weights that autocast keeps (full fine-tuning)
    activation_bytes: int  # tensors saved for backward (all layers, or checkpoints + one layer)
    transient_bytes: int  # largest short-lived buffers (MLP grads, a dequantized 4-bit weight)
    optimizer_step_bytes: int  # temporaries of the optimizer step (foreach AdamW)
    peak_bytes: int = 0  # predicted torch.cuda.max_memory_allocated()
    per_token_layer_bytes: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def resident_bytes(self) -> int:
        """Weights on the device after load_model: footprint + quantization constants + adapters."""
        return self.footprint_bytes + self.quant_state_bytes + self.adapter_bytes

    def device_bytes(self, gpu: GPU | str) -> int:
        """What the GPU must hold: allocator peak with a fragmentation margin, paged state, context."""
        gpu = GPUS[gpu] if isinstance(gpu, str) else gpu
        return int(self.peak_bytes * (1 + FRAGMENTATION) + self.paged_optimizer_bytes
                   + gpu.context_mib * 2**20)

    def fits(self, gpu: GPU | str) -> bool:
        gpu = GPUS[gpu] if isinstance(gpu, str) else gpu
        return self.device_bytes(gpu) <= gpu.memory_mib * 2**20

    def as_dict(self) -> dict:
        return {**asdict(self), "resident_bytes": self.resident_bytes}


def _bytes_of(dtype) -> int:
    if isinstance(dtype, int):
        return dtype
    name = str(dtype).replace("torch.", "")
    return {"float32": 4, "float": 4, "fp32": 4, "float16": 2, "half": 2, "fp16": 2, "bfloat16": 2,
            "bf16": 2}[name]


def optimizer_state_bytes(sizes: list[int], optimizer: str, *, flat: bool = False) -> tuple[int, int, int]:
    """(allocator-tracked state, paged state, step temporaries) for tensors of these sizes. flat: a bitsandbytes
    optimizer runs on flat buffers (flat_optimizer, the adapter methods): the same state, and fp32 copies of the
    weights and their gradients in the allocator."""
    name = optimizer.lower()
    total = sum(sizes)
    if name in ("sgd",):
        return 0, 0, 0
    if "8bit" in name or name == "adamw_bnb_8bit":
        state = sum(2 * n + 2 * 4 * -(-n // 256) if n >= BNB_8BIT_MIN_SIZE else 8 * n for n in sizes)
        copies = 8 * total if flat else 0
        return (copies, state, 0) if name.startswith("paged") else (state + copies, 0, 0)
    if name.startswith("paged"):  # paged_adamw_32bit
        return 0, 8 * total, 0
    # torch AdamW: two fp32 moments. The default foreach step allocates one more fp32 copy
    # (sqrt of the second moment); the fused kernel allocates none.
    step = 0 if "fused" in name else 4 * total
    return 8 * total, 0, step


def activation_bytes_per_token_layer(shape: ModelShape, method: str, *, compute_bytes: int = 2,
                                     lora_dropout: float = 0.05, lora_r: int = 16,
                                     padding_mask: bool = True) -> float:
    """Bytes saved for backward per token in one decoder layer, without checkpointing (CUDA autocast).

    full (fp32 weights, 16-bit autocast): both RMSNorms keep two fp32 tensors (input and normalised
    output, the latter for the norm weight's gradient); q/k/v and gate/up each keep their own
    16-bit cast of the input; attention keeps q, k, v (repeated to all heads under a padding mask),
    the output (which o_proj reads without a copy) and the log-sum-exp; the MLP keeps gate, SiLU and
    up outputs and down's input. LoRA/QLoRA (frozen 16-bit or 4-bit base): each norm keeps an fp32
    copy of its input; each adapted module keeps a 1-byte dropout mask and the dropped input
    (without dropout the adapters keep their input, shared by q/k/v, by gate/up, and with attention's
    output for o_proj); the base matmuls keep nothing per token.
    """
    h, i, q, a = shape.hidden_size, shape.intermediate_size, shape.q_dim, compute_bytes
    kv_saved = 2 * a * q if padding_mask else 2 * a * shape.kv_dim
    attention = 2 * a * q + kv_saved + 4 * shape.num_heads  # q, k, v, output, log-sum-exp
    mlp = 3 * a * i  # gate output, SiLU output, up output
    if method == "full":
        if a == 4:  # fp32 without autocast: q/k/v share one saved input, gate/up another
            return 2 * (4 * h + 4 * h) + attention + 4 * h + mlp + 4 * i
        return 2 * (4 * h + 4 * h) + 3 * a * h + attention + 2 * a * h + mlp + a * i
    norms = 2 * 4 * h
    lora_small = 7 * lora_r * a  # lora_A outputs, saved by lora_B
    if lora_dropout > 0:
        adapted = 3 * (1 + a) * h + (1 + a) * q + 2 * (1 + a) * h + (1 + a) * i
    else:
        adapted = a * h + 0 + a * h + a * i
    return norms + adapted + attention + mlp + lora_small


def _calibrated_per_layer(shape: ModelShape, method: str, a: int, lora_dropout: float, lora_r: int,
                          padding_mask: bool) -> float:
    analytic = activation_bytes_per_token_layer(shape, method, compute_bytes=a, lora_dropout=lora_dropout,
                                                lora_r=lora_r, padding_mask=padding_mask)
    extra = EXTRA_PER_LAYER_H[(method, lora_dropout > 0)] * shape.hidden_size if a == 2 else 0.0
    return analytic + extra


def estimate(shape: ModelShape | str, method: str, *, batch_size: int = 32, seq_len: int = 64,
             num_labels: int = 77, gradient_checkpointing: bool | None = None,
             optimizer: str | None = None, compute_dtype="float16", lora_r: int = 16,
             lora_dropout: float | None = None, upcast_all_to_fp32: bool = False,
             padding_mask: bool = True) -> MemoryEstimate:
    """Predict the footprint and the peak training memory of `method` on `shape`.

    seq_len is the padded length of the longest batch (max_length for a worst case);
    compute_dtype is the 16-bit dtype on a GPU (pass "float32" for a CPU run, where load_model keeps
    LoRA/QLoRA's unquantized weights in fp32). padding_mask=False models batches without padding
    (attention runs on un-repeated k/v).
    """
    if isinstance(shape, str):
        shape = QWEN2_5[shape]
    if method not in DEFAULT_OPTIMIZER:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(DEFAULT_OPTIMIZER)}.")
    lora_dropout = DEFAULTS[method].lora_dropout if lora_dropout is None else lora_dropout
    a = _bytes_of(compute_dtype)
    ckpt = DEFAULT_CHECKPOINTING[method] if gradient_checkpointing is None else gradient_checkpointing
    optimizer = optimizer or DEFAULT_OPTIMIZER[method]
    tokens = batch_size * seq_len
    h, L = shape.hidden_size, shape.num_layers
    total = shape.total_params(num_labels)
    buffers = 2 * 4 * (shape.head_dim // 2)  # rotary inv_freq and original_inv_freq (fp32)
    notes = []

    # Weights as loaded.
    quant_state = upcast = 0
    if method == "full":
        footprint = 4 * total + buffers
    elif method == "lora":
        footprint = a * total + buffers
    else:
        unquantized = total - shape.linear_params
        footprint = shape.linear_params // 2 + a * unquantized + buffers
        # per 64-weight block an 8-bit absmax (double quant), per 256 blocks an fp32 scale, + small
        blocks = -(-shape.linear_params // 64)
        quant_state = blocks + 4 * -(-blocks // 256) + 7 * L * 2 * 256 * 4
        if upcast_all_to_fp32:
            upcast = (4 - a) * unquantized
    if method == "full":
        trainable_sizes = shape.full_tensor_sizes(num_labels)
        adapters = 0
    else:
        trainable_sizes = shape.lora_tensor_sizes(lora_r) + [shape.head_params(num_labels)]
        adapters = 4 * sum(trainable_sizes) + upcast  # fp32 adapters and head copy
    trainable = sum(trainable_sizes)
    gradients = 4 * trainable
    opt_state, opt_paged, opt_step = optimizer_state_bytes(trainable_sizes, optimizer, flat=method != "full")

    # Autocast keeps a 16-bit copy of each fp32 weight used in a matmul until the forward ends
    # (and, without checkpointing, until backward has used it).
    cache = (2 * shape.matmul_params(num_labels)) if (method == "full" and a == 2) else 2 * (trainable if a == 2 else 0)

    per_layer = _calibrated_per_layer(shape, method, a, lora_dropout, lora_r, padding_mask)
    residual = 4 if method == "full" else a  # dtype of the residual stream between layers
    head = 4 * h + 2 * a * h  # final norm, the head's input
    largest_linear = max(x * y for x, y in shape.layer_linears().values())
    dequantized = a * largest_linear if method == "qlora" else 0  # one 4-bit weight, dequantized
    if ckpt:
        share = CHECKPOINT_LAYER_SHARE[(method, lora_dropout > 0)]
        activations = tokens * (L * residual * h + head + share * per_layer)
        transient = dequantized
        notes.append("gradient checkpointing: each layer keeps its input; one layer is recomputed at a time")
    else:
        activations = tokens * (L * per_layer + head)
        transient = 3 * a * shape.intermediate_size * tokens + dequantized

    resident = footprint + quant_state + adapters
    during_backward = cache + activations + transient
    optimizer_phase = gradients + opt_step
    peak = resident + opt_state + max(during_backward + (0 if method == "full" else gradients), optimizer_phase)
    return MemoryEstimate(
        model=shape.name, method=method, batch_size=batch_size, seq_len=seq_len, gradient_checkpointing=ckpt,
        optimizer=optimizer, compute_bytes=a, footprint_bytes=int(footprint), quant_state_bytes=int(quant_state),
        adapter_bytes=int(adapters), trainable_params=int(trainable), gradient_bytes=int(gradients),
        optimizer_bytes=int(opt_state), paged_optimizer_bytes=int(opt_paged), autocast_cache_bytes=int(cache),
        activation_bytes=int(activations), transient_bytes=int(transient), optimizer_step_bytes=int(opt_step),
        peak_bytes=int(peak), per_token_layer_bytes=per_layer, notes=notes)


def tokens_without_checkpointing(shape: ModelShape | str, method: str, gpu: GPU | str, *, batch_size: int,
                                 max_length: int = 64, pad_to_multiple_of: int = 8, spare_bytes: int = GIB,
                                 **kwargs) -> int:
    """The most padded tokens (batch_size x a padded length up to max_length) that a micro-batch of
    `method` on `shape` can train with gradient checkpointing off on `gpu` and `spare_bytes` left over
    (`estimate`'s device_bytes): what TrainConfig.checkpoint_above_tokens takes. 0 if no length fits.
    kwargs go to `estimate` (optimizer, lora_r, ...)."""
    gpu = GPUS[gpu] if isinstance(gpu, str) else gpu
    fitting = 0
    for length in range(pad_to_multiple_of, max_length + 1, pad_to_multiple_of):
        est = estimate(shape, method, batch_size=batch_size, seq_len=length, gradient_checkpointing=False, **kwargs)
        if est.device_bytes(gpu) + spare_bytes > gpu.memory_mib * 2**20:
            break
        fitting = batch_size * length
    return fitting


def default_peak_bytes(shape: ModelShape | str, method: str, gpu: GPU | str, *, batch_size: int, seq_len: int = 64,
                       **kwargs) -> int:
    """The allocator peak of `method`'s defaults on `gpu` (bytes): where the method checkpoints, micro-batches of up
    to `tokens_without_checkpointing` tokens keep their activations instead (TrainConfig.checkpoint_above_tokens
    "auto"), so the peak is the larger of that micro-batch without checkpointing and the longest one with it.
    The 7B's QLoRA on a T4: 11.2 GiB predicted, 11.45 measured (bench/results/run11_h100_t4.json); with every
    micro-batch checkpointed, 6.2. kwargs go to `estimate`."""
    kwargs.pop("gradient_checkpointing", None)
    every = estimate(shape, method, batch_size=batch_size, seq_len=seq_len, **kwargs)
    tokens = tokens_without_checkpointing(shape, method, gpu, batch_size=batch_size, max_length=seq_len, **kwargs)
    if not every.gradient_checkpointing or tokens == 0:
        return every.peak_bytes
    kept = estimate(shape, method, batch_size=batch_size, seq_len=tokens // batch_size, gradient_checkpointing=False,
                    **kwargs)
    return max(every.peak_bytes, kept.peak_bytes)


def fit_table(models=("0.5B", "1.5B", "7B"), methods=("full", "lora", "qlora"), gpus=("T4", "L4", "A100-40GB", "A100-80GB"),
              *, batch_size: int | None = None, seq_len: int = 64, **kwargs):
    """One row per model x method: footprint, predicted peak, the peak on a T4 where the default's checkpointing limit
    lets small micro-batches keep their activations (default_peak_bytes), and whether it fits each GPU.

    batch_size None means each method's default micro-batch (DEFAULT_BATCH_SIZE, from defaults.py);
    seq_len is the padded length of the longest batch (the notebooks truncate at 64 tokens).
    A cell says "yes" when the allocator peak plus 5% for fragmentation, any paged optimizer state
    and ~0.5 GiB of CUDA context fit the card's memory. kwargs go to `estimate` (optimizer,
    gradient_checkpointing, lora_r, ...); the defaults are each method's defaults.
    """
    import pandas as pd

    rows = []
    for model in models:
        shape = QWEN2_5[model] if isinstance(model, str) else model
        for method in methods:
            batch = batch_size or DEFAULT_BATCH_SIZE[method]
            est = estimate(shape, method, batch_size=batch, seq_len=seq_len, **kwargs)
            row = {"model": shape.name, "method": method, "batch": batch,
                   "checkpointing": "on" if est.gradient_checkpointing else "off", "optimizer": est.optimizer,
                   "footprint_gb": round(est.footprint_bytes / GB, 2), "peak_gib": round(est.peak_bytes / GIB, 1)}
            # on a T4 the default spends memory left over on keeping small micro-batches' activations
            t4_peak = default_peak_bytes(shape, method, "T4", batch_size=batch, seq_len=seq_len, **kwargs)
            row["t4_default_peak_gib"] = round(t4_peak / GIB, 1) if est.fits("T4") else "-"
            for gpu in gpus:
                row[gpu] = "yes" if est.fits(gpu) else "no"
            rows.append(row)
    return pd.DataFrame(rows).set_index(["model", "method"])
