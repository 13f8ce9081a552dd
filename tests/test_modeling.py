import re

import pytest
import torch

from qlora_helpers import modeling
from qlora_helpers.modeling import ModelSetupError


def test_tokenizer_without_pad_token_pads_with_eos(tmp_path, banking77):
    from transformers import AutoTokenizer

    from qlora_helpers.offline_models import train_tiny_tokenizer

    train_tiny_tokenizer(banking77.test["text"][:200], vocab_size=300).save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token is None  # the pitfall is real here
    tokenizer = modeling.load_tokenizer(str(tmp_path))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"


def test_missing_pad_token_id_is_set_in_config(tiny_qwen2):
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tiny_qwen2).pad_token_id is None  # as in Qwen2.5's configs
    loaded = modeling.load_model(tiny_qwen2, "full", num_labels=77)
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token
    assert loaded.model.config.pad_token_id == loaded.tokenizer.pad_token_id
    batch = loaded.tokenizer(["a", "a much longer sentence here"], padding=True, return_tensors="pt")
    assert loaded.model(**batch).logits.shape == (2, 77)  # Qwen2 refuses batches > 1 without pad id


@pytest.mark.parametrize("method, trainable_share", [("full", (1.0, 1.0)), ("lora", (0.01, 0.5)),
                                                     ("qlora", (0.01, 0.5))])
def test_parameter_counts(tiny_qwen2, method, trainable_share):
    loaded = modeling.load_model(tiny_qwen2, method)
    low, high = trainable_share
    assert low <= loaded.trainable_params / loaded.total_params <= high
    assert loaded.footprint_bytes > 0
    assert f"[{method}]" in loaded.summary()


def test_qlora_quantizes_linear_layers_but_not_the_head(tiny_qwen2):
    import bitsandbytes as bnb

    loaded = modeling.load_model(tiny_qwen2, "qlora")
    layers = dict(loaded.model.named_modules())
    four_bit = [n for n, m in layers.items() if isinstance(m, bnb.nn.Linear4bit)]
    assert any(n.endswith("self_attn.q_proj.base_layer") for n in four_bit)
    assert any(n.endswith("mlp.down_proj.base_layer") for n in four_bit)
    assert not any("score" in n for n in four_bit)
    head = modeling.head_parameters(loaded.model)
    assert head and all(p.dtype == torch.float32 and p.requires_grad for p in head.values())
    weight = layers[four_bit[0]].weight
    assert weight.quant_state.quant_type == "nf4" and weight.quant_state.state2 is not None  # double quant
    full = modeling.load_model(tiny_qwen2, "lora")
    assert loaded.footprint_bytes < full.footprint_bytes
    assert "4-bit (" in loaded.summary() and "float32 (" in loaded.summary()  # the embeddings, norms, head


def test_bert_classifier_is_not_quantized(minilm_path):
    import bitsandbytes as bnb

    loaded = modeling.load_model(minilm_path, "qlora")
    heads = [n for n, m in loaded.model.named_modules() if n.endswith("classifier.modules_to_save.default")]
    assert heads and not isinstance(dict(loaded.model.named_modules())[heads[0]], bnb.nn.Linear4bit)
    assert isinstance(modeling.base_model(loaded.model).bert.encoder.layer[0].attention.self.query.base_layer,
                      bnb.nn.Linear4bit)


def test_unknown_method_is_refused_before_loading():
    with pytest.raises(ModelSetupError, match="unknown method 'qlra'.*full, lora, qlora"):
        modeling.load_model("/nonexistent", "qlra")


def test_qlora_without_bitsandbytes_says_how_to_install(monkeypatch):
    real_find_spec = modeling.importlib.util.find_spec
    monkeypatch.setattr(modeling.importlib.util, "find_spec",
                        lambda name: None if name == "bitsandbytes" else real_find_spec(name))
    with pytest.raises(ModelSetupError, match="pip install bitsandbytes"):
        modeling.load_model("/nonexistent", "qlora")


