"""Copies of the desk's frozen records with some fields changed, without `dataclasses.replace`.

Orders, positions and execution intents are frozen dataclasses copied on every status
change, fill, mark and journal write. `dataclasses.replace` inspects the class on every
call; these helpers copy slot by slot from a field list computed once per class. Checking
the result is the caller's business (each record knows which of its checks a change needs).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, TypeVar

__all__ = ["check_field_names", "unchecked_copy"]

_R = TypeVar("_R")


def check_field_names(kind: str, fields: frozenset[str], names: Collection[str]) -> None:
    """Raise TypeError naming every entry of `names` that is not one of `kind`'s `fields`."""
    if not fields.issuperset(names):
        unknown = sorted(set(names) - fields)
        raise TypeError(f"{kind} has no field(s) {', '.join(unknown)}")


def unchecked_copy(record: _R, fields: tuple[str, ...], changes: Mapping[str, Any]) -> _R:
    """A copy of `record` (a frozen slotted dataclass with `fields`) with `changes` applied."""
    copy = object.__new__(type(record))
    for name in fields:
        object.__setattr__(copy, name, getattr(record, name))
    for name, value in changes.items():
        object.__setattr__(copy, name, value)
    return copy
