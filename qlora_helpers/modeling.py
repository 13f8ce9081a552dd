"""Load a sequence classifier for full fine-tuning, LoRA or QLoRA, with the pitfalls handled.

Pitfalls handled here: a tokenizer without a pad token (Qwen2 refuses batches > 1 without
`config.pad_token_id`), a classification head that would stay frozen or get quantized, bf16 asked
for on a T4 (where `torch.cuda.is_bf16_supported()` can say yes), the fp32 copy of every
non-4-bit weight that `prepare_model_for_kbit_training` makes, a checkpoint saved already 4-bit
(whose own quantization config would quantize the new head), and class names left as `LABEL_n`.
On Kaggle a hub id with a Kaggle Model attached (`model_sources`) loads from its mounted folder.
"""
from __future__ import annotations

import copy
import importlib.util
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from huggingface_hub import get_token
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig, set_seed

from . import defaults, emulation
from .distributed import local_device
from .offline_models import resolve_model_id

if TYPE_CHECKING:  # peft is imported where a LoRA model is built
    from peft import LoraConfig

METHODS = defaults.METHODS
HEAD_NAMES = ("score", "classifier")  # Qwen2/Llama-style and BERT-style classification heads
# Kaggle mounts the inputs attached to a notebook here; tests point it at a temporary folder.
KAGGLE_INPUT = Path("/kaggle/input")
# Hub id -> the same weights as a Kaggle Model, by the handle `model_sources` attaches
# (owner/model/framework/variation/version): no hub token is needed for a mounted model.
# The Qwen handles are those public Kaggle kernels attach and mount (not checked against Kaggle from here).
KAGGLE_MODELS = {"google/gemma-3-270m": "google/gemma-3/transformers/gemma-3-270m/2",
                 "Qwen/Qwen2.5-1.5B": "qwen-lm/qwen2.5/transformers/1.5b/1",
                 "Qwen/Qwen2.5-7B": "qwen-lm/qwen2.5/transformers/7b/1"}
# Models whose residual stream outgrows fp16 (largest finite value 65,504) when their weights are held in
# fp16: Gemma 3 270M's reaches ~1.0e5 on Banking77 utterances (inf after layer 8 of 18, then NaN logits;
# measured on CPU). Full fine-tuning's fp32 weights under fp16 autocast keep that stream in fp32 (only
# matmul outputs are fp16) and stay finite, so only a 16-bit base (lora, qlora) needs fp32 instead.
FP16_OVERFLOW_MODEL_TYPES = ("gemma3_text", "gemma3")


class ModelSetupError(ValueError):
    """A model cannot be set up as asked: the message names the problem and the fix."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    model_id: str
    method: str
    compute_dtype: torch.dtype
    footprint_bytes: int  # get_memory_footprint() right after loading, before any upcast
    trainable_params: int
    total_params: int
    kaggle_folder: str | None = None  # the mounted Kaggle Model the weights came from; None: model_id

    def summary(self) -> str:
        """One line: the id, method, the dtypes the weights really have (read from the parameters, each
        with its share of the weights, largest first; a packed 4-bit weight counts as the weights it
        holds), the compute dtype, footprint in GB (1e9 bytes) and the trainable share, e.g.
        `... [qlora] loaded in 4-bit (96%) + float32 (4%); float16 compute. footprint: X GB; ...`."""
        held = Counter()
        for param in self.model.parameters():
            held["4-bit" if is_packed_4bit(param) else dtype_name(param.dtype)] += parameter_count(param)
        weights = " + ".join(f"{kind} ({count / self.total_params:.0%})" for kind, count in held.most_common())
        if len(held) == 1:
            weights = next(iter(held))
        # full keeps fp32 weights whatever the compute dtype: the Trainer's AMP autocasts the matmuls.
        autocast = self.method == "full" and self.compute_dtype != torch.float32
        compute = dtype_name(self.compute_dtype) + (" autocast" if autocast else "")
        share = self.trainable_params / self.total_params
        model_type = getattr(base_model(self.model).config, "model_type", None)
        device = next(self.model.parameters()).device
        if device.type == "cuda" and self.compute_dtype == torch.float32 == choose_compute_dtype(
                device, model_type=model_type, method=self.method):  # fp32 only because fp16 overflows
            compute += (f" (not fp16: {model_type} activations overflow fp16, inf then NaN, with "
                        "16-bit weights; this GPU has no bf16)")
        origin = f" from the Kaggle Model at {self.kaggle_folder}" if self.kaggle_folder else ""
        return (f"{self.model_id} [{self.method}] loaded{origin} in {weights}; {compute} compute. footprint: "
                f"{self.footprint_bytes / 1e9:.3f} GB; trainable params: {self.trainable_params:,} of "
                f"{self.total_params:,} ({share:.2%})")


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.float16` -> "float16", as configs, results and tables write a dtype."""
    return str(dtype).removeprefix("torch.")


