"""The runtime context: the frozen bundle of shared components every Legato part is given.

A `RuntimeContext` holds what the kernel knows about (clock, settings, seeded randomness, a
bound logger) and an open-ended set of components added by higher layers (a store, a bus, rate
limiters) that the kernel cannot name the types of. Those are reached through typed keys::

    BUS = ComponentKey("bus", MessageBus)      # declared once, beside MessageBus
    ctx = ctx.with_component(BUS, MessageBus(...))
    bus = ctx.component(BUS)                   # a MessageBus, to mypy and at runtime

The key carries the type, so every caller agrees on it and needs no cast. A context never
changes: `with_updates()` and `with_component()` return a changed copy, sharing every
component that was not replaced.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from structlog.typing import FilteringBoundLogger

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import PermanentError, ValidationError
from legato.kernel.logs import get_logger
from legato.kernel.settings import LegatoSettings

__all__ = ["ComponentKey", "MissingComponentError", "RuntimeContext"]

T = TypeVar("T")

_COMPONENT_NAME = re.compile(r"^[a-z][a-z0-9_.]*$")


@dataclass(frozen=True, slots=True)
class ComponentKey(Generic[T]):
    """The name and type of a component a higher layer puts in a `RuntimeContext`.

    Declare one per component, beside its class: `BUS = ComponentKey("bus", MessageBus)`.
    The type must work with `isinstance` (a class, or a `@runtime_checkable` Protocol; mypy
    asks for `# type: ignore[type-abstract]` on a Protocol key).
    """

    name: str
    type: type[T]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _COMPONENT_NAME.match(self.name):
            raise ValidationError(
                "name",
                self.name,
                "a lower-case name of letters, digits, '_' or '.', starting with a letter",
            )
        if not isinstance(self.type, type):
            raise ValidationError("type", self.type, "a class")
        try:
            isinstance(None, self.type)
        except TypeError:
            # A Protocol must be @runtime_checkable, or no lookup could check what it returns.
            raise ValidationError(
                "type", self.type, "a class usable with isinstance() (a runtime-checkable Protocol)"
            ) from None

    def __repr__(self) -> str:
        return f"ComponentKey({self.name!r}, {self.type.__qualname__})"


class MissingComponentError(PermanentError, LookupError):
    """A component was asked for that nobody put in the context: a wiring mistake."""

    def __init__(self, key: ComponentKey[Any], available: Mapping[str, object]) -> None:
        known = ", ".join(sorted(available)) or "none"
        super().__init__(
            f"no component {key.name!r} in this runtime context; add it with "
            f"ctx.with_component(...) when assembling the runtime (present: {known})",
            component=key.name,
        )
        self.key = key


@dataclass(frozen=True, slots=True)
class RuntimeContext:
    """The runtime's shared components; frozen, changed only by making a copy."""

    clock: Clock
    settings: LegatoSettings
    rng: random.Random
    logger: FilteringBoundLogger
    components: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not isinstance(self.clock, Clock):
            raise ValidationError("clock", self.clock, "a Clock (now, timestamp, monotonic, sleep)")
        if not isinstance(self.settings, LegatoSettings):
            raise ValidationError("settings", self.settings, "a LegatoSettings")
        if not isinstance(self.rng, random.Random):
            raise ValidationError("rng", self.rng, "a seeded random.Random")
        if not callable(getattr(self.logger, "bind", None)):
            raise ValidationError("logger", self.logger, "a structlog bound logger")
        if not isinstance(self.components, Mapping):
            raise ValidationError("components", self.components, "a mapping of name to component")
        for name in self.components:
            if not isinstance(name, str) or not _COMPONENT_NAME.match(name):
                raise ValidationError(f"components[{name!r}]", name, "a lower-case component name")
        # Copied, then frozen: the caller's dict can change later without reaching a context
        # other tasks already share.
        object.__setattr__(self, "components", MappingProxyType(dict(self.components)))

    @classmethod
    def create(
        cls,
        settings: LegatoSettings,
        *,
        rng: random.Random,
        clock: Clock | None = None,
        logger: FilteringBoundLogger | None = None,
    ) -> RuntimeContext:
        """Assemble a context: a `RealClock` and the "legato" logger unless given.

        `rng` has no default on purpose: the entry point decides the seed, so a run can be
        replayed, and library code never falls back to unseeded randomness.
        """
        return cls(
            clock=RealClock() if clock is None else clock,
            settings=settings,
            rng=rng,
            logger=get_logger("legato") if logger is None else logger,
        )

    def with_updates(self, **changes: Any) -> RuntimeContext:
        """Return a copy with the given fields replaced; everything else is shared, not copied.

        Unknown field names raise `ValidationError` listing the accepted ones.
        """
        accepted = [item.name for item in dataclasses.fields(self)]
        for name, value in changes.items():
            if name not in accepted:
                raise ValidationError(
                    name, value, "a RuntimeContext field (accepted: " + ", ".join(accepted) + ")"
                )
        return dataclasses.replace(self, **changes)

    def with_component(self, key: ComponentKey[T], component: T) -> RuntimeContext:
        """Return a copy holding `component` under `key`, replacing any one of that name."""
        if not isinstance(component, key.type):
            raise ValidationError(
                f"components[{key.name!r}]", component, f"an instance of {_type_name(key.type)}"
            )
        return dataclasses.replace(self, components={**self.components, key.name: component})

    def without_component(self, key: ComponentKey[Any]) -> RuntimeContext:
        """Return a copy without the component named by `key` (unchanged if it is absent)."""
        remaining = {name: value for name, value in self.components.items() if name != key.name}
        return dataclasses.replace(self, components=remaining)

    def component(self, key: ComponentKey[T]) -> T:
        """Return the component under `key`; `MissingComponentError` if absent.

        A component of another type under that name is a `ValidationError`: two layers
        disagree about what the name means.
        """
        try:
            found = self.components[key.name]
        except KeyError:
            raise MissingComponentError(key, self.components) from None
        return self._checked(key, found)

    def find_component(self, key: ComponentKey[T]) -> T | None:
        """Return the component under `key`, or None when the runtime has none."""
        found = self.components.get(key.name)
        return None if found is None else self._checked(key, found)

    @staticmethod
    def _checked(key: ComponentKey[T], found: object) -> T:
        if not isinstance(found, key.type):
            raise ValidationError(
                f"components[{key.name!r}]", found, f"an instance of {_type_name(key.type)}"
            )
        return found


def _type_name(kind: type[Any]) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"
