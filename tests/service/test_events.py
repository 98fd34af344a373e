"""The event hub: ids, replay after a reconnect, slow listeners cut off, close."""

from __future__ import annotations

from legato.service.events import EventHub


async def test_listeners_get_events_in_order_with_increasing_ids() -> None:
    hub = EventHub()
    async with hub.subscribe() as subscription:
        hub.publish("task", {"id": 1})
        hub.publish("worker", {"id": "w"})
        first = await subscription.next()
        second = await subscription.next()
    assert first is not None
    assert second is not None
    assert (first.id, first.kind, second.id, second.kind) == (1, "task", 2, "worker")
    assert hub.listeners == 0


def test_a_reconnecting_listener_replays_what_it_missed() -> None:
    hub = EventHub(history=3)
    for n in range(5):
        hub.publish("task", {"id": n})
    assert [event.data["id"] for event in hub.since(3)] == [3, 4]
    assert [event.id for event in hub.since(0)] == [3, 4, 5]


async def test_a_listener_that_falls_behind_is_ended_not_blocking_others() -> None:
    hub = EventHub(queue_size=3)
    async with hub.subscribe() as slow:
        for n in range(10):
            hub.publish("task", {"id": n})
        received = []
        while (event := await slow.next()) is not None:
            received.append(event.id)
    assert slow.overflowed
    assert received == [1, 2]
    assert hub.last_id == 10


async def test_close_ends_every_stream() -> None:
    hub = EventHub()
    async with hub.subscribe() as subscription:
        hub.close()
        assert await subscription.next() is None
    async with hub.subscribe() as late:
        assert await late.next() is None


def test_events_are_encoded_as_server_sent_events() -> None:
    event = EventHub().publish("alert", {"message": "worker evicted"})
    assert event.encode() == 'id: 1\nevent: alert\ndata: {"message": "worker evicted"}\n\n'
