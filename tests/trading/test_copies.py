"""Record copies: every field carried over, the changed ones replaced, unknown names refused."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from legato.trading.copies import RecordCopier


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    size: int
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Single:
    value: int


def test_a_copy_carries_every_field_and_replaces_the_changed_ones() -> None:
    copier = RecordCopier(Sample)
    original = Sample("a", 1, "kept")
    copy = copier.copy(original, {"size": 2})
    assert copy == Sample("a", 2, "kept")
    assert copy is not original
    assert original == Sample("a", 1, "kept")
    assert copier.fields == ("name", "size", "note")
    with pytest.raises(dataclasses.FrozenInstanceError):
        copy.size = 3  # type: ignore[misc]


def test_a_class_of_one_field_is_copied_too() -> None:
    assert RecordCopier(Single).copy(Single(1), {}) == Single(1)


def test_names_that_are_not_fields_are_refused_by_name() -> None:
    copier = RecordCopier(Sample)
    copier.check(["size", "note"])
    with pytest.raises(TypeError, match="Sample has no field\\(s\\) colour, weight"):
        copier.check(["weight", "size", "colour"])


def test_only_slotted_dataclasses_have_a_copier() -> None:
    @dataclass(frozen=True)
    class Unslotted:
        value: int

    for cls in (Unslotted, int):
        with pytest.raises(TypeError):
            RecordCopier(cls)