def test_bf16_on_a_t4_is_refused_and_fp16_chosen(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 claims
    assert modeling.choose_compute_dtype("cuda") == torch.float16
    with pytest.raises(ModelSetupError, match="Tesla T4.*no native bf16.*float16"):
        modeling.check_compute_dtype(torch.bfloat16, "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert modeling.choose_compute_dtype("cuda") == torch.bfloat16
    assert modeling.choose_compute_dtype("cpu") == torch.float32


def test_model_missing_offline_says_so():
    with pytest.raises(ModelSetupError, match="offline.*save_pretrained"):
        modeling.load_model("no-such-org/no-such-model-xyz", "lora")


@pytest.fixture(scope="module")
def tiny_qwen2_bnb_4bit(tiny_qwen2, tmp_path_factory):
    """The tiny Qwen2 saved as the hub's `...-bnb-4bit` repositories are: a causal LM in NF4 whose own
    quantization_config skips only `lm_head` (no classification head in it)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    folder = tmp_path_factory.mktemp("models") / "tiny-qwen2-bnb-4bit"
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=["lm_head"])
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, quantization_config=quantization, device_map={"": "cpu"})
    model.save_pretrained(folder)
    modeling.load_tokenizer(tiny_qwen2).save_pretrained(folder)
    return str(folder)


def test_already_quantized_checkpoint_trains_with_an_unquantized_head(tiny_qwen2_bnb_4bit, tiny_qwen2, small_split,
                                                                     tmp_path):
    import bitsandbytes as bnb

    from qlora_helpers import data, training

    loaded = modeling.load_model(tiny_qwen2_bnb_4bit, "qlora")
    layers = dict(loaded.model.named_modules())
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in layers.values())
    assert not any("score" in n for n, m in layers.items() if isinstance(m, bnb.nn.Linear4bit))
    head = modeling.head_parameters(loaded.model)
    before = {n: p.detach().clone() for n, p in head.items()}
    assert head and all(p.dtype == torch.float32 for p in head.values())
    rows = data.tokenize(small_split[0], loaded.tokenizer, max_length=64)
    training.train(loaded, rows, training.default_train_config(
        "qlora", output_dir=str(tmp_path), max_steps=3, batch_size=16, learning_rate=5e-3, save_steps=100))
    assert all(not torch.equal(before[n], p.detach()) for n, p in head.items())

    from qlora_helpers import export

    saved = export.save_trained(loaded, tmp_path / "adapter", list(data.BANKING77_INTENTS))
    with pytest.raises(ModelSetupError, match="already quantized: merging needs 16-bit weights.*base_model="):
        export.merge_to_16bit(saved, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    merged = export.merge_to_16bit(saved, tmp_path / "merged", torch.float32, base_model=tiny_qwen2)
    assert (merged / "model.safetensors").is_file()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_already_quantized_checkpoint_is_refused_for_16bit_methods(tiny_qwen2_bnb_4bit, method):
    with pytest.raises(ModelSetupError, match="already quantized.*bitsandbytes 4-bit.*16-bit base"):
        modeling.load_model(tiny_qwen2_bnb_4bit, method)


def test_given_configs_still_get_the_pitfall_handling(minilm_path):
    """A BitsAndBytesConfig that forgets the head and a LoraConfig without modules_to_save or task_type:
    BERT's `classifier` stays unquantized and trains in fp32, and the caller's configs are not changed."""
    import bitsandbytes as bnb
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"])
    loaded = modeling.load_model(minilm_path, "qlora", quantization_config=quantization, lora_config=lora)
    layers = dict(loaded.model.named_modules())
    four_bit = [n for n, m in layers.items() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and not any("classifier" in n for n in four_bit)
    assert layers[four_bit[0]].weight.quant_state.quant_type == "fp4"  # the given recipe, not the default
    head = modeling.head_parameters(loaded.model)
    assert head and all(p.dtype == torch.float32 and p.requires_grad for p in head.values())
    assert quantization.llm_int8_skip_modules is None and lora.modules_to_save is None and lora.task_type is None


@pytest.mark.parametrize("method, kwargs, problem", [
    ("full", {"lora_config": "lora"}, "lora_config was given for method='full'"),
    ("lora", {"quantization_config": "bnb"}, "quantization_config was given for method='lora'"),
    ("lora", {"lora_config": "lora", "lora_r": 4}, "set r, lora_alpha and lora_dropout in the LoraConfig"),
    ("qlora", {"quantization_config": "8bit"}, "needs a 4-bit quantization_config"),
    ("qlora", {"quantization_config": "bnb", "compute_dtype": torch.bfloat16}, "set bnb_4bit_compute_dtype"),
    ("lora", {"lora_config": "causal"}, "use task_type=TaskType.SEQ_CLS"),
])
def test_configs_that_do_not_fit_the_method_are_refused(tiny_qwen2, method, kwargs, problem):
    from peft import LoraConfig, TaskType
    from transformers import BitsAndBytesConfig

    configs = {"lora": LoraConfig(r=4), "causal": LoraConfig(task_type=TaskType.CAUSAL_LM),
               "bnb": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32),
               "8bit": BitsAndBytesConfig(load_in_8bit=True)}
    kwargs = {k: configs.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(ModelSetupError, match=re.escape(problem)):
        modeling.load_model(tiny_qwen2, method, **kwargs)


def test_summary_says_full_fine_tuning_keeps_fp32_weights(tiny_qwen2):
    loaded = modeling.load_model(tiny_qwen2, "full")
    loaded.compute_dtype = torch.float16  # as on a T4: the Trainer autocasts, the weights stay fp32
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert "loaded in float32; float16 autocast compute." in loaded.summary()


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_summary_names_every_dtype_the_weights_have(tiny_qwen2, method):
    """A 16-bit base with fp32 adapters and head says both, with each one's share of the weights."""
    loaded = modeling.load_model(tiny_qwen2, method, compute_dtype=torch.bfloat16)
    held = {}
    for param in loaded.model.parameters():
        kind = "4-bit" if modeling.is_packed_4bit(param) else str(param.dtype).removeprefix("torch.")
        held[kind] = held.get(kind, 0) + modeling.parameter_count(param)
    assert set(held) == ({"4-bit", "bfloat16", "float32"} if method == "qlora" else {"bfloat16", "float32"})
    line = loaded.summary()
    for kind, count in held.items():
        assert f"{kind} ({count / loaded.total_params:.0%})" in line, line
    assert "; bfloat16 compute." in line


def test_gemma_with_a_16_bit_base_computes_in_fp32_on_a_gpu_without_bf16(monkeypatch):
    """Gemma 3's activations overflow fp16 when its weights are fp16 (measured: inf after layer 8 of
    Gemma 3 270M); full fine-tuning keeps fp32 weights and fp16 autocast, which stays finite."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    for method in ("lora", "qlora"):
        assert modeling.choose_compute_dtype("cuda", model_type="gemma3_text", method=method) == torch.float32
        assert modeling.choose_compute_dtype("cuda", model_type="qwen2", method=method) == torch.float16
    assert modeling.choose_compute_dtype("cuda", model_type="gemma3_text", method="full") == torch.float16
    monkeypatch.setenv("QLORA_EMULATE_GPU", "t4")  # a bigger GPU playing a T4 decides the same
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert modeling.choose_compute_dtype("cuda", model_type="gemma3_text", method="lora") == torch.float32
    monkeypatch.delenv("QLORA_EMULATE_GPU")
    assert modeling.choose_compute_dtype("cuda", model_type="gemma3_text", method="lora") == torch.bfloat16


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_no_layer_is_swapped_for_a_hub_kernel(tiny_qwen2, method):
    """transformers >= 5.25 with `kernels` installed kernelizes a model by default, from kernels it fetches from
    the hub: offline (Kaggle with the internet off) that fails, and online it would train untested code."""
    loaded = modeling.load_model(tiny_qwen2, method, num_labels=77)
    assert modeling.base_model(loaded.model).use_kernels is False
