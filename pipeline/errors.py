"""The errors a user can fix, and the warnings and notes the library gives. Standard library
only: params validation and data preparation use them without importing torch.

A stage ends any :class:`UserError` with one ``error: <message>`` line and exit status 2 (no
traceback unless ``NSVQ_DEBUG=1``), so every message names the file or the param at fault.

:func:`warn` and :func:`note` go to the ``nsvq`` logger. A stage forwards that logger to its
Prefect flow run's log (stages/prefect_run.py); anywhere else, with no handler set, they are
printed to stderr (a warning as ``warning: <message>``).
"""
from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("nsvq")


class UserError(ValueError):
    """A problem with the user's input, params or files; the message names the file or param."""


class UnreadableFileError(UserError):
    """A file the project wrote is missing, truncated, corrupt or not what it should be."""


def _emit(level: int, message: str, prefix: str) -> None:
    if LOGGER.handlers:
        LOGGER.log(level, message)
    else:
        print(f"{prefix}{message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Something the user should look at, that did not stop the run."""
    _emit(logging.WARNING, message, "warning: ")


def note(message: str) -> None:
    """What the run decided (resumed, started over)."""
    _emit(logging.INFO, message, "")
