"""Atomic writes: a file or folder appears under its name complete, or not at all.

The content goes to a hidden partial name beside the target and is renamed into place. The partial
is created like any file the user makes (0o666 for a file, 0o777 for a folder, less the umask), not
through `tempfile`, whose owner-only 0o600/0o700 would survive the rename and leave a results file
or a saved model unreadable to the rest of a team.
"""
from __future__ import annotations

import os
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path


def partial_path(path: str | Path) -> Path:
    """Where `path` is written before the rename: `.NAME.partial-PID.SUFFIX` beside it. The process id
    lets a later run tell a dead writer's leftovers from a live one's (runner._remove_stale_partials)."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial-{os.getpid()}{path.suffix}")


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path`: the old file or the complete new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    partial.unlink(missing_ok=True)
    try:
        with open(partial, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def folder(path: str | Path, replace: bool = True):
    """Yield an empty partial folder to fill; when the block ends without error it becomes `path`.

    replace=True swaps out what `path` held; replace=False keeps a `path` that another process
    finished first and drops this copy. On error nothing is left behind. Everything in the folder
    gets the umask's modes, whoever wrote it (safetensors >= 0.8 writes `*.safetensors` through a
    temporary file of its own and leaves them 0o600: safetensors issue #782).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
        _modes_like(partial)
        if replace and path.exists():
            shutil.rmtree(path)
        try:
            partial.rename(path)
        except OSError:
            if replace or not path.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _modes_like(root: Path) -> None:
    """Give what is inside `root` the modes a new file or folder gets here, as `root` itself got."""
    folder_mode = stat.S_IMODE(root.stat().st_mode)
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, folder_mode if path.is_dir() else folder_mode & 0o666)
