import json
import shutil

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from qlora_helpers import data
from qlora_helpers.data import Banking77Error


def test_loads_the_real_csvs_with_categories_order(banking77, banking77_dir):
    assert len(banking77.train) == 10_003
    assert len(banking77.test) == 3_080
    categories = json.loads((banking77_dir / "categories.json").read_text())
    assert banking77.label_names == categories
    assert banking77.num_labels == 77
    assert banking77.label_names[0] == "card_arrival"
    assert list(data.BANKING77_INTENTS) == categories
    first = banking77.train[0]
    assert first["label"] == 0 and "card" in first["text"]
    assert set(banking77.test["label"]) == set(range(77))


def test_env_var_chooses_the_folder(monkeypatch, banking77_dir, tmp_path):
    monkeypatch.setenv("BANKING77_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(Banking77Error, match="does not exist"):
        data.load_banking77()
    monkeypatch.setenv("BANKING77_DIR", str(banking77_dir))
    assert len(data.load_banking77().test) == 3_080


def test_the_folder_is_found_from_any_directory(monkeypatch, banking77_dir, tmp_path):
    """A process started in a temporary folder (a test's subprocess, a launcher) finds the same data."""
    monkeypatch.delenv("BANKING77_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert data.default_data_dir() == banking77_dir.resolve()
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.setattr(data, "PACKAGE_ROOT", elsewhere)  # an installed package, far from the data
    assert data.default_data_dir() is None
    with pytest.raises(Banking77Error, match="no Banking77 folder found: set BANKING77_DIR"):
        data.load_banking77(source="local")
    shutil.copytree(banking77_dir, tmp_path / "shared/data/banking77")  # ... unless the cwd is beside it
    monkeypatch.chdir(elsewhere)
    assert data.default_data_dir() == (tmp_path / "shared/data/banking77").resolve()


def test_a_tokenizer_that_yields_no_tokens_is_refused_at_tokenize(banking77):
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # a broken word-level tokenizer: its normalizer deletes everything but digits, so most rows vanish
    words = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]"))
    words.normalizer = normalizers.Replace(Regex("[^0-9 ]"), "")
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="[PAD]", name_or_path="broken-words")
    rows = banking77.train.select(range(40))
    with pytest.raises(Banking77Error, match=r"\w+ \(broken-words\) turned \d+ of 40 rows "
                                             r"into zero tokens, e.g. row \d+: '"):
        data.tokenize(rows, tokenizer)


def test_stratified_subsample_keeps_every_class_in_proportion(banking77):
    small = data.stratified_subsample(banking77.train, 1_000, seed=1)
    labels = np.asarray(small["label"])
    assert len(small) == 1_000  # as many as asked, not the sum of each class's rounded-down share
    assert set(labels) == set(range(77))
    full_share = np.bincount(banking77.train["label"], minlength=77) / len(banking77.train)
    small_share = np.bincount(labels, minlength=77) / len(labels)
    assert np.abs(full_share - small_share).max() < 0.005
    assert data.stratified_subsample(banking77.train, 1_000, seed=1)["text"] == small["text"]


def test_subsample_floor_per_class(banking77):
    tiny = data.stratified_subsample(banking77.train, 154, min_per_class=2)
    assert np.bincount(tiny["label"], minlength=77).min() >= 2 and len(tiny) == 154
    # one big class and 9 of 3 rows: the floor of 2 each takes 18 of 30 rows, the big class gets the other 12
    skewed = Dataset.from_dict({"text": [str(i) for i in range(127)],
                               "label": [0] * 100 + [c for c in range(1, 10) for _ in range(3)]})
    counts = np.bincount(data.stratified_subsample(skewed, 30, min_per_class=2)["label"])
    assert counts.tolist() == [12] + [2] * 9
    with pytest.raises(Banking77Error, match="at least 154"):
        data.stratified_subsample(banking77.train, 100, min_per_class=2)


