"""The errors a user can fix. Standard library only: params validation and data preparation
raise them without importing torch.

A stage ends any :class:`UserError` with one ``error: <message>`` line and exit status 2 (no
traceback unless ``NSVQ_DEBUG=1``), so every message names the file or the param at fault.
"""
from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input, params or files; the message names the file or param."""


class UnreadableFileError(UserError):
    """A file the project wrote is missing, truncated, corrupt or not what it should be."""
