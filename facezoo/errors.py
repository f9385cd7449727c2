"""Errors facezoo raises for bad input: what was wrong (a path, a record, a key, a name), what was expected, a hint.

Every :class:`FacezooError` is the user's to fix, not a bug: the ``facezoo`` command prints its message as one line
and exits with code 2 (``--debug`` or ``FACEZOO_DEBUG=1`` shows the traceback). The subclasses also derive from the
built-in exception a caller would catch without knowing facezoo (``ValueError``, ``FileNotFoundError``, ...).

An error raised inside a DataLoader worker reaches the main process re-made by torch from its type and a message of
``"Caught X in DataLoader worker process N. Original Traceback ..."``: a :class:`FacezooError` re-made so keeps its
one-line message (the worker's traceback goes to ``worker_traceback``), and :func:`split_worker_message` recovers
the message of any other type.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Iterable, Optional, Tuple, Union

__all__ = [
    "FacezooError",
    "ConfigError",
    "CheckpointError",
    "DataError",
    "MissingPathError",
    "UnknownNameError",
    "HubError",
    "did_you_mean",
    "split_worker_message",
    "looks_like_local_path",
    "require_path",
]


#: how torch's ``ExceptionWrapper.reraise`` words an exception from a DataLoader worker (or another thread)
_WORKER_MESSAGE = re.compile(r"Caught (\w+) in [^\n]*\.\nOriginal (Traceback .*)", re.S)


def split_worker_message(text: str) -> Optional[Tuple[str, str]]:
    """``(message, text)`` when ``text`` is the message torch gives an exception re-raised from a DataLoader worker
    (``text`` holds the worker's traceback; the original message is its last line, after ``pkg.Type: ``); None for
    any other text."""
    m = _WORKER_MESSAGE.match(text) if isinstance(text, str) else None
    if m is None:
        return None
    name, lines = m[1], m[2].rstrip("\n").split("\n")
    for k in range(len(lines) - 1, -1, -1):
        line = lines[k]
        if line.startswith((" ", "\t")):
            continue  # a source line of the traceback, not the exception's line
        head, sep, rest = line.partition(": ")
        if head.rsplit(".", 1)[-1] == name:
            message = "\n".join([rest] + lines[k + 1 :]) if sep else ""
            return message, text
    return None


class FacezooError(Exception):
    """Base of the errors caused by the user's input; the message is one line that says what to change.

    Re-raised from a DataLoader worker (torch re-makes it as ``type(message with the worker's traceback)``), it
    keeps the worker's one-line message; ``worker_traceback`` holds the worker's traceback (``--debug`` shows it).
    """

    worker_traceback: Optional[str] = None

    def __init__(self, *args: object) -> None:
        worker = split_worker_message(args[0]) if len(args) == 1 and isinstance(args[0], str) else None
        if worker is not None:
            args = (worker[0],)
        super().__init__(*args)
        if worker is not None:
            self.worker_traceback = worker[1]


class ConfigError(FacezooError, ValueError):
    """A recipe key, command-line value or argument is wrong (unknown, misspelled, of the wrong type or range)."""


class CheckpointError(FacezooError, ValueError):
    """A weights file cannot be read, is not a checkpoint, or does not fit the model."""


class DataError(FacezooError, ValueError):
    """A data file or record cannot be read; the message names the file and the record (key, offset, row)."""


class MissingPathError(FacezooError, FileNotFoundError):
    """A file or folder the user named does not exist (or is of the wrong kind)."""


class UnknownNameError(FacezooError, KeyError):
    """A name (model, margin, optimizer, set, ...) that is not registered; the message suggests the closest ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class HubError(FacezooError, ConnectionError):
    """The Hugging Face Hub cannot be reached or refused the request."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """``"; did you mean 'a' or 'b'?"`` for the registered names closest to ``name``, or ``""`` when none is close."""
    choices = list(choices)
    close = difflib.get_close_matches(str(name), choices, n=n, cutoff=0.6)
    if not close:  # 'lr_rate' -> 'lr': a valid name that the typo starts with (or that starts with it)
        close = sorted(
            (c for c in choices if len(c) >= 2 and (str(name).startswith(c) or c.startswith(str(name)))),
            key=lambda c: -len(c),
        )[:n]
    if not close:
        return ""
    quoted = [repr(c) for c in close]
    return "; did you mean " + (quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]) + "?"


def looks_like_local_path(value: Union[str, os.PathLike]) -> bool:
    """True unless ``value`` reads as a Hugging Face Hub id (``org/name``).

    Absolute or relative paths (``/data``, ``./x``, ``~/x``, ``a/b/c``, ``x/``), names with a data-file suffix and
    bare names (``faces_emore``: Hub ids name their owner) are local paths: a missing one is reported at once
    instead of being looked up on the Hub.
    """
    s = os.fspath(value)
    if s.startswith(("/", "./", "../", "~", ".\\")) or s.endswith(("/", "\\")) or os.path.isabs(s):
        return True
    parts = s.split("/")
    if len(parts) != 2 or not all(parts):
        return True
    return Path(s).suffix.lower() in (
        ".rec",
        ".idx",
        ".bin",
        ".parquet",
        ".arrow",
        ".json",
        ".jsonl",
        ".csv",
        ".pth",
        ".pt",
        ".ckpt",
        ".safetensors",
        ".yaml",
        ".yml",
        ".onnx",
    )


def require_path(path: Union[str, os.PathLike], what: str, kind: Optional[str] = None) -> Path:
    """``Path(path)`` if it exists (as a ``'file'`` or ``'dir'`` when ``kind`` says so), else :class:`MissingPathError`
    naming ``what`` it should have been."""
    p = Path(path).expanduser()
    if not p.exists():
        parent = p.parent if str(p.parent) not in ("", ".") else Path(".")
        hint = "" if parent.exists() else f" (its folder {parent} does not exist either)"
        raise MissingPathError(f"{path}: no such {what}{hint}")
    if kind == "file" and not p.is_file():
        raise MissingPathError(f"{path}: expected a {what} (a file), found a folder")
    if kind == "dir" and not p.is_dir():
        raise MissingPathError(f"{path}: expected a {what} (a folder), found a file")
    return p
