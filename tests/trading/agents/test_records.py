"""`slot_init`: a frozen dataclass's `__init__` rewritten to write through the slots."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any

import pytest

from legato.kernel.errors import ValidationError
from legato.trading.agents.decision import Consensus, TradeDecision
from legato.trading.agents.indicators import ADXValue, BollingerValue, DonchianValue, MACDValue
from legato.trading.agents.models import DecisionContext, ModelDecision
from legato.trading.agents.records import slot_init
from legato.trading.agents.regime import RegimeAssessment
from legato.trading.agents.snapshot import IndicatorSnapshot
from legato.trading.agents.technical import Signal, TechnicalAnalysis
from legato.trading.coordinator import PipelineOutcome
from legato.trading.decision_log import DecisionRecord


def _record_class(name: str) -> Any:
    """A fresh frozen, slotted dataclass with defaults and a check: the twins' one body."""

    @dataclass(frozen=True, slots=True)
    class Record:
        name: str
        size: int
        note: str | None = None
        tags: tuple[str, ...] = ()

        def __post_init__(self) -> None:
            if self.size < 0:
                raise ValidationError("size", self.size, "an integer >= 0")

    Record.__name__ = Record.__qualname__ = name
    return Record


# The same class twice: as `dataclasses` builds it, and with `slot_init`'s `__init__`.
_Plain = _record_class("_Plain")
_Fast = slot_init(_record_class("_Fast"))


def _values(record: Any) -> tuple[Any, ...]:
    return tuple(getattr(record, f.name) for f in dataclasses.fields(record))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("a", 1), {}),
        (("a", 1, "n"), {}),
        (("a", 1), {"tags": ("x",)}),
        ((), {"name": "a", "size": 2, "note": None, "tags": ("y", "z")}),
    ],
)
def test_the_fast_init_builds_what_the_dataclass_init_builds(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    assert _values(_Fast(*args, **kwargs)) == _values(_Plain(*args, **kwargs))


def test_the_fast_init_keeps_the_signature_checks_and_immutability() -> None:
    fast = inspect.signature(_Fast)
    plain = inspect.signature(_Plain)
    assert [(p.name, p.default, p.kind) for p in fast.parameters.values()] == [
        (p.name, p.default, p.kind) for p in plain.parameters.values()
    ]
    with pytest.raises(ValidationError):
        _Fast("a", -1)
    with pytest.raises(TypeError):
        _Fast("a")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _Fast("a", 1, unknown=2)  # type: ignore[call-arg]
    record = _Fast("a", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.size = 2  # type: ignore[misc]
    assert record == _Fast("a", 1)
    assert hash(record) == hash(_Fast("a", 1))
    assert dataclasses.replace(record, size=3) == _Fast("a", 3)
    assert repr(record) == "_Fast(name='a', size=1, note=None, tags=())"


def test_classes_it_cannot_rewrite_faithfully_are_refused() -> None:
    @dataclass(slots=True)
    class Mutable:
        name: str

    @dataclass(frozen=True)
    class Unslotted:
        name: str

    @dataclass(frozen=True, slots=True)
    class Factory:
        names: list[str] = field(default_factory=list)

    @dataclass(frozen=True, slots=True, kw_only=True)
    class KeywordOnly:
        name: str

    for cls in (Mutable, Unslotted, Factory, KeywordOnly):
        with pytest.raises(TypeError):
            slot_init(cls)


@pytest.mark.parametrize(
    "cls",
    [
        IndicatorSnapshot,
        MACDValue,
        BollingerValue,
        ADXValue,
        DonchianValue,
        Signal,
        TechnicalAnalysis,
        RegimeAssessment,
        DecisionContext,
        ModelDecision,
        Consensus,
        TradeDecision,
        DecisionRecord,
        PipelineOutcome,
    ],
)
def test_the_desks_fast_records_take_the_dataclass_signature(cls: type) -> None:
    # Each parameter is a field, in order, with the field's default.
    parameters = list(inspect.signature(cls).parameters.values())
    fields = dataclasses.fields(cls)
    assert [p.name for p in parameters] == [f.name for f in fields]
    assert [p.default for p in parameters] == [
        inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default for f in fields
    ]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters)
    # Its annotations resolve in the class's module, as the dataclass's own __init__'s did.
    hints = typing.get_type_hints(cls.__init__)
    assert hints == {**typing.get_type_hints(cls), "return": type(None)}
