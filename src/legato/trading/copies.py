"""Copies of the desk's frozen records with some fields changed, without `dataclasses.replace`.

Orders, positions and execution intents are frozen dataclasses copied on every status
change, fill, mark and journal write. `dataclasses.replace` inspects the class on every
call; a `RecordCopier`, built once per class, copies them with a function written out for
the class's fields. Checking the result is the caller's business (each record knows which
of its checks a change needs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any, Generic, TypeVar

__all__ = ["RecordCopier"]

_R = TypeVar("_R")


class RecordCopier(Generic[_R]):
    """Copies records of one frozen, slotted dataclass with some fields changed."""

    __slots__ = ("_cls", "_copy", "field_set", "fields")

    def __init__(self, cls: type[_R]) -> None:
        if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} is not a slotted dataclass")
        self._cls = cls
        self.fields: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(cls))
        """The field names, in declaration order."""
        self.field_set = frozenset(self.fields)
        """The field names, for membership tests."""
        self._copy = _copy_function(cls, self.fields)

    def check(self, names: Collection[str]) -> None:
        """Raise TypeError naming every entry of `names` that is not a field."""
        if not self.field_set.issuperset(names):
            unknown = sorted(set(names) - self.field_set)
            raise TypeError(f"{self._cls.__name__} has no field(s) {', '.join(unknown)}")

    def copy(self, record: _R, changes: Mapping[str, Any]) -> _R:
        """A copy of `record` with `changes` (field names, not checked here) applied."""
        copy: _R = self._copy(record, changes)
        return copy


def _copy_function(cls: type, fields: tuple[str, ...]) -> Callable[[Any, Mapping[str, Any]], Any]:
    """`copy(record, changes)` for `cls`, written out one line per field.

    Built from source as `dataclasses` builds a class's `__init__`: a loop over the fields
    costs twice as much per copy. Each field is set through its slot's descriptor, which
    the frozen class's `__setattr__` (refusing every write) does not guard; the names are
    the dataclass's own field names, so the source is made of identifiers only.
    """
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_set": object.__setattr__}
    lines = ["def copy(record, changes):", "    copy = _new(_cls)"]
    for index, name in enumerate(fields):
        namespace[f"_write_{index}"] = cls.__dict__[name].__set__
        lines.append(f"    _write_{index}(copy, record.{name})")
    lines += [
        "    for name, value in changes.items():",
        "        _set(copy, name, value)",
        "    return copy",
    ]
    exec("\n".join(lines), namespace)
    function: Callable[[Any, Mapping[str, Any]], Any] = namespace["copy"]
    return function
