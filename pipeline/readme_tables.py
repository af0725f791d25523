"""README tables generated from a registry (the methods', the architectures'): the part of the
README between two marker comments is the registry's table, rewritten by ``--readme``."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

README = Path(__file__).resolve().parents[1] / "README.md"


def replace_between(text: str, begin: str, end: str, table: str) -> str:
    """``text`` with the part between the markers ``begin`` and ``end`` replaced by ``table``."""
    head, sep, rest = text.partition(begin)
    _, sep2, tail = rest.partition(end)
    if not sep or not sep2:
        raise ValueError(f"the README lacks the markers {begin!r} ... {end!r}")
    return f"{head}{begin}\n{table}\n{end}{tail}"


def main(what: str, begin: str, end: str, table: Callable[[], str]) -> None:
    """``python -m <registry> [--readme]``: print the table, or write it into the README."""
    if sys.argv[1:] == ["--readme"]:
        README.write_text(replace_between(README.read_text(), begin, end, table()))
        print(f"wrote the {what} table into {README}")
    else:
        print(table())
