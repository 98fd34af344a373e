"""What changes between two desk configurations, and which changes a running desk can take.

`diff_desk_configs(running, new)` compares two `DeskConfig`s field by field and returns a
`ConfigChange`: one `FieldChange` per differing field, each naming the field (a dotted path
such as ``risk.max_open_positions`` or ``strategies[consensus].min_consensus``), its old
and new value, and either how it takes effect at runtime or why it needs a restart.

Safe at runtime (the desk swaps in new frozen parts; see `Desk.apply_config`):

- every risk limit (``risk.*``): the next proposal and the next guard pass use them;
- a strategy's sizing and thresholds (``risk_per_trade``, ``leverage``, ``min_consensus``,
  ``weak_consensus``, ``stop_atr``, ``target_atr``, ``high_volatility_size``): the next
  decision run uses them;
- the loop intervals (``reconcile_interval``, ``guard_interval``, ``monitor_interval``,
  ``telemetry_interval``);
- ``paused_symbols``: symbols added to it are paused, symbols removed from it resumed, from
  the next decision run (a pause or resume made at runtime on another symbol is kept).

Needing a restart (refused at runtime): the instruments and the symbol set, adding,
removing or renaming strategies, a strategy's symbols or resolver, the venue, the market
data, and the LLM endpoint.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from legato.trading.desk_config import DeskConfig, StrategyConfig

__all__ = ["ConfigChange", "FieldChange", "diff_desk_configs"]

_INTERVALS = ("reconcile_interval", "guard_interval", "monitor_interval", "telemetry_interval")
_STRATEGY_SAFE = {
    "risk_per_trade": "the next decision run sizes trades with it",
    "leverage": "the next proposal carries it",
    "min_consensus": "the next decision run votes with it",
    "weak_consensus": "the next decision run judges conflicts with it",
    "stop_atr": "the next decision run places stops with it",
    "target_atr": "the next decision run places targets with it",
    "high_volatility_size": "the next conflict resolution sizes with it",
}
_STRATEGY_RESTART = {
    "symbols": "the symbol set is fixed at start (indicators, feed and venue follow it)",
    "resolver": "the conflict resolver (and its LLM client) is built at start",
    "code": "a strategy of yours is imported and made at start",
    "params": "a strategy of yours is made with its parameters at start",
}
_SECTION_RESTART = {
    "venue": "the paper venue (balances, fees, slippage, latency) is built at start",
    "data": "the market feed is opened at start",
    "llm": "the LLM client is built at start",
}
_REDACTED = "***"
_SECRET_FIELDS = {"llm.api_key"}


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field that differs: its path, old and new value, and what a runtime reload does.

    `restart_reason` is None for a change the running desk can take (`effect` then says how
    it takes effect), and says why it needs a restart otherwise.
    """

    field: str
    old: Any
    new: Any
    effect: str | None = None
    restart_reason: str | None = None

    @property
    def safe(self) -> bool:
        """True when a running desk can take this change."""
        return self.restart_reason is None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (values as text; secrets redacted)."""
        return {
            "field": self.field,
            "old": _text(self.old),
            "new": _text(self.new),
            "safe": self.safe,
            "effect": self.effect,
            "restart_reason": self.restart_reason,
        }

    def describe(self) -> str:
        """One line for a log or a terminal."""
        why = self.effect if self.safe else f"needs a restart: {self.restart_reason}"
        return f"{self.field}: {_text(self.old)} -> {_text(self.new)} ({why})"


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """The differences between a running config and a new one, and whether they were applied.

    `applied` is True only once a desk took every change; a change with any field needing a
    restart is refused as a whole (`applied` False, nothing changed).
    """

    changes: tuple[FieldChange, ...]
    applied: bool = False

    @property
    def empty(self) -> bool:
        """True when the two configs are the same."""
        return not self.changes

    @property
    def safe(self) -> tuple[FieldChange, ...]:
        """The changes a running desk can take."""
        return tuple(change for change in self.changes if change.safe)

    @property
    def refused(self) -> tuple[FieldChange, ...]:
        """The changes that need a restart."""
        return tuple(change for change in self.changes if not change.safe)

    @property
    def applicable(self) -> bool:
        """True when no change needs a restart (an empty change is applicable)."""
        return not self.refused

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: applied or not, and each change with its effect or restart reason."""
        return {
            "applied": self.applied,
            "applied_changes": [c.as_dict() for c in self.safe] if self.applied else [],
            "refused": [c.as_dict() for c in self.refused],
            "held_back": [] if self.applied else [c.as_dict() for c in self.safe],
        }

    def summary(self) -> str:
        """A sentence for the operator: what was applied, or what was refused and why."""
        if self.empty:
            return "no change: the file matches the running configuration"
        if self.applied:
            return "applied: " + "; ".join(change.describe() for change in self.safe)
        return (
            "refused, nothing changed (restart to apply): "
            + "; ".join(change.describe() for change in self.refused)
            + (
                "; held back with them: " + "; ".join(c.describe() for c in self.safe)
                if self.safe
                else ""
            )
        )


