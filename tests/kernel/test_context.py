"""RuntimeContext: frozen, copied on change, typed access to components of higher layers."""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Protocol

import pytest

from legato.kernel.clock import RealClock
from legato.kernel.context import ComponentKey, MissingComponentError, RuntimeContext
from legato.kernel.errors import LegatoError, ValidationError
from legato.kernel.logs import get_logger
from legato.kernel.settings import LegatoSettings
from legato.kernel.simulation import SimulatedClock


class Ledger:
    """A stand-in for a component a higher layer would add (a store, a bus)."""


class Inbox:
    """Another such component, of a different type."""


LEDGER = ComponentKey("ledger", Ledger)
INBOX = ComponentKey("inbox", Inbox)


@pytest.fixture
def context() -> RuntimeContext:
    return RuntimeContext.create(LegatoSettings(), rng=random.Random(7), clock=SimulatedClock())


def test_with_updates_returns_a_copy_sharing_every_component_not_replaced(
    context: RuntimeContext,
) -> None:
    ledger = Ledger()
    context = context.with_component(LEDGER, ledger)
    new_clock = SimulatedClock()

    updated = context.with_updates(clock=new_clock)

    assert updated is not context
    assert updated.clock is new_clock
    assert context.clock is not new_clock  # the original is untouched
    assert updated.settings is context.settings
    assert updated.rng is context.rng
    assert updated.logger is context.logger
    assert updated.component(LEDGER) is ledger


def test_with_updates_rejects_an_unknown_field_naming_it_and_the_accepted_ones(
    context: RuntimeContext,
) -> None:
    with pytest.raises(ValidationError) as raised:
        context.with_updates(clok=RealClock())

    assert raised.value.field == "clok"
    assert raised.value.expected == (
        "a RuntimeContext field (accepted: clock, settings, rng, logger, components)"
    )


def test_with_updates_rejects_a_value_of_the_wrong_kind(context: RuntimeContext) -> None:
    with pytest.raises(ValidationError) as raised:
        context.with_updates(rng=7)

    assert (raised.value.field, raised.value.value) == ("rng", 7)


def test_fields_cannot_be_assigned(context: RuntimeContext) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        context.clock = RealClock()  # type: ignore[misc]


def test_components_mapping_cannot_be_mutated(context: RuntimeContext) -> None:
    with pytest.raises(TypeError):
        context.components["ledger"] = Ledger()  # type: ignore[index]


def test_changing_the_dict_a_context_was_built_from_does_not_change_the_context(
    context: RuntimeContext,
) -> None:
    supplied: dict[str, object] = {"ledger": Ledger()}
    built = context.with_updates(components=supplied)

    supplied["inbox"] = Inbox()

    assert "inbox" not in built.components


def test_component_returns_the_instance_under_its_key(context: RuntimeContext) -> None:
    ledger, inbox = Ledger(), Inbox()

    context = context.with_component(LEDGER, ledger).with_component(INBOX, inbox)

    assert context.component(LEDGER) is ledger
    assert context.component(INBOX) is inbox


def test_with_component_leaves_the_original_context_without_it(context: RuntimeContext) -> None:
    context.with_component(LEDGER, Ledger())

    assert context.find_component(LEDGER) is None


def test_missing_component_error_names_the_component_and_what_is_present(
    context: RuntimeContext,
) -> None:
    context = context.with_component(INBOX, Inbox())

    with pytest.raises(MissingComponentError) as raised:
        context.component(LEDGER)

    assert isinstance(raised.value, LookupError)
    assert isinstance(raised.value, LegatoError)
    assert raised.value.key is LEDGER
    assert "'ledger'" in str(raised.value)
    assert "present: inbox" in str(raised.value)


def test_registering_a_component_of_the_wrong_type_is_rejected(context: RuntimeContext) -> None:
    not_a_ledger: Any = Inbox()

    with pytest.raises(ValidationError) as raised:
        context.with_component(LEDGER, not_a_ledger)

    assert raised.value.field == "components['ledger']"
    assert raised.value.expected == f"an instance of {Ledger.__module__}.Ledger"


def test_looking_up_a_name_holding_another_type_is_rejected(context: RuntimeContext) -> None:
    context = context.with_updates(components={"ledger": Inbox()})

    with pytest.raises(ValidationError, match=rf"an instance of {Ledger.__module__}\.Ledger"):
        context.component(LEDGER)
    with pytest.raises(ValidationError):
        context.find_component(LEDGER)


def test_without_component_removes_only_that_component(context: RuntimeContext) -> None:
    inbox = Inbox()
    context = context.with_component(LEDGER, Ledger()).with_component(INBOX, inbox)

    trimmed = context.without_component(LEDGER)

    assert trimmed.find_component(LEDGER) is None
    assert trimmed.component(INBOX) is inbox
    assert context.find_component(LEDGER) is not None


def test_component_key_rejects_a_bad_name() -> None:
    with pytest.raises(ValidationError) as raised:
        ComponentKey("Message Bus", Ledger)

    assert raised.value.field == "name"


def test_component_key_rejects_a_type_isinstance_cannot_check() -> None:
    class Unchecked(Protocol):
        def run(self) -> None: ...

    with pytest.raises(ValidationError) as raised:
        ComponentKey("unchecked", Unchecked)  # type: ignore[type-abstract]

    assert raised.value.field == "type"


def test_component_names_in_a_supplied_mapping_are_validated(context: RuntimeContext) -> None:
    with pytest.raises(ValidationError) as raised:
        context.with_updates(components={"Bad Name": Ledger()})

    assert raised.value.field == "components['Bad Name']"


def test_create_defaults_to_the_real_clock_and_the_legato_logger() -> None:
    context = RuntimeContext.create(LegatoSettings(), rng=random.Random(1))

    assert isinstance(context.clock, RealClock)
    assert callable(context.logger.bind)


def test_constructor_validates_every_kernel_field() -> None:
    with pytest.raises(ValidationError) as raised:
        RuntimeContext(
            clock="now",  # type: ignore[arg-type]
            settings=LegatoSettings(),
            rng=random.Random(1),
            logger=get_logger("test"),
        )

    assert raised.value.field == "clock"
