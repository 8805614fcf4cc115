"""User mistakes end in one line and exit code 2; bugs keep their traceback.

Every command (``recbole-llm``, ``run_hyper.py``, ``python -m recbole_llm.data / .recommend / .analysis``)
runs its ``main`` through :func:`run_cli`. A mistake the user can fix (an unknown key, a bad value, a
missing file) is a :class:`UserError`, or a ``ValueError`` / ``FileNotFoundError`` / ``KeyError`` that
this package raised on purpose with a message (a ``raise`` statement in ``recbole_llm``): it is printed
as ``error: <message>`` on stderr and the process exits with 2, as argparse does for a bad flag.
Anything else (a bug here, in RecBole, torch, ...) keeps Python's traceback. ``--debug`` or
``RECBOLE_LLM_DEBUG=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import linecache
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_USER_ERROR = 2
_PACKAGE = Path(__file__).resolve().parent.parent


class UserError(ValueError):
    """A mistake in the user's input (command line, YAML, config_dict, files): the message says the fix.

    A ``ValueError`` so that callers (and tests) catching ``ValueError`` keep working.
    """


class UserFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (also a ``FileNotFoundError``)."""


def _raised_here_on_purpose(err: BaseException) -> bool:
    """True for ``raise ValueError(...)`` (etc.) written in this package: a deliberate, explained refusal.

    The innermost frame must be a ``raise`` statement in ``recbole_llm``; an exception thrown by a library
    or by a builtin inside our code (``int("x")``) is not one, and keeps its traceback.
    """
    if not isinstance(err, (ValueError, FileNotFoundError, KeyError)):
        return False
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return False
    last = frames[-1]
    try:
        inside = Path(last.filename).resolve().is_relative_to(_PACKAGE)
    except (OSError, ValueError):
        return False
    return inside and linecache.getline(last.filename, last.lineno).lstrip().startswith("raise")


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is a user's mistake (one line, exit 2) rather than a bug (traceback)."""
    return isinstance(err, UserError) or _raised_here_on_purpose(err)


def message_of(err: BaseException) -> str:
    """The error's message on one line (``KeyError`` quotes its argument; undo that)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.split()) or type(err).__name__


def _take_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug`` (no command knows the flag), and whether it was there."""
    kept = [arg for arg in argv if arg not in ("--debug", "--debug=True", "--debug=true")]
    return kept, len(kept) != len(argv)


def debug_requested(flag: bool = False) -> bool:
    return flag or os.environ.get("RECBOLE_LLM_DEBUG", "").strip().lower() in {"1", "true", "yes"}


def run_cli(main: Callable[..., Any], argv: list[str] | None = None) -> Any:
    """Run a command's ``main`` (with ``argv``, or ``sys.argv[1:]``); a user error exits 2 with one line."""
    if argv is None:
        rest, debug = _take_debug_flag(sys.argv[1:])
        sys.argv = [sys.argv[0], *rest]
        call = main
    else:
        rest, debug = _take_debug_flag(list(argv))
        call = lambda: main(rest)  # noqa: E731
    try:
        return call()
    except Exception as err:
        if not is_user_error(err) or debug_requested(debug):
            raise
        print(f"error: {message_of(err)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