def kaggle_model_folder(model_id: str) -> Path | None:
    """The folder where Kaggle mounted the Kaggle Model standing for hub id `model_id`
    (KAGGLE_MODELS), if this runs on Kaggle and the folder holds a model; else None.

    Kaggle mounts a model at `<input>/<model>/<framework>/<variation>/<version>` and, since its
    inputs gained owner folders, at `<input>/models/<owner>/<model>/...`, with the framework spelt
    `transformers` or `Transformers`: all are looked for.
    """
    handle = KAGGLE_MODELS.get(model_id)
    if handle is None or "KAGGLE_KERNEL_RUN_TYPE" not in os.environ:
        return None
    owner, model, framework, rest = handle.split("/", 3)
    for spelling in dict.fromkeys((framework, framework.capitalize())):
        for folder in (KAGGLE_INPUT / "models" / owner / model / spelling / rest, KAGGLE_INPUT / model / spelling / rest):
            if (folder / "config.json").is_file():
                return folder
    return None


def model_source(model_id: str) -> str:
    """What from_pretrained reads for `model_id`: its mounted Kaggle Model, an offline model's
    folder (offline_models), else the id itself (a hub id or a local folder)."""
    folder = kaggle_model_folder(model_id)
    return str(folder) if folder else resolve_model_id(model_id)


def choose_compute_dtype(device: str | torch.device | None = None, *, model_type: str | None = None,
                         method: str = "full") -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are ~14x slower there), bf16 on Ampere or newer, fp16 below, except
    fp32 where fp16 would overflow: a model of FP16_OVERFLOW_MODEL_TYPES (`config.model_type`) whose
    weights `method` holds in 16-bit (lora, qlora).

    `torch.cuda.is_bf16_supported()` returns True on a T4 (bf16 is emulated, slowly), so the
    compute capability decides, not that call.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        return torch.float32
    # a bigger GPU standing in for a T4 (emulation.py) has no bf16 either
    if emulation.emulated_gpu() != "t4" and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.bfloat16
    return torch.float32 if fp16_overflows(model_type, method) else torch.float16


def fp16_overflows(model_type: str | None, method: str) -> bool:
    """True if `method` would hold this model's weights in fp16 and its activations overflow there."""
    return method != "full" and model_type in FP16_OVERFLOW_MODEL_TYPES


