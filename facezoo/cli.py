"""The ``facezoo`` command line: one sub-command group per concern.

Each concern owns a small ``cli`` module exposing ``register(subparsers)``, which adds its sub-command(s) and
sets ``func`` on the parser; this file wires them together and owns how errors reach the user: a mistake in the
input (:class:`facezoo.errors.FacezooError`, a missing file, a bad value, a wrong command line) is one line on
stderr and exit code 2; anything else is an internal error, also one line, exit code 1. ``--debug`` (anywhere on
the command line) or ``FACEZOO_DEBUG=1`` shows the traceback instead. An error from a DataLoader worker is the same
one line as without workers (its message, not torch's "Caught X in DataLoader worker process N" with the worker's
traceback flattened into it); ``--debug`` shows the worker's traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
from typing import List, NoReturn, Optional, Sequence

from facezoo.errors import FacezooError, did_you_mean, split_worker_message

# Modules that add sub-commands, in the order they appear in --help.
COMMAND_MODULES = (
    "facezoo.models.cli",  # facezoo models
    "facezoo.data.cli",  # facezoo data {convert,synth,info}
    "facezoo.eval.cli",  # facezoo eval
    "facezoo.eval.embed_cli",  # facezoo embed
    "facezoo.train.cli",  # facezoo train
    "facezoo.hub.cli",  # facezoo export {hub,onnx}, facezoo push
)

#: exceptions that mean "the input is wrong", shown as one line with exit code 2
USER_ERRORS = (FacezooError, OSError, ValueError)
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130


_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


class FacezooArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error: ``facezoo eval: error: ... (see 'facezoo eval --help')``, exit code 2."""

    def error(self, message: str) -> NoReturn:
        choice = _INVALID_CHOICE.search(message)  # 'facezoo trian' -> did you mean 'train'?
        if choice:
            message += did_you_mean(choice[1], re.findall(r"'([^']*)'", choice[2]), n=1)
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = FacezooArgumentParser(
        prog="facezoo",
        description="Face-recognition models, training, data, evaluation and publishing on top of timm.",
        epilog="Add --debug (or set FACEZOO_DEBUG=1) to any command to see the traceback of an error.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=FacezooArgumentParser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("FACEZOO_DEBUG", "").strip() not in ("", "0", "false", "False")


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (KeyError's quotes dropped, empty messages named by their type)."""
    text = (
        str(exc.args[0]) if isinstance(exc, KeyError) and exc.args and not isinstance(exc, FacezooError) else str(exc)
    )
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {exc.strerror or text}"
    worker = split_worker_message(text)  # re-raised from a DataLoader worker: the worker's own message
    if worker is not None:
        text = worker[0]
    text = " ".join(text.split())
    return text or type(exc).__name__


def worker_traceback(exc: BaseException) -> Optional[str]:
    """The traceback of the DataLoader worker an exception was re-raised from, or None."""
    tb = getattr(exc, "worker_traceback", None)
    if tb is None and exc.args and isinstance(exc.args[0], str):
        worker = split_worker_message(exc.args[0])
        tb = worker[1] if worker is not None else None
    return tb


def _show_worker_traceback(exc: BaseException) -> None:
    """For ``--debug``: the worker's traceback, printed before the main process's own (which ends in the re-raise)."""
    tb = worker_traceback(exc)
    if tb is not None and tb not in str(exc):
        print(tb.rstrip("\n"), file=sys.stderr)
        print("\nThe worker's error was re-raised in the main process:\n", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args_in: List[str] = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args_in)
    args_in = [a for a in args_in if a != "--debug"]
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(args_in)
        if extra:  # overrides may follow options (facezoo train RECIPE --output-dir D a.b=1); the command checks them
            if not hasattr(args, "overrides") or any(e.startswith("-") for e in extra):
                parser.parse_args(args_in)  # the usual one-line error for what is really unknown
            args.overrides = list(args.overrides) + extra
    except SystemExit as exc:  # argparse's --help (0) and usage errors (2), as return codes for in-process callers
        return int(exc.code or 0)
    args.debug = debug
    if getattr(args, "func", None) is None:
        commands = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser.error(f"choose a command: {', '.join(commands)}")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s")
    prog = f"facezoo {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as exc:
        if debug:
            _show_worker_traceback(exc)
            raise
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # a bug: still one line, with the way to the traceback
        if debug:
            _show_worker_traceback(exc)
            raise
        print(
            f"{prog}: internal error: {type(exc).__name__}: {one_line(exc)} (rerun with --debug for the "
            "traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
