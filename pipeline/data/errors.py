"""The data package's error: a problem with the data, named by file or folder and param."""
from __future__ import annotations

from ..errors import UserError


class DataError(UserError):
    """A problem with the data: the message names the file or folder and the param."""