def check_compute_dtype(dtype: torch.dtype, device: str | torch.device | None = None) -> None:
    """Refuse bf16 on a GPU that cannot do it natively (T4, V100), before anything is loaded."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype == torch.bfloat16 and device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            raise ModelSetupError(
                f"bf16 compute was asked for, but {torch.cuda.get_device_name(device)} (compute "
                f"capability {major}.{minor}) has no native bf16: use compute_dtype=torch.float16 "
                "(or leave it unset to pick the fastest dtype this GPU supports)."
            )


def check_bitsandbytes() -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelSetupError(
            "method='qlora' needs bitsandbytes, which is not installed: `pip install bitsandbytes` "
            "(on Kaggle/Colab restart the kernel afterwards), or use method='lora'."
        )


def load_tokenizer(model_id_or_path: str):
    """Load the tokenizer and give it a pad token if it has none (reusing EOS, as Qwen2 does)."""
    tokenizer = AutoTokenizer.from_pretrained(model_id_or_path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelSetupError(f"tokenizer of {model_id_or_path} has neither a pad nor an EOS token "
                                  "to pad with: add one with tokenizer.add_special_tokens({'pad_token': ...}).")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def default_quantization_config(compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """The 4-bit recipe qlora loads with when given none (defaults.QUANTIZATION, the head unquantized)."""
    return BitsAndBytesConfig(**defaults.QUANTIZATION, bnb_4bit_compute_dtype=compute_dtype,
                              llm_int8_skip_modules=list(HEAD_NAMES))


def default_lora_config(method: str, r: int | None = None, alpha: int | None = None,
                        dropout: float | None = None) -> LoraConfig:
    """The `LoraConfig` lora and qlora use when given none: the method's defaults (defaults.py) for
    what is left None, adapters on all linear layers, the head trained in full."""
    from peft import LoraConfig, TaskType

    chosen = defaults.for_method(method)
    return LoraConfig(task_type=TaskType.SEQ_CLS, r=r or chosen.lora_r, lora_alpha=alpha or chosen.lora_alpha,
                      lora_dropout=chosen.lora_dropout if dropout is None else dropout,
                      target_modules=defaults.LORA_TARGET_MODULES, modules_to_save=list(HEAD_NAMES))


def load_model(
    model_id_or_path: str,
    method: str = "lora",
    num_labels: int = 77,
    *,
    compute_dtype: torch.dtype | None = None,
    quantization_config: BitsAndBytesConfig | None = None,
    lora_config: LoraConfig | None = None,
    lora_r: int | None = None,
    lora_alpha: int | None = None,
    lora_dropout: float | None = None,
    gradient_checkpointing: bool | None = None,
    upcast_all_to_fp32: bool = False,
    device: str | None = None,
    seed: int = 42,
    label_names: list[str] | None = None,
) -> LoadedModel:
    """Load `AutoModelForSequenceClassification` with a `num_labels`-way head, set up for `method`.

    full: every weight trains, in fp32 (master weights; on GPU the Trainer's AMP computes in 16-bit).
    lora: the base is frozen in 16-bit (fp32 on CPU); LoRA adapters on all linear layers plus the head train.
    qlora: the base is NF4 4-bit with double quantization and 16-bit compute; LoRA as above; the head
      stays unquantized.
    quantization_config (qlora) and lora_config (a peft `LoraConfig`; lora, qlora) are the recipe, as
    notebooks 02 and 03 build it; None builds the defaults (`default_quantization_config`,
    `default_lora_config`: defaults.py). A given one is copied and still made safe: the head joins its
    llm_int8_skip_modules and modules_to_save, and the compute dtype is checked against the GPU.
    lora_r, lora_alpha, lora_dropout (without a lora_config) and gradient_checkpointing left None
    take the method's default (defaults.py: checkpointing on for qlora only).
      upcast_all_to_fp32=True does what `prepare_model_for_kbit_training` does (every non-4-bit weight,
      embeddings included, to fp32: ~+1.1 GB on a 7B model); by default only the trainable
      weights (adapters, head) are fp32 and the frozen ones stay as loaded.
    seed fixes the random initialisation of a new head and of the adapters, so reruns are identical.
    label_names (one per class, in label-id order) name the classes in the config: see set_label_names.
    Raises ModelSetupError (the message says the fix) for an unknown method, a model that cannot be
    found or is gated, bf16 on a GPU without it, qlora without bitsandbytes, a config that does not
    fit the method, and a checkpoint saved already quantized (the hub's `...-bnb-4bit`) for any
    method but qlora.
    """
    if lora_config is not None and method == "full":
        raise ModelSetupError("a lora_config was given for method='full', which trains every weight: "
                              "use method='lora' or 'qlora', or drop the lora_config.")
    if lora_config is not None and (lora_r, lora_alpha, lora_dropout) != (None, None, None):
        raise ModelSetupError("both a lora_config and lora_r/lora_alpha/lora_dropout were given: set r, "
                              "lora_alpha and lora_dropout in the LoraConfig only.")
    loaded = load_base(model_id_or_path, method, num_labels, compute_dtype=compute_dtype,
                       quantization_config=quantization_config, device=device, seed=seed,
                       label_names=label_names)
    chosen = defaults.for_method(method)
    if gradient_checkpointing is None:
        gradient_checkpointing = chosen.gradient_checkpointing
    if method != "full":
        config = lora_config or default_lora_config(method, lora_r, lora_alpha, lora_dropout)
        loaded.model = _add_lora(loaded.model, method, config, gradient_checkpointing=gradient_checkpointing,
                                 upcast_all_to_fp32=upcast_all_to_fp32)
    elif gradient_checkpointing:
        loaded.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)
    loaded.trainable_params, loaded.total_params = count_parameters(loaded.model)
    return loaded


def load_base(model_id_or_path: str, method: str = "lora", num_labels: int = 77, *,
              compute_dtype: torch.dtype | None = None, quantization_config: BitsAndBytesConfig | None = None,
              device: str | None = None, seed: int = 42, label_names: list[str] | None = None) -> LoadedModel:
    """The base classifier as `method` loads it (fp32 for full, 16-bit for lora, NF4 for qlora),
    without adapters: what `load_model` builds on and what a saved adapter is loaded onto.
    quantization_config (qlora only): see load_model. label_names: see set_label_names.
    Raises ModelSetupError as load_model does."""
    if method not in METHODS:
        raise ModelSetupError(f"unknown method {method!r}: use one of {', '.join(METHODS)}.")
    if quantization_config is not None and method != "qlora":
        raise ModelSetupError(f"a quantization_config was given for method={method!r}, which loads the base "
                              "unquantized: use method='qlora', or drop the quantization_config.")
    if method == "qlora":
        check_bitsandbytes()
    device = device or local_device()
    emulation.apply_from_environment(device)
    if quantization_config is not None:
        quantization_config = _head_kept_unquantized(quantization_config, compute_dtype)
        compute_dtype = quantization_config.bnb_4bit_compute_dtype
    if compute_dtype is not None:
        check_compute_dtype(compute_dtype, device)

    model_id = str(model_id_or_path)
    kaggle_folder = kaggle_model_folder(model_id)
    model_id_or_path = model_source(model_id)
    tokenizer = _load_tokenizer_or_explain(model_id_or_path)
    config = AutoConfig.from_pretrained(model_id_or_path)
    if compute_dtype is None:
        compute_dtype = choose_compute_dtype(device, model_type=config.model_type, method=method)
    # Full fine-tuning keeps fp32 master weights; the Trainer's AMP does the 16-bit compute.
    load_dtype = torch.float32 if method == "full" else compute_dtype
    kwargs: dict = {"num_labels": num_labels, "dtype": load_dtype, "use_kernels": defaults.HUB_KERNELS}
    if method == "qlora":
        kwargs["quantization_config"] = quantization_config or default_quantization_config(compute_dtype)
        # The whole model on this process's device: under DDP every GPU holds a full 4-bit copy.
        kwargs["device_map"] = {"": torch.device(device)}
    saved = quantization_settings(config)
    if saved is not None:
        kwargs = _load_quantized_checkpoint(model_id, config, method, saved, kwargs, compute_dtype)
    set_seed(seed)  # a head missing from the checkpoint (BERT's classifier) is initialised here
    model = AutoModelForSequenceClassification.from_pretrained(model_id_or_path, **kwargs)
    if method != "qlora":
        model.to(device)
    else:
        keep_4bit_weights_in_training_layout(model)
    model.config.pad_token_id = tokenizer.pad_token_id
    if label_names is not None:
        set_label_names(model, label_names)
    trainable, total = count_parameters(model)
    return LoadedModel(model, tokenizer, model_id, method, compute_dtype, model.get_memory_footprint(),
                       trainable, total, str(kaggle_folder) if kaggle_folder else None)


def _head_kept_unquantized(config: BitsAndBytesConfig, compute_dtype: torch.dtype | None) -> BitsAndBytesConfig:
    """A copy of a given 4-bit config whose skip list holds the heads: transformers would quantize
    BERT's `classifier` (Qwen2's `score` it already skips), and a new head must train in full precision."""
    if not getattr(config, "load_in_4bit", False):
        raise ModelSetupError("method='qlora' needs a 4-bit quantization_config: "
                              "BitsAndBytesConfig(load_in_4bit=True, ...).")
    given = config.bnb_4bit_compute_dtype
    if compute_dtype is not None and given != compute_dtype:
        raise ModelSetupError(f"compute_dtype={compute_dtype} but the quantization_config computes in {given}: "
                              "set bnb_4bit_compute_dtype in the config only.")
    config = copy.deepcopy(config)
    config.llm_int8_skip_modules = list(dict.fromkeys([*(config.llm_int8_skip_modules or []), *HEAD_NAMES]))
    return config


def set_label_names(model: torch.nn.Module, label_names: list[str]) -> None:
    """Name the classes in the (base) model's config, `id2label` and `label2id`, so that whatever
    is saved from it answers `card_arrival`, not `LABEL_11`, in any transformers loader (a
    `pipeline("text-classification")` too). Raises ModelSetupError if the head has another size."""
    config = base_model(model).config
    if len(label_names) != config.num_labels:
        raise ModelSetupError(f"{len(label_names)} label names for a head of {config.num_labels} classes: "
                              "pass the label names of the data the model was trained on.")
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: index for index, name in enumerate(label_names)}


def saved_quantization(model_id_or_path: str) -> dict | None:
    """The `quantization_config` a checkpoint was saved with (e.g. the hub's `...-bnb-4bit`), or None
    for an unquantized one."""
    return quantization_settings(AutoConfig.from_pretrained(model_source(model_id_or_path)))


def quantization_settings(config) -> dict | None:
    """A model config's `quantization_config` as a dict (transformers holds an object or a dict), or
    None for an unquantized model."""
    settings = getattr(config, "quantization_config", None)
    if settings is None:
        return None
    return settings.to_dict() if hasattr(settings, "to_dict") else dict(settings)


def _load_quantized_checkpoint(model_id: str, config, method: str, saved: dict, kwargs: dict,
                               compute_dtype: torch.dtype) -> dict:
    """from_pretrained kwargs for a checkpoint saved already quantized.

    Its own quantization_config overrides the one passed to from_pretrained, and it quantizes every
    linear layer it does not skip: the new classification head too (the hub's `...-bnb-4bit` skip
    only `lm_head`), whose random initialisation then fails on packed bytes ("normal_kernel_cpu" not
    implemented for 'Byte'). So the head names join its skip list and the compute dtype is this
    device's. A bitsandbytes 4-bit checkpoint serves qlora only; nothing else can be trained here.
    """
    bits = "4-bit" if saved.get("load_in_4bit") else "8-bit" if saved.get("load_in_8bit") else ""
    kind = f"{saved.get('quant_method', 'unknown method')} {bits}".strip()
    bnb_4bit = saved.get("quant_method") == "bitsandbytes" and saved.get("load_in_4bit")
    if method != "qlora" or not bnb_4bit:
        raise ModelSetupError(
            f"{model_id} is a checkpoint already quantized ({kind}): method={method!r} needs the "
            "weights it was quantized from. Use the 16-bit base model's id (e.g. Qwen/Qwen2.5-7B, not "
            "unsloth/Qwen2.5-7B-bnb-4bit)" + (", or method='qlora'." if bnb_4bit else ".")
        )
    config = copy.deepcopy(config)  # the checkpoint's, as load_base read it
    config.num_labels = kwargs["num_labels"]
    skip = list(dict.fromkeys([*(saved.get("llm_int8_skip_modules") or []), *HEAD_NAMES]))
    config.quantization_config = {**saved, "llm_int8_skip_modules": skip,
                                  "bnb_4bit_compute_dtype": dtype_name(compute_dtype)}
    return {**{k: v for k, v in kwargs.items() if k not in ("num_labels", "quantization_config")},
            "config": config}


def keep_4bit_weights_in_training_layout(model: torch.nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    bitsandbytes 0.50 (nn/modules.py, Linear4bit.forward) repacks a layer's NF4 weights into the
    layout of its AVX-512 BF16 CPU kernel the first time the layer runs in eval mode without grad on
    a CPU that has that instruction set (`Linear4bit.support_avx512bf16_for_cpu`, read from
    `has_avx512bf16()` when the layer is built), and never packs them back: every later forward,
    training ones too, takes that inference-only path, which has no backward to the input and fails
    on `result += bias` ("a view of a leaf Variable that requires grad is being used in an in-place
    operation"). The repacking also rounds the double-quantized block scales to bf16, so an
    evaluation would change the model. With it off, CPU forwards dequantize as training does, on
    every CPU alike. GPU layers never take that path.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _load_tokenizer_or_explain(model_id_or_path: str):
    """Load the tokenizer; turn an offline hub miss or a refused gated model into advice before any
    weights are fetched."""
    if not Path(model_id_or_path).exists():
        use_kaggle_hub_token()
    try:
        return load_tokenizer(model_id_or_path)
    except OSError as error:
        if Path(model_id_or_path).exists():
            raise
        if status := _hub_refusal(error):
            raise ModelSetupError(_gated_model_advice(model_id_or_path, status)) from error
        raise ModelSetupError(
            f"cannot find model {model_id_or_path!r}: it is not a local folder and could not be "
            "fetched from the Hugging Face hub (offline, or a typo in the id). Online, check the id; "
            "offline, pass the path of a folder saved with save_pretrained()."
        ) from error


def use_kaggle_hub_token() -> None:
    """Copy a Kaggle secret named HF_TOKEN (Add-ons > Secrets) into $HF_TOKEN, where huggingface_hub
    looks for it; it finds $HF_TOKEN, `hf auth login` and Colab's secrets by itself, not Kaggle's."""
    if os.environ.get("HF_TOKEN"):
        return
    try:
        from kaggle_secrets import UserSecretsClient

        os.environ["HF_TOKEN"] = UserSecretsClient().get_secret("HF_TOKEN")
    except Exception:  # not on Kaggle, no such secret, or not attached to this notebook: go on without
        pass


def _hub_refusal(error: BaseException | None) -> int | None:
    """The HTTP status if the hub refused access (401/403: gated, private, no or a wrong token)
    anywhere in `error`'s chain (transformers wraps the hub's error in an OSError), else None."""
    while error is not None:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if isinstance(error, GatedRepoError) or (isinstance(error, HfHubHTTPError) and status in (401, 403)):
            return status or 403
        error = error.__cause__ or error.__context__
    return None


def _gated_model_advice(model_id: str, status: int) -> str:
    found = "A token was found: its account has no access yet." if get_token() else "No token was found."
    return (f"the Hugging Face hub refused {model_id!r} (HTTP {status}): the model is gated (a licence to accept) "
            f"or private, or the id is misspelled. Log in at https://huggingface.co/{model_id} and accept its "
            "terms, then give this notebook a token with read access named HF_TOKEN: on Kaggle a secret (Add-ons > "
            "Secrets, attached to this notebook), on Colab a secret (the key icon, notebook access on), elsewhere "
            f"`export HF_TOKEN=hf_...` or `hf auth login`. {found}")


def _add_lora(model, method: str, config: LoraConfig, *, gradient_checkpointing: bool, upcast_all_to_fp32: bool):
    """Wrap `model` with peft's LoRA (a copy of `config`, the model's head added to modules_to_save so
    it trains), trainable weights in fp32: the steps notebooks 02 and 03 show in their cells. Raises
    ModelSetupError for a task_type other than SEQ_CLS."""
    from peft import TaskType, get_peft_model, prepare_model_for_kbit_training

    if method == "qlora" and upcast_all_to_fp32:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)
    else:
        model = freeze_base(model, gradient_checkpointing=gradient_checkpointing)
    if config.task_type not in (None, TaskType.SEQ_CLS):
        raise ModelSetupError(f"LoraConfig(task_type={config.task_type!r}) for a sequence classifier: use "
                              "task_type=TaskType.SEQ_CLS (peft then trains the head and computes its loss).")
    config = copy.deepcopy(config)
    config.task_type = TaskType.SEQ_CLS
    heads = [name for name in HEAD_NAMES if hasattr(model, name)]
    config.modules_to_save = list(dict.fromkeys([*(config.modules_to_save or []), *heads]))
    model = get_peft_model(model, config)
    trainable_weights_to_fp32(model)
    return model


# Non-reentrant checkpointing: the reentrant kind needs an input that requires grad, which a frozen
# embedding's output does not.
CHECKPOINTING_KWARGS = {"use_reentrant": False}


def freeze_base(model: torch.nn.Module, *, gradient_checkpointing: bool) -> torch.nn.Module:
    """What peft's `prepare_model_for_kbit_training` does, without its fp32 copy of every frozen
    non-4-bit weight (embeddings, norms: ~1.1 GB on a 7B model): freeze every weight and turn on
    gradient checkpointing if asked. Returns `model`, ready for `get_peft_model`."""
    for param in model.parameters():
        param.requires_grad = False
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)
    return model


def trainable_weights_to_fp32(model: torch.nn.Module) -> None:
    """Hold the trainable weights (adapters, head) in fp32: the optimizer needs fp32 masters, and fp16
    mixed precision refuses fp16 gradients ("Attempting to unscale FP16 gradients")."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total), counting each packed 4-bit weight as the parameters it stands for."""
    trainable = total = 0
    for param in model.parameters():
        count = parameter_count(param)
        total += count
        if param.requires_grad:
            trainable += count
    return trainable, total


def is_packed_4bit(param: torch.Tensor) -> bool:
    """True for a bitsandbytes 4-bit weight (`Params4bit`: two weights a byte, uint8 storage)."""
    return param.__class__.__name__ == "Params4bit"


def parameter_count(param: torch.Tensor) -> int:
    """How many weights a tensor stands for: a packed 4-bit one holds two a byte."""
    if is_packed_4bit(param):
        return param.quant_state.shape.numel() if param.quant_state else param.numel() * 2
    return param.numel()


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (the model itself if it is not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's decoder layers, in order: the modules transformers checkpoints one by one
    (`GradientCheckpointingLayer`); empty for a model built otherwise."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


def head_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable classification-head tensors (the PEFT copy under `modules_to_save`, if any)."""
    return {name: param for name, param in model.named_parameters()
            if param.requires_grad and any(f"{head}." in name for head in HEAD_NAMES)}