def test_validation_split_is_stratified_and_disjoint(banking77):
    train, validation = data.train_validation_split(banking77.train, 0.1, seed=3)
    assert len(train) + len(validation) == len(banking77.train)
    # a partition of the rows: together they are exactly the original rows, none twice
    assert sorted(list(train["text"]) + list(validation["text"])) == sorted(banking77.train["text"])
    assert set(validation["label"]) == set(range(77))
    assert 0.09 < len(validation) / len(banking77.train) < 0.11


def test_tokenize_does_not_pad_and_records_lengths(banking77, tiny_qwen2):
    from qlora_helpers.modeling import load_tokenizer

    tokenizer = load_tokenizer(tiny_qwen2)
    rows = data.tokenize(banking77.test.select(range(50)), tokenizer, max_length=16)
    lengths = [len(ids) for ids in rows["input_ids"]]
    assert rows["length"] == lengths
    assert max(lengths) <= 16 and len(set(lengths)) > 1
    assert rows["label"] == banking77.test["label"][:50]


def _copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("problem, edit, message", [
    ("missing file", lambda f: (f / "test.csv").unlink(), "lacks test.csv"),
    ("bad columns", lambda f: (f / "train.csv").write_text("utterance,intent\nhi,card_arrival\n"),
     "needs 'text' and 'category'"),
    ("empty text", lambda f: (f / "test.csv").write_text("text,category\nhello,card_arrival\n ,card_arrival\n"),
     "1 empty text"),
    ("unknown intent", lambda f: (f / "test.csv").write_text("text,category\nhello,card_arival\n"),
     "test.csv has 1 row\\(s\\) whose intent is not in categories.json: 'card_arival' at row 1:"),
    ("no rows", lambda f: (f / "train.csv").write_text("text,category\n"), "train.csv has no rows"),
    ("bad categories", lambda f: (f / "categories.json").write_text("{not json"), "not valid JSON"),
])
def test_bad_folders_give_clear_errors(banking77_dir, tmp_path, problem, edit, message):
    folder = _copy_folder(banking77_dir, tmp_path / "b77")
    edit(folder)
    with pytest.raises(Banking77Error, match=message):
        data.load_banking77(folder)


def test_every_problem_of_a_folder_is_listed_at_once_with_its_rows(banking77_dir, tmp_path):
    """A user's folder with several faults used to be refused one fault per run, and an unknown intent
    without its row; now one message, before any model loads, lists them all."""
    folder = _copy_folder(banking77_dir, tmp_path / "b77")
    (folder / "train.csv").write_text("text,category\nhello,card_arrival\n  ,card_arrival\nhi,card_arival\n")
    (folder / "test.csv").write_text("text,category\n,card_arrival\nhey,nope\nyo,nope\n")
    with pytest.raises(Banking77Error) as error:
        data.check_folder(folder)
    message = str(error.value)
    assert f"Banking77 folder {folder} has 4 problem(s)" in message
    assert "train.csv has 1 empty text(s) at row 2:" in message
    assert "train.csv has 1 row(s) whose intent is not in categories.json: 'card_arival' at row 3:" in message
    assert "test.csv has 1 empty text(s) at row 1:" in message
    assert "test.csv has 2 row(s) whose intent is not in categories.json: 'nope' at rows 2, 3:" in message
    with pytest.raises(Banking77Error, match="has 4 problem"):
        data.load_banking77(folder)


