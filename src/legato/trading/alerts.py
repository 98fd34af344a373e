"""Alerts: what the desk tells an operator, how urgent it is, and where it goes.

An `Alert` is a frozen value with a level, a code, a sentence for the operator and what it
concerns (symbol, order, execution intent). `AlertLevel` orders the urgency:

- INFO: for the record (an order adopted by the reconciler).
- WARNING: something failed and is being retried or worked around; no money at risk now
  (a take-profit not placed yet, a store write queued, a rate-limit wait).
- HIGH: the desk does not know the state of an order and relies on the reconciler (an
  UNKNOWN order); look at it if it does not resolve within minutes.
- CRITICAL: money was at risk and the desk acted on its own (a position closed because its
  stop-loss could not be placed); a person must look now.

`Alerter` sends each alert to its two destinations: the store (through the `record`
function it is given, normally `TradingLedger.record_alert`) and, when a bus is given, the
topic ``alerts.<level>`` (payload: `Alert.as_dict()`). A store failure does not lose the
alert: it is still published and logged, and kept for `flush` to write later.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import structlog

from legato.kernel.bus import MessageBus
from legato.kernel.errors import LegatoError, ValidationError

__all__ = ["ALERT_TOPIC_PREFIX", "Alert", "AlertCode", "AlertLevel", "Alerter"]

_log = structlog.get_logger(__name__)

ALERT_TOPIC_PREFIX = "alerts"
"""First segment of alert topics: ``alerts.info``, ``.warning``, ``.high``, ``.critical``."""


class AlertLevel(enum.Enum):
    """How urgent an alert is; levels compare by urgency (INFO < WARNING < HIGH < CRITICAL)."""

    INFO = "info"
    WARNING = "warning"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for INFO up to 3 for CRITICAL."""
        return _RANKS[self]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, AlertLevel):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, AlertLevel):
            return NotImplemented
        return self.rank <= other.rank

    @classmethod
    def highest(cls, levels: list[AlertLevel]) -> AlertLevel | None:
        """The most urgent of `levels`, or None when there are none."""
        return max(levels, key=lambda level: level.rank) if levels else None


_RANKS = {level: rank for rank, level in enumerate(AlertLevel)}


class AlertCode(enum.Enum):
    """What an alert is about."""

    STOP_LOSS_FAILED = "stop_loss_failed"  # CRITICAL: the position was closed instead
    CLOSE_FAILED = "close_failed"  # CRITICAL: the emergency close did not go through either
    STOP_LOSS_RETRIED = "stop_loss_retried"  # WARNING: placed, after retries
    TAKE_PROFIT_FAILED = "take_profit_failed"  # WARNING: retried later
    ORDER_UNKNOWN = "order_unknown"  # HIGH: sent, outcome unknown, not found by query
    STORE_WRITE_DEFERRED = "store_write_deferred"  # WARNING: queued in pending writes
    RATE_LIMITED = "rate_limited"  # WARNING: the venue asked us to wait
    OCO_CANCEL_FAILED = "oco_cancel_failed"  # WARNING: the other protective order lingers
    ORDER_ADOPTED = "order_adopted"  # INFO: reconciler recorded an order the store lacked
    ORDER_RESOLVED = "order_resolved"  # INFO: reconciler resolved an UNKNOWN order
    POSITION_REPROTECTED = "position_reprotected"  # HIGH: a position had no live stop-loss
    POSITION_CLOSED_OUT = "position_closed_out"  # CRITICAL: unknown, unprotected position
    RECONCILIATION_REPORT = "reconciliation_report"  # WARNING: a difference left to a person
    DRAWDOWN_RESET = "drawdown_reset"  # WARNING: an operator measured the drawdown from now
    STRATEGY_FAILED = "strategy_failed"  # HIGH: a user's strategy raised on a bar


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert: level, code, a sentence for the operator, when, and what it concerns."""

    level: AlertLevel
    code: AlertCode
    message: str
    at: datetime
    symbol: str | None = None
    client_order_id: str | None = None
    intent_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.level, AlertLevel):
            raise ValidationError("level", self.level, "an AlertLevel")
        if not isinstance(self.code, AlertCode):
            raise ValidationError("code", self.code, "an AlertCode")
        if not isinstance(self.message, str) or not self.message:
            raise ValidationError("message", self.message, "a non-empty sentence")
        if not isinstance(self.at, datetime) or self.at.utcoffset() is None:
            raise ValidationError("at", self.at, "an aware UTC datetime")

    @property
    def topic(self) -> str:
        """The bus topic this alert is published on (``alerts.<level>``)."""
        return f"{ALERT_TOPIC_PREFIX}.{self.level.value}"

    def as_dict(self) -> dict[str, str | None]:
        """The alert as JSON-ready text fields."""
        return {
            "level": self.level.value,
            "code": self.code.value,
            "message": self.message,
            "at": self.at.isoformat(),
            "symbol": self.symbol,
            "client_order_id": self.client_order_id,
            "intent_id": self.intent_id,
        }


class Alerter:
    """Stores and publishes alerts; keeps the ones the store refused for `flush`.

    `record` writes one alert to the store. `bus`, when given and running, gets each alert
    on ``alerts.<level>``. `source` names the sender on bus messages.
    """

    __slots__ = ("_bus", "_record", "_source", "_unsaved")

    def __init__(
        self,
        record: Callable[[Alert], Awaitable[None]],
        *,
        bus: MessageBus | None = None,
        source: str = "trading",
    ) -> None:
        self._record = record
        self._bus = bus
        self._source = source
        self._unsaved: deque[Alert] = deque()

    @property
    def unsaved(self) -> tuple[Alert, ...]:
        """Alerts published but not yet written to the store, oldest first."""
        return tuple(self._unsaved)

    async def send(self, alert: Alert) -> None:
        """Log, publish and store `alert`; a store failure keeps it for `flush`, never raises."""
        log = _log.critical if alert.level is AlertLevel.CRITICAL else _log.warning
        if alert.level is AlertLevel.INFO:
            log = _log.info
        log("trading_alert", **alert.as_dict())
        if self._bus is not None and self._bus.running:
            await self._bus.publish(
                self._bus.create_message(alert.topic, self._source, alert.as_dict())
            )
        try:
            await self._record(alert)
        except LegatoError as error:
            _log.warning("alert_not_stored", error=str(error), code=alert.code.value)
            self._unsaved.append(alert)

    async def flush(self) -> int:
        """Write the alerts the store refused earlier; return how many landed."""
        landed = 0
        while self._unsaved:
            await self._record(self._unsaved[0])
            self._unsaved.popleft()
            landed += 1
        return landed