def diff_desk_configs(running: DeskConfig, new: DeskConfig) -> ConfigChange:
    """Every field that differs between `running` and `new`, classified (not applied)."""
    return ConfigChange(tuple(_diff(running, new)))


def _diff(running: DeskConfig, new: DeskConfig) -> Iterator[FieldChange]:
    if running.instruments != new.instruments:
        yield from _instrument_changes(running, new)
    yield from _strategy_changes(running.strategies, new.strategies)
    if running.risk != new.risk:
        for name, old, value in _field_diffs(running.risk, new.risk):
            yield FieldChange(
                f"risk.{name}",
                old,
                value,
                effect="the next proposal and the next guard pass use it",
            )
    for section, reason in _SECTION_RESTART.items():
        for name, old, value in _field_diffs(getattr(running, section), getattr(new, section)):
            path = f"{section}.{name}"
            if path in _SECRET_FIELDS:
                old, value = _redact(old), _redact(value)
            yield FieldChange(path, old, value, restart_reason=reason)
    for name in _INTERVALS:
        old, value = getattr(running, name), getattr(new, name)
        if old != value:
            loop = name.removesuffix("_interval")
            yield FieldChange(
                name, old, value, effect=f"the {loop} loop runs on it from its next pass"
            )
    if running.paused_symbols != new.paused_symbols:
        yield FieldChange(
            "paused_symbols",
            running.paused_symbols,
            new.paused_symbols,
            effect="the next decision run of a symbol added is not acted on, "
            "of a symbol removed is acted on again",
        )


def _instrument_changes(running: DeskConfig, new: DeskConfig) -> Iterator[FieldChange]:
    old_by_symbol = {i.symbol: i for i in running.instruments}
    new_by_symbol = {i.symbol: i for i in new.instruments}
    if list(old_by_symbol) != list(new_by_symbol):
        yield FieldChange(
            "instruments",
            list(old_by_symbol),
            list(new_by_symbol),
            restart_reason="the instruments are loaded into the venue and the risk engine at start",
        )
        return
    for symbol, instrument in old_by_symbol.items():
        for name, old, value in _field_diffs(instrument, new_by_symbol[symbol]):
            yield FieldChange(
                f"instruments[{symbol}].{name}",
                old,
                value,
                restart_reason="an instrument's specification is loaded into the venue at start",
            )


def _strategy_changes(
    running: tuple[StrategyConfig, ...], new: tuple[StrategyConfig, ...]
) -> Iterator[FieldChange]:
    old_names = [s.name for s in running]
    new_names = [s.name for s in new]
    if old_names != new_names:
        yield FieldChange(
            "strategies",
            old_names,
            new_names,
            restart_reason="strategies added, removed, renamed or reordered change the "
            "symbols traded and their stored decisions' strategy",
        )
        return
    for old_strategy, new_strategy in zip(running, new, strict=True):
        for name, old, value in _field_diffs(old_strategy, new_strategy):
            path = f"strategies[{old_strategy.name}].{name}"
            if name in _STRATEGY_SAFE:
                yield FieldChange(path, old, value, effect=_STRATEGY_SAFE[name])
            else:
                reason = _STRATEGY_RESTART.get(name, "it is fixed at start")
                yield FieldChange(path, old, value, restart_reason=reason)


def _field_diffs(old: Any, new: Any) -> Iterator[tuple[str, Any, Any]]:
    for item in dataclasses.fields(old):
        before, after = getattr(old, item.name), getattr(new, item.name)
        if before != after:
            yield item.name, before, after


def _redact(value: Any) -> Any:
    return None if value is None else _REDACTED


def _text(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, tuple | list):
        return [_text(item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): _text(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.value
    return value
