"""qlora_helpers.memory: the footprint it predicts is the real get_memory_footprint() of random Qwen2
models loaded by load_model (CPU, full / LoRA / QLoRA, fp32 and bf16), its fit answers, its
agreement with the library defaults, and its error against the H200 measurements in bench/results."""
import importlib.util
import inspect
import json
from pathlib import Path

import pytest
import torch

from qlora_helpers import defaults, memory, modeling, training
from qlora_helpers.memory import GIB, ModelShape

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def _bench():
    """bench/workload.py (loading bench/cli.py puts the repository on sys.path for `bench.*`)."""
    spec = importlib.util.spec_from_file_location("bench_cli", REPO / "bench" / "cli.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    from bench import workload

    return workload


# Two small shapes unlike each other: tied / untied embeddings, 2 / 4 kv heads, odd widths.
SHAPES = [ModelShape("tiny-tied", 96, 224, 2, 6, 2, 1024, True),
          ModelShape("tiny-untied", 128, 352, 3, 8, 4, 1536, False)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    bench = _bench()
    folder = tmp_path_factory.mktemp("memory_models")
    return {shape.name: bench.build_checkpoint(shape, folder / shape.name, "cpu") for shape in SHAPES}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_footprint_matches_get_memory_footprint(checkpoints, shape, method, dtype):
    if method == "full" and dtype == torch.bfloat16:
        pytest.skip("full fine-tuning always loads fp32 master weights")
    loaded = modeling.load_model(str(checkpoints[shape.name]), method, 77, compute_dtype=dtype, device="cpu")
    est = memory.estimate(shape, method, compute_dtype=dtype)
    assert est.footprint_bytes == loaded.footprint_bytes  # exact: same arithmetic as the loader
    base = modeling.base_model(loaded.model)
    with_adapters = base.get_memory_footprint()
    assert est.footprint_bytes + est.adapter_bytes == with_adapters  # fp32 adapters + head copy
    assert est.trainable_params == loaded.trainable_params


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_upcast_all_to_fp32_is_predicted(checkpoints, shape):
    """peft's prepare_model_for_kbit_training path: every non-4-bit weight becomes fp32."""
    loaded = modeling.load_model(str(checkpoints[shape.name]), "qlora", 77, compute_dtype=torch.bfloat16,
                                 device="cpu", upcast_all_to_fp32=True)
    est = memory.estimate(shape, "qlora", compute_dtype="bfloat16", upcast_all_to_fp32=True)
    assert est.footprint_bytes + est.adapter_bytes == modeling.base_model(loaded.model).get_memory_footprint()
    plain = memory.estimate(shape, "qlora", compute_dtype="bfloat16")
    assert est.adapter_bytes - plain.adapter_bytes == 2 * (shape.total_params() - shape.linear_params)


@pytest.mark.parametrize("family", ["qwen2", "llama", "gemma3_text"])
def test_shape_from_config_counts_the_weights_of_each_family(family):
    """from_config reads Llama's and Gemma 3's attention (no q/k/v bias; Gemma's head_dim 256 is not hidden / heads,
    so q_proj is wider than hidden): its linear and bias counts equal the built model's, which the checkpointing
    limit and the FLOPs rest on. Small configs of each family, random weights."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                 vocab_size=256, num_labels=77)
    config = AutoConfig.for_model(family, **sizes, **({"head_dim": 32} if family == "gemma3_text" else {}))
    model = AutoModelForSequenceClassification.from_config(config)
    shape = ModelShape.from_config(config)
    linears = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in name]
    assert shape.linear_params == sum(m.weight.numel() for m in linears)
    qkv_outputs = sum(out for name, (_, out) in shape.layer_linears().items() if name in ("q_proj", "k_proj", "v_proj"))
    assert shape.num_layers * qkv_outputs * shape.qkv_bias == sum(m.bias.numel() for m in linears if m.bias is not None)


def test_shape_from_config_and_real_qwen_sizes():
    from transformers import Qwen2Config

    config = Qwen2Config(**memory.QWEN2_5["7B"].config_kwargs())
    assert ModelShape.from_config(config, "Qwen2.5-7B") == memory.QWEN2_5["7B"]
    # Parameter counts of the published models (classifier with a 77-label head, no LM head).
    assert memory.QWEN2_5["0.5B"].total_params(0) == 494_032_768
    assert memory.QWEN2_5["7B"].linear_params == 6_525_288_448
    # The tutorial's 4-bit causal LM footprint (5.443e9 B) is the 7B NF4 body + two 16-bit vocab matrices.
    shape = memory.QWEN2_5["7B"]
    causal = memory.estimate(shape, "qlora", num_labels=0).footprint_bytes + 2 * shape.embedding_params
    assert round(causal / 1e9, 3) == 5.443


def test_estimator_defaults_match_the_library():
    for method in ("full", "lora", "qlora"):
        config = training.default_train_config(method)
        assert memory.DEFAULT_OPTIMIZER[method] == config.optimizer
        assert memory.DEFAULT_BATCH_SIZE[method] == config.batch_size
    signature = inspect.signature(modeling.load_model).parameters
    assert inspect.signature(memory.estimate).parameters["lora_dropout"].default == signature["lora_dropout"].default
    assert signature["gradient_checkpointing"].default is None  # None: on for qlora only
    assert memory.DEFAULT_CHECKPOINTING == {"full": False, "lora": False, "qlora": True}


def test_fit_table_answers():
    table = memory.fit_table()
    assert list(table.columns[-4:]) == ["T4", "L4", "A100-40GB", "A100-80GB"]
    assert len(table) == 9
    row = table.loc[("Qwen2.5-7B", "qlora")]
    assert row["T4"] == "yes" and row["batch"] == defaults.for_method("qlora").batch_size and row["footprint_gb"] == 4.35
    assert table.loc[("Qwen2.5-7B", "lora")][["T4", "L4", "A100-40GB", "A100-80GB"]].tolist() == ["no", "no", "no", "yes"]
    assert (table.loc[("Qwen2.5-7B", "full")][["T4", "L4", "A100-40GB", "A100-80GB"]] == "no").all()
    assert table.loc[("Qwen2.5-0.5B", "full")]["T4"] == "yes"
    assert table.loc[("Qwen2.5-1.5B", "full")][["T4", "A100-40GB"]].tolist() == ["no", "yes"]
    # A 16 GB card gets "no" once the predicted peak passes its memory; bigger batches cost more.
    small = memory.estimate("1.5B", "lora", batch_size=8, seq_len=64)
    large = memory.estimate("1.5B", "lora", batch_size=64, seq_len=128)
    assert small.fits("T4") and not large.fits("T4") and large.peak_bytes > small.peak_bytes


def test_paged_optimizer_state_is_outside_the_allocator_peak():
    paged = memory.estimate("7B", "qlora", optimizer="paged_adamw_8bit")
    plain = memory.estimate("7B", "qlora", optimizer="adamw_bnb_8bit")
    # the allocator holds only flat_optimizer's fp32 copies of the adapters' weights and gradients
    copies = 8 * sum(memory.QWEN2_5["7B"].lora_tensor_sizes(16) + [memory.QWEN2_5["7B"].head_params(77)])
    assert paged.optimizer_bytes == copies and paged.paged_optimizer_bytes > 0
    assert plain.optimizer_bytes == paged.paged_optimizer_bytes + copies
    assert plain.peak_bytes - paged.peak_bytes == paged.paged_optimizer_bytes


def _measured_cells() -> list[dict]:
    """The nine fixed-shape cells measured on the H200 (bench/results), latest run of each."""
    spec = importlib.util.spec_from_file_location("bench_summarize", REPO / "bench" / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.estimator_rows(module.load_runs(RESULTS))


def test_estimator_error_against_the_h200_measurements():
    rows = _measured_cells()
    assert {(r["model"], r["method"]) for r in rows} == {
        (f"Qwen2.5-{m}", k) for m in ("0.5B", "1.5B", "7B") for k in ("full", "lora", "qlora")}
    for r in rows:
        assert abs(r["footprint_error"]) <= 0.02, r
        assert abs(r["peak_error"]) <= 0.15, r
    measured = json.loads((RESULTS / "run2_h200_t4.json").read_text())["loads"]["Qwen2.5-7B:qlora"]
    assert memory.estimate("7B", "qlora").footprint_bytes == measured["footprint_bytes"] == 4_353_858_048
    assert measured["allocated_after_bytes"] / GIB < 4.4


def test_default_peak_on_a_t4_keeps_small_micro_batches_activations_and_matches_the_measured_run():
    """QLoRA's default checkpoints only micro-batches above the limit that leaves 1 GiB of a T4 spare: its peak is
    that limit's micro-batch without checkpointing, within 5% of the new default measured on the 7B shape."""
    every = memory.estimate("7B", "qlora", batch_size=64, seq_len=64)
    kept = memory.estimate("7B", "qlora", batch_size=64, seq_len=16, gradient_checkpointing=False)  # 1,024 tokens
    peak = memory.default_peak_bytes("7B", "qlora", "T4", batch_size=64, seq_len=64)
    assert peak == kept.peak_bytes > every.peak_bytes
    run = json.loads((RESULTS / "run14_h100_t4.json").read_text())  # the default with flat_optimizer's copies
    measured = next(r["peak_bytes"] for r in run["speed"] if r["config"] == "library_default")
    assert abs(peak / measured - 1) < 0.05, (peak / 2**30, measured / 2**30)
    lora = memory.estimate("1.5B", "lora", batch_size=32)  # no checkpointing: nothing to limit
    assert memory.default_peak_bytes("1.5B", "lora", "T4", batch_size=32) == lora.peak_bytes
