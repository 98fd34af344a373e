"""Frozen records built at the cost of plain ones: `slot_init` for the desk's per-bar values.

A frozen dataclass's generated `__init__` writes each field through
`object.__setattr__(self, name, value)` (its own `__setattr__` refuses every write), which
looks the name up on the class for every field. The desk builds a few hundred fields' worth
of frozen values for every bar (snapshots, analyses, votes, decisions, stored records), so
that lookup is a visible share of a backtest. `slot_init` gives such a class an `__init__`
with the same signature and behaviour (defaults, `__post_init__`) that writes each field
through its slot's descriptor instead, found once when the class is decorated.

The class stays a frozen, slotted dataclass: equality, hashing, `repr`, `replace` and the
refusal of any later write are the dataclass's own.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, TypeVar

__all__ = ["slot_init"]

_T = TypeVar("_T")


def slot_init(cls: type[_T]) -> type[_T]:
    """Give the frozen, slotted dataclass `cls` an `__init__` that writes through its slots.

    Only plain fields are supported (defaults are fine; no `default_factory`, `InitVar`,
    `kw_only` or `init=False` field): anything else raises TypeError when decorating, so a
    class can never silently get an `__init__` that differs from the dataclass's.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    # `__dataclass_fields__` holds the InitVar and ClassVar pseudo-fields too; `fields` not.
    if len(fields) != len(getattr(cls, "__dataclass_fields__")):  # noqa: B009
        raise TypeError(f"{cls.__name__} has InitVar or ClassVar fields")
    captured: dict[str, Any] = {}
    arguments = ["self"]
    lines = []
    for index, field in enumerate(fields):
        if (
            not field.init
            or field.kw_only
            or field.default_factory is not dataclasses.MISSING
            or not field.name.isidentifier()
            or field.name == "self"
            or field.name.startswith(("_write_", "_default_"))
        ):
            raise TypeError(f"{cls.__name__}.{field.name} is not a plain field")
        if field.default is dataclasses.MISSING:
            arguments.append(field.name)
        else:
            captured[f"_default_{index}"] = field.default
            arguments.append(f"{field.name}=_default_{index}")
        captured[f"_write_{index}"] = cls.__dict__[field.name].__set__
        lines.append(f"        _write_{index}(self, {field.name})")
    if hasattr(cls, "__post_init__"):
        lines.append("        self.__post_init__()")
    # As `dataclasses` builds the `__init__` it replaces: the descriptors and defaults are the
    # factory's arguments (closure cells, quick to read), the globals the class's module (so
    # annotations resolve as the original's did). The source holds the class's own field
    # names (identifiers, checked above) and nothing else.
    source = "\n".join(
        [
            f"def __create_init__({', '.join(captured)}):",
            f"    def __init__({', '.join(arguments)}):",
            *lines,
            "        return None",
            "    return __init__",
        ]
    )
    namespace: dict[str, Any] = {}
    exec(source, sys.modules[cls.__module__].__dict__, namespace)
    init = namespace["__create_init__"](**captured)
    original = cls.__init__
    init.__qualname__ = original.__qualname__
    init.__module__ = original.__module__
    init.__annotations__ = dict(original.__annotations__)
    init.__doc__ = original.__doc__
    setattr(cls, "__init__", init)  # noqa: B010 (mypy refuses assigning a method)
    return cls
