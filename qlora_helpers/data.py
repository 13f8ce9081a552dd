"""Banking77: load it (local folder or the hub), subsample it, split it, tokenize it.

Labels are always numbered in the order of PolyAI's `categories.json` (card_arrival = 0), whichever
source the rows come from, so results from a Kaggle run and an offline run can be compared.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset

# The order of PolyAI's categories.json; the hub copy numbers its labels differently, so rows from
# the hub are mapped onto this order by name.
BANKING77_INTENTS: tuple[str, ...] = (
    "card_arrival", "card_linking", "exchange_rate", "card_payment_wrong_exchange_rate",
    "extra_charge_on_statement", "pending_cash_withdrawal", "fiat_currency_support",
    "card_delivery_estimate", "automatic_top_up", "card_not_working", "exchange_via_app",
    "lost_or_stolen_card", "age_limit", "pin_blocked", "contactless_not_working",
    "top_up_by_bank_transfer_charge", "pending_top_up", "cancel_transfer", "top_up_limits",
    "wrong_amount_of_cash_received", "card_payment_fee_charged", "transfer_not_received_by_recipient",
    "supported_cards_and_currencies", "getting_virtual_card", "card_acceptance", "top_up_reverted",
    "balance_not_updated_after_cheque_or_cash_deposit", "card_payment_not_recognised",
    "edit_personal_details", "why_verify_identity", "unable_to_verify_identity", "get_physical_card",
    "visa_or_mastercard", "topping_up_by_card", "disposable_card_limits", "compromised_card",
    "atm_support", "direct_debit_payment_not_recognised", "passcode_forgotten",
    "declined_cash_withdrawal", "pending_card_payment", "lost_or_stolen_phone", "request_refund",
    "declined_transfer", "Refund_not_showing_up", "declined_card_payment", "pending_transfer",
    "terminate_account", "card_swallowed", "transaction_charged_twice", "verify_source_of_funds",
    "transfer_timing", "reverted_card_payment?", "change_pin", "beneficiary_not_allowed",
    "transfer_fee_charged", "receiving_money", "failed_transfer", "transfer_into_account",
    "verify_top_up", "getting_spare_card", "top_up_by_cash_or_cheque", "order_physical_card",
    "virtual_card_not_working", "wrong_exchange_rate_for_cash_withdrawal",
    "get_disposable_virtual_card", "top_up_failed", "balance_not_updated_after_bank_transfer",
    "cash_withdrawal_not_recognised", "exchange_charge", "top_up_by_card_charge", "activate_my_card",
    "cash_withdrawal_charge", "card_about_to_expire", "apple_pay_or_google_pay", "verify_my_identity",
    "country_support",
)

HUB_DATASET = "PolyAI/banking77"
# The hub's dataset is a loading script that datasets >= 4 refuses; its auto-converted parquet branch
# is plain data. Pin a commit of that branch here for byte-for-byte reproducibility.
HUB_REVISION = "refs/convert/parquet"
REQUIRED_FILES = ("train.csv", "test.csv", "categories.json")


class Banking77Error(ValueError):
    """Bad Banking77 input: the message names the problem and the fix."""


@dataclass
class Banking77:
    train: Dataset  # columns: text (str), label (int, categories.json order)
    test: Dataset
    label_names: list[str]
    source: str  # the folder or hub id the rows came from

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the checkout, for an editable install
SHARED_FOLDER = Path("shared/data/banking77")


def default_data_dir() -> Path | None:
    """The Banking77 folder every caller without a `data_dir` uses, looked up in this order:
    $BANKING77_DIR; `shared/data/banking77` beside or above the checkout (the package's own folder);
    the same beside or above the current directory. None if none holds `categories.json`.

    The checkout comes before the cwd so that a process started elsewhere (a test's temporary
    folder, a launcher) finds the same data as the notebooks do.
    """
    if os.environ.get("BANKING77_DIR"):  # absolute, so that a process started elsewhere finds it too
        return Path(os.environ["BANKING77_DIR"]).expanduser().resolve()
    for start in (PACKAGE_ROOT, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            if (folder / SHARED_FOLDER / "categories.json").is_file():
                return (folder / SHARED_FOLDER).resolve()
    return None


def find_data_dir() -> Path:
    """`default_data_dir()`, checked (`check_data_dir`), or a `Banking77Error` that says where the
    folder is looked for and how else to give the data."""
    found = default_data_dir()
    if found is None:
        raise Banking77Error(
            "no Banking77 folder found: set BANKING77_DIR to the folder holding train.csv, test.csv and "
            f"categories.json, or keep it at {SHARED_FOLDER} beside or above the checkout; or give the "
            "folder as data_dir (the runner: --set data_dir=FOLDER), or read the hub's copy when online "
            "(data_source='hub'; the runner: --set data_source=hub)."
        )
    return check_data_dir(found)


def _require_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise Banking77Error(
            f"Banking77 folder {folder} does not exist: point data_dir (or BANKING77_DIR) at the folder "
            "holding train.csv, test.csv and categories.json."
        )


def check_data_dir(folder: Path) -> Path:
    """`folder` if it holds Banking77's three files, else a `Banking77Error` naming what is missing."""
    _require_folder(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise Banking77Error(
            f"Banking77 folder {folder} lacks {', '.join(missing)}: point data_dir (or BANKING77_DIR) at a "
            "folder holding all of train.csv, test.csv and categories.json (PolyAI's banking77 layout)."
        )
    return folder


def load_banking77(data_dir: str | Path | None = None, source: str = "auto") -> Banking77:
    """Load train and test. source: "local" (a folder), "hub" (PolyAI/banking77 parquet), or "auto"
    (the folder given or found by `default_data_dir`, else the hub)."""
    if source not in ("auto", "local", "hub"):
        raise Banking77Error(f"unknown data source {source!r}: use 'local', 'hub' or 'auto'.")
    if source == "hub" or (source == "auto" and data_dir is None and default_data_dir() is None):
        return _load_from_hub()
    folder = Path(data_dir) if data_dir is not None else find_data_dir()
    return _load_from_folder(folder)


def _load_from_folder(folder: Path) -> Banking77:
    label_names, splits = _read_folder(folder)
    index = {name: i for i, name in enumerate(label_names)}

    def to_dataset(frame: pd.DataFrame) -> Dataset:
        return Dataset.from_dict({"text": frame["text"].tolist(), "label": frame["category"].map(index).tolist()})

    return Banking77(to_dataset(splits["train.csv"]), to_dataset(splits["test.csv"]), label_names, str(folder))


# How many rows (or intents) one problem lists: a broken 10k-row file still gives a readable message.
MAX_LISTED = 10


def check_folder(folder: str | Path) -> Path:
    """`folder` if Banking77 loads from it, else one Banking77Error that lists every problem of its
    three files with their rows, so a user fixes them all in one pass (the runner calls this before
    any kernel starts)."""
    _read_folder(Path(folder))
    return Path(folder)


def _read_folder(folder: Path) -> tuple[list[str], dict[str, pd.DataFrame]]:
    """(categories.json's names, {file name: its rows}), or a Banking77Error listing every problem."""
    _require_folder(folder)
    problems = []
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        problems.append(f"the folder lacks {', '.join(missing)} (PolyAI's banking77 layout has all three)")
    label_names = _read_categories(folder / "categories.json", problems) if "categories.json" not in missing else None
    splits = {name: _read_split(folder / name, label_names, problems)
              for name in ("train.csv", "test.csv") if name not in missing}
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise Banking77Error(
            f"Banking77 folder {folder} has {len(problems)} problem(s) (rows count from 1, the first line "
            f"after the header):\n{listed}\nFix them all, then rerun; or point data_dir (or BANKING77_DIR) at "
            "another folder holding train.csv, test.csv and categories.json."
        )
    return label_names, splits


def _read_categories(path: Path, problems: list[str]) -> list[str] | None:
    """categories.json's intent names, or None with what is wrong with it added to `problems`."""
    try:
        label_names = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        problems.append(f"categories.json is not valid JSON ({error}): write a JSON list of intent names.")
        return None
    if not (isinstance(label_names, list) and label_names and all(isinstance(n, str) for n in label_names)):
        problems.append("categories.json must be a JSON list of intent names.")
        return None
    return label_names


def _read_split(path: Path, label_names: list[str] | None, problems: list[str]) -> pd.DataFrame:
    """The file's rows, with what is wrong in them added to `problems` (intents are checked only
    against a readable `label_names`)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        problems.append(f"{path.name} is not a readable CSV ({str(error).strip()[:200]}): save it as UTF-8 CSV "
                        "with a header line 'text,category'.")
        return pd.DataFrame()
    absent = [column for column in ("text", "category") if column not in frame.columns]
    if absent:
        problems.append(f"{path.name} has columns {list(frame.columns)} but needs 'text' and 'category' "
                        "(one utterance and its intent per row).")
    elif frame.empty:
        problems.append(f"{path.name} has no rows: write one utterance and its intent per line.")
    if "text" in frame.columns:
        empty = frame.index[frame["text"].str.strip() == ""]
        if len(empty):
            problems.append(f"{path.name} has {len(empty)} empty text(s) at {_rows(empty)}: remove those rows "
                            "or write their utterance.")
    if "category" in frame.columns and label_names is not None:
        unknown = frame.loc[~frame["category"].isin(label_names), "category"]
        if len(unknown):
            by_intent = unknown.groupby(unknown, sort=True).groups
            named = [f"{intent!r} at {_rows(rows)}" for intent, rows in list(by_intent.items())[:MAX_LISTED]]
            more = f"; and {len(by_intent) - MAX_LISTED} more intents" if len(by_intent) > MAX_LISTED else ""
            problems.append(f"{path.name} has {len(unknown)} row(s) whose intent is not in categories.json: "
                            f"{'; '.join(named)}{more}: fix the rows' category or add the intents to categories.json.")
    return frame


def _rows(index) -> str:
    """'row 3' or 'rows 3, 7, ... and N more': data rows counted from 1, at most MAX_LISTED of them."""
    numbers = [str(i + 1) for i in list(index)[:MAX_LISTED]]
    more = f" and {len(index) - MAX_LISTED} more" if len(index) > MAX_LISTED else ""
    return f"row{'s' if len(index) > 1 else ''} {', '.join(numbers)}{more}"


def _load_from_hub() -> Banking77:
    from datasets import load_dataset

    try:
        raw = load_dataset(HUB_DATASET, revision=HUB_REVISION)
    except OSError as error:  # offline or unreachable: datasets' ConnectionError and requests' errors are OSErrors
        raise Banking77Error(
            f"could not read {HUB_DATASET} from the hub ({type(error).__name__}: {str(error)[:200]}): offline, "
            "use a local copy: BANKING77_DIR=FOLDER or data_dir=FOLDER with train.csv, test.csv and "
            "categories.json (the runner: --set data_source=local --set data_dir=FOLDER)."
        ) from error
    hub_names = raw["train"].features["label"].names
    to_ours = {i: BANKING77_INTENTS.index(name) for i, name in enumerate(hub_names)}

    def remap(split: Dataset) -> Dataset:
        return Dataset.from_dict({"text": split["text"], "label": [to_ours[l] for l in split["label"]]})

    return Banking77(remap(raw["train"]), remap(raw["test"]), list(BANKING77_INTENTS),
                     f"{HUB_DATASET}@{HUB_REVISION}")


def save_folder(bank: Banking77, folder: str | Path) -> Path:
    """Write `bank` as a Banking77 folder (train.csv and test.csv with `text,category`, categories.json),
    atomically: e.g. the hub's copy, saved once for offline runs (BANKING77_DIR=folder)."""
    from . import atomic

    with atomic.folder(folder) as staging:
        (staging / "categories.json").write_text(json.dumps(bank.label_names, indent=1))
        for name, split in (("train", bank.train), ("test", bank.test)):
            pd.DataFrame({"text": split["text"], "category": [bank.label_names[i] for i in split["label"]]}).to_csv(
                staging / f"{name}.csv", index=False)
    return Path(folder)


def stratified_subsample(dataset: Dataset, max_samples: int | None, seed: int = 42,
                         min_per_class: int = 1) -> Dataset:
    """Exactly max_samples rows (all of them for None or more than there are) in the class proportions, at
    least min_per_class of each class: each class gets the whole part of its share, and the rows left over go
    to the largest remainders (Hamilton's method), so a notebook that asks for 2,000 rows trains on 2,000.
    Banking77Error when max_samples cannot hold min_per_class of every class."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    labels = np.asarray(dataset["label"])
    classes, counts = np.unique(labels, return_counts=True)
    if max_samples < len(classes) * min_per_class:
        raise Banking77Error(
            f"max_samples={max_samples} cannot keep {min_per_class} example(s) of each of {len(classes)} "
            f"classes: use at least {len(classes) * min_per_class}, or None for all rows."
        )
    share = counts / counts.sum() * max_samples  # rows each class would get, unrounded
    quotas = np.minimum(np.maximum(min_per_class, np.floor(share)), counts).astype(int)
    while quotas.sum() < max_samples:  # to the class furthest below its share that has rows left
        room = np.where(quotas < counts, share - quotas, -np.inf)
        quotas[np.argmax(room)] += 1
    while quotas.sum() > max_samples:  # the floor of min_per_class overshot: from the class furthest above its share
        spare = np.where(quotas > min_per_class, quotas - share, -np.inf)
        quotas[np.argmax(spare)] -= 1
    rng = np.random.default_rng(seed)
    chosen = []
    for label, quota in zip(classes, quotas):
        rows = np.flatnonzero(labels == label)
        chosen.extend(rng.choice(rows, size=quota, replace=False))
    return dataset.select(sorted(chosen))


def train_validation_split(dataset: Dataset, validation_fraction: float = 0.1,
                           seed: int = 42) -> tuple[Dataset, Dataset]:
    """Carve a stratified validation set from train: the test set is kept for the final number."""
    if not 0 < validation_fraction < 1:
        raise Banking77Error(f"validation_fraction must be between 0 and 1, got {validation_fraction}.")
    labels = np.asarray(dataset["label"])
    rng = np.random.default_rng(seed)
    validation = []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        take = int(round(len(rows) * validation_fraction))
        validation.extend(rows[: min(take, len(rows) - 1)])
    keep = sorted(set(range(len(dataset))) - set(validation))
    return dataset.select(keep), dataset.select(sorted(validation))


def tokenize(dataset: Dataset, tokenizer, max_length: int = 128) -> Dataset:
    """Tokenize without padding: the collator pads each batch to its own longest row.

    Returns the rows (`label` kept) with `input_ids`, `attention_mask` (lists of at most `max_length` ints) and
    `length` (their token count: the trainer groups batches by it, `evaluation.predict` sorts by it,
    and the collator drops it) in place of `text`.
    Raises Banking77Error if the tokenizer turns any row into zero tokens (a broken or mismatched
    tokenizer), before such rows fail deep inside attention.
    """

    def encode(batch: dict) -> dict:
        encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    rows = dataset.map(encode, batched=True, remove_columns=["text"], desc="tokenize")
    empty = np.flatnonzero(np.asarray(rows["length"]) == 0)
    if len(empty):
        name = getattr(tokenizer, "name_or_path", "") or "?"
        raise Banking77Error(
            f"the tokenizer {type(tokenizer).__name__} ({name}) turned {len(empty)} of {len(rows)} rows into "
            f"zero tokens, e.g. row {empty[0]}: {dataset[int(empty[0])]['text']!r}. The tokenizer does not fit "
            "this text (a word-level vocabulary without an unknown token, a normalizer that deletes the text?): use the tokenizer saved with the model."
        )
    return rows