def test_a_broken_10k_row_file_gives_a_readable_message(banking77_dir, tmp_path):
    """At most ten rows per problem and ten intents, then a count."""
    folder = _copy_folder(banking77_dir, tmp_path / "b77")
    rows = [("", "card_arrival") if i % 10 == 0 else (f"text {i}", f"intent_{i // 10 % 15}" if i % 10 == 1 else "card_arrival")
            for i in range(10_000)]
    (folder / "train.csv").write_text("text,category\n" + "".join(f"{text},{intent}\n" for text, intent in rows))
    with pytest.raises(Banking77Error) as error:
        data.check_folder(folder)
    message = str(error.value)
    assert "train.csv has 1000 empty text(s) at rows 1, 11, 21, 31, 41, 51, 61, 71, 81, 91 and 990 more:" in message
    assert "train.csv has 1000 row(s) whose intent is not in categories.json: 'intent_0' at rows 2, 152, 302," in message
    assert "; and 5 more intents:" in message  # 15 unknown intents, ten listed
    assert len(message) < 2_500


def test_unknown_source_is_refused():
    with pytest.raises(Banking77Error, match="unknown data source"):
        data.load_banking77(source="s3")


def test_an_unreachable_hub_says_how_to_use_a_local_copy(monkeypatch):
    """Offline, the hub's copy failed with datasets' bare ConnectionError (the kaggle-t4 profile here)."""
    import datasets

    def offline(name, revision):
        raise ConnectionError("Couldn't reach 'PolyAI/banking77' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(data.Banking77Error, match="could not read PolyAI/banking77 from the hub") as error:
        data.load_banking77(source="hub")
    assert "BANKING77_DIR=FOLDER" in str(error.value) and "--set data_source=local" in str(error.value)


def test_hub_rows_are_renumbered_in_categories_order(monkeypatch):
    """The hub copy numbers intents alphabetically; rows must come back in categories.json order."""
    hub_names = sorted(data.BANKING77_INTENTS)
    features = Features({"text": Value("string"), "label": ClassLabel(names=hub_names)})
    split = Dataset.from_dict({"text": ["where is my card", "activate it"],
                               "label": [hub_names.index("card_arrival"),
                                         hub_names.index("activate_my_card")]}, features=features)
    calls = {}

    def fake_load_dataset(name, revision):
        calls.update(name=name, revision=revision)
        return DatasetDict(train=split, test=split)

    import datasets
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    bank = data.load_banking77(source="hub")
    assert calls == {"name": "PolyAI/banking77", "revision": data.HUB_REVISION}
    assert bank.train["label"] == [0, data.BANKING77_INTENTS.index("activate_my_card")]
    assert bank.label_names == list(data.BANKING77_INTENTS)



def test_without_a_folder_auto_reads_the_hub_and_its_copy_can_be_saved_as_one(monkeypatch, tmp_path):
    """A machine with the internet and no ../shared/data/banking77: data_source "auto" (every profile's
    default but kaggle-t4's "hub") reads the hub; saved as a folder, the copy loads back the same rows."""
    import datasets

    from qlora_helpers.runners import profiles, runner

    hub_names = sorted(data.BANKING77_INTENTS)
    features = Features({"text": Value("string"), "label": ClassLabel(names=hub_names)})
    split = Dataset.from_dict({"text": ["where is my card", "activate it, please"],
                               "label": [hub_names.index("card_arrival"), hub_names.index("activate_my_card")]},
                              features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, revision: DatasetDict(train=split, test=split))
    monkeypatch.delenv("BANKING77_DIR", raising=False)
    monkeypatch.setattr(data, "default_data_dir", lambda: None)
    for profile in (profiles.DEMO, profiles.SMOKE):
        assert runner.local_data_dir(profile, {}) is None
        assert runner.reads_the_hub(profile, {}, None)
    assert not runner.reads_the_hub(profiles.DEMO, {"data_dir": str(tmp_path)}, None)
    with pytest.raises(runner.RunnerError, match="no Banking77 folder found"):
        runner.local_data_dir(profiles.DEMO, {"data_source": "local"})
    bank = data.load_banking77()  # "auto", no folder: the hub
    assert bank.source.startswith("PolyAI/banking77")
    again = data.load_banking77(data.save_folder(bank, tmp_path / "banking77"))
    assert again.train["text"] == bank.train["text"] and again.train["label"] == bank.train["label"]
    assert again.label_names == bank.label_names
