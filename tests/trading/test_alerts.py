"""Alerts: levels order by urgency; the alerter publishes, stores, and keeps what it could not."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from legato.kernel.bus import MessageBus
from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.kernel.message import Message
from legato.store.errors import StoreUnavailableError
from legato.trading.alerts import Alert, AlertCode, Alerter, AlertLevel

AT = datetime(2024, 1, 1, tzinfo=UTC)


def alert(level: AlertLevel = AlertLevel.CRITICAL) -> Alert:
    return Alert(level, AlertCode.STOP_LOSS_FAILED, "closed: no stop-loss", AT, symbol="BTC")


def test_levels_compare_by_urgency_and_highest_picks_the_most_urgent() -> None:
    assert AlertLevel.INFO < AlertLevel.WARNING < AlertLevel.HIGH < AlertLevel.CRITICAL
    assert AlertLevel.highest([AlertLevel.WARNING, AlertLevel.CRITICAL, AlertLevel.HIGH]) is (
        AlertLevel.CRITICAL
    )
    assert AlertLevel.highest([]) is None


def test_an_alert_needs_a_message_and_an_aware_time() -> None:
    with pytest.raises(ValidationError) as empty:
        Alert(AlertLevel.HIGH, AlertCode.ORDER_UNKNOWN, "", AT)
    with pytest.raises(ValidationError) as naive:
        Alert(AlertLevel.HIGH, AlertCode.ORDER_UNKNOWN, "x", datetime(2024, 1, 1))  # noqa: DTZ001
    assert (empty.value.field, naive.value.field) == ("message", "at")


async def test_the_alerter_publishes_on_the_level_topic_and_stores(clock: Clock) -> None:
    stored: list[Alert] = []
    received: list[Message] = []

    async def record(item: Alert) -> None:
        stored.append(item)

    async def handle(message: Message) -> None:
        received.append(message)

    async with MessageBus(clock=clock, rng=random.Random(1)) as bus:
        await bus.subscribe(subscriber_id="pager", topic="alerts.>", handler=handle)
        await Alerter(record, bus=bus).send(alert())
        await bus.drain()
    assert stored == [alert()]
    assert [message.topic for message in received] == ["alerts.critical"]
    assert received[0].payload["code"] == "stop_loss_failed"


async def test_an_alert_the_store_refuses_is_still_published_and_kept_for_flush(
    clock: Clock,
) -> None:
    stored: list[Alert] = []
    down = True

    async def record(item: Alert) -> None:
        if down:
            raise StoreUnavailableError("store down")
        stored.append(item)

    alerter = Alerter(record)
    await alerter.send(alert(AlertLevel.HIGH))
    kept = alerter.unsaved
    down = False
    landed = await alerter.flush()
    assert kept == (alert(AlertLevel.HIGH),)
    assert landed == 1
    assert stored == [alert(AlertLevel.HIGH)]
    assert alerter.unsaved == ()
