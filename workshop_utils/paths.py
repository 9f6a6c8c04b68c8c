"""Command-line inputs checked before the work: a command that measures for a minute, then cannot write, loses
the minute.

`positive_int` is the argparse type for counts; `output_file` and `output_folder` make the folder if needed, prove it writable with a probe file, and raise
ValueError naming the fix; `write_text_atomic` writes to a temporary file and renames, so no half-written file stays.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _blocking_file(folder: Path) -> Path | None:
    """The first existing path at or above folder, if it is a file (then folder cannot be made)."""
    existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


def output_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Make folder if needed and check that a file can be written in it; ValueError with the fix if not."""
    folder = Path(folder)
    if (blocker := _blocking_file(folder)) is not None:
        where = "is a file" if blocker == folder else f"is under {blocker}, which is a file"
        raise ValueError(f"The {what} {folder} {where}. Fix: choose a folder path (an existing folder or a new one).")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as error:
        raise ValueError(f"Cannot write in the {what} {folder} ({error.strerror or error}). Fix: choose a folder "
                         "you can write to.") from None
    return folder


def output_file(path: str | Path, what: str = "output file") -> Path:
    """Check, before any work, that path can be written: not a folder, its folder made and writable."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"The {what} {path} is a folder. Fix: give a file name, for example {path / 'bench.json'}.")
    output_folder(path.parent, f"folder of the {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"The {what} {path} exists and is read-only. Fix: choose another file name.")
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Write text (UTF-8) to a temporary file beside path, then rename it over path: nothing half-written is left."""
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.",
                                     delete=False) as f:
        f.write(text)
    os.chmod(f.name, 0o644)  # a temporary file is private (0600); the result is an ordinary file
    os.replace(f.name, path)
