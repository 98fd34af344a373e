from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legato.kernel.errors import ValidationError
from legato.trading.balances import Balance
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType
from legato.trading.positions import Position, PositionSide
from legato.trading.reconciliation import (
    ActionKind,
    LedgerSnapshot,
    OrderLookup,
    ReconciliationPlan,
    VenueSnapshot,
    diff,
)

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
PERP = "BTC-USDT-PERP"
PREFIX = "lg-"
GRACE = 30.0
NOW = T0 + timedelta(seconds=600)
NAIVE = datetime(2024, 3, 1, 12, 0)  # noqa: DTZ001 - a time without a zone, to be refused


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def order(
    client_order_id: str = "lg-1",
    status: OrderStatus = OrderStatus.ACCEPTED,
    *,
    filled: str = "0",
    changed: datetime | None = T0,
    kind: OrderType = OrderType.LIMIT,
    side: OrderSide = OrderSide.BUY,
    quantity: str = "1",
    symbol: str = PERP,
    venue_order_id: str | None = None,
    **changes: Any,
) -> Order:
    price = Decimal(100) if kind.needs_price else None
    stop_price = Decimal(95) if kind.needs_stop_price else None
    filled_quantity = Decimal(filled)
    return Order(
        client_order_id,
        symbol,
        side,
        kind,
        Decimal(quantity),
        price=price,
        stop_price=stop_price,
        status=status,
        filled_quantity=filled_quantity,
        average_price=Decimal(100) if filled_quantity else None,
        venue_order_id=venue_order_id,
        created_at=changed,
        updated_at=changed,
        **changes,
    )


def stop_loss(client_order_id: str = "lg-sl", status: OrderStatus = OrderStatus.ACCEPTED) -> Order:
    return order(client_order_id, status, kind=OrderType.STOP, side=OrderSide.SELL, quantity="2")


def long(
    quantity: str = "2", opened: datetime | None = T0, stop_id: str | None = "lg-sl"
) -> Position:
    position = Position.open(PERP, PositionSide.LONG, Decimal(quantity), Decimal(100), at=opened)
    return position.with_protection(stop_id, None)


def run(
    store: LedgerSnapshot, venue: VenueSnapshot, now: datetime = NOW, **options: Any
) -> ReconciliationPlan:
    return diff(store, venue, client_id_prefix=PREFIX, now=now, grace_seconds=GRACE, **options)


def not_found(client_order_id: str, first: float, last: float) -> OrderLookup:
    earlier = OrderLookup.record(None, client_order_id, at(first), None)
    return OrderLookup.record(earlier, client_order_id, at(last), None)


def only(plan: ReconciliationPlan, kind: ActionKind) -> Any:
    assert [action.kind for action in plan.actions] == [kind]
    return plan.actions[0]


def test_identical_snapshots_need_nothing() -> None:
    orders = [order("lg-1"), stop_loss(), order("lg-3", OrderStatus.FILLED, filled="1")]
    store = LedgerSnapshot.of(orders, [long()], [Balance("USDT", Decimal(100))])
    venue = VenueSnapshot.of(orders[:2], [long()], [Balance("USDT", Decimal(90), Decimal(10))])
    plan = run(store, venue)
    assert plan.is_empty
    assert plan.matched_orders == ("lg-1", "lg-3", "lg-sl")


def test_an_order_of_ours_the_store_lacks_is_adopted() -> None:
    theirs = order("lg-9", venue_order_id="V9")
    action = only(run(LedgerSnapshot(), VenueSnapshot.of([theirs])), ActionKind.ADOPT)
    assert action.client_order_id == "lg-9"
    assert action.order == theirs
    assert action.writes_order


def test_a_foreign_order_is_reported_not_touched() -> None:
    action = only(run(LedgerSnapshot(), VenueSnapshot.of([order("manual-1")])), ActionKind.REPORT)
    assert "not ours" in action.reason


def test_an_unknown_order_the_venue_lists_takes_the_venues_status() -> None:
    ours = order("lg-1", OrderStatus.UNKNOWN, bracket_id="b-1")
    theirs = order("lg-1", OrderStatus.PARTIALLY_FILLED, filled="0.5", venue_order_id="V1")
    action = only(
        run(LedgerSnapshot.of([ours]), VenueSnapshot.of([theirs])), ActionKind.RESOLVE_UNKNOWN
    )
    written = action.order
    assert written.status is OrderStatus.PARTIALLY_FILLED
    assert written.filled_quantity == Decimal("0.5")
    assert written.venue_order_id == "V1"
    assert written.bracket_id == "b-1"  # our links survive the venue's copy


def test_an_unknown_order_found_by_a_targeted_query_takes_its_status() -> None:
    ours = order("lg-1", OrderStatus.UNKNOWN)
    found = OrderLookup.record(None, "lg-1", at(5), order("lg-1", OrderStatus.FILLED, filled="1"))
    plan = run(LedgerSnapshot.of([ours]), VenueSnapshot.of(lookups=[found]))
    assert only(plan, ActionKind.RESOLVE_UNKNOWN).order.status is OrderStatus.FILLED


def test_an_unlisted_unknown_order_is_queried_first() -> None:
    plan = run(LedgerSnapshot.of([order("lg-1", OrderStatus.UNKNOWN)]), VenueSnapshot())
    assert only(plan, ActionKind.QUERY).client_order_id == "lg-1"


def test_one_not_found_answer_is_never_final_however_old_the_order() -> None:
    # Sent at T0, first asked an hour later: "not found" starts the grace period, no more.
    ours = order("lg-1", OrderStatus.UNKNOWN)
    first = OrderLookup.record(None, "lg-1", at(3600), None)
    plan = run(LedgerSnapshot.of([ours]), VenueSnapshot.of(lookups=[first]), now=at(3610))
    action = only(plan, ActionKind.AWAIT_GRACE)
    assert action.retry_at == at(3600 + GRACE)


def test_a_confirming_query_is_due_once_the_grace_period_is_over() -> None:
    ours = order("lg-1", OrderStatus.UNKNOWN)
    first = OrderLookup.record(None, "lg-1", at(5), None)
    plan = run(LedgerSnapshot.of([ours]), VenueSnapshot.of(lookups=[first]), now=at(35))
    only(plan, ActionKind.QUERY)


def test_grace_also_counts_from_when_the_order_was_sent() -> None:
    # Two not-found answers 40 s apart, but the first came 1 s after sending: the second
    # (at 41 s) is past both graces, one at 40 s would not be past 1 + 30 from the first.
    ours = order("lg-1", OrderStatus.UNKNOWN, changed=at(0))
    early = not_found("lg-1", first=1, last=20)
    plan = run(LedgerSnapshot.of([ours]), VenueSnapshot.of(lookups=[early]), now=at(25))
    only(plan, ActionKind.AWAIT_GRACE)
    confirmed = not_found("lg-1", first=1, last=31)
    plan = run(LedgerSnapshot.of([ours]), VenueSnapshot.of(lookups=[confirmed]), now=at(32))
    only(plan, ActionKind.MARK_NOT_PLACED)


def test_an_unknown_order_not_found_across_the_grace_period_is_marked_not_placed() -> None:
    ours = order("lg-1", OrderStatus.UNKNOWN)
    lookup = not_found("lg-1", first=5, last=40)
    action = only(
        run(LedgerSnapshot.of([ours]), VenueSnapshot.of(lookups=[lookup])),
        ActionKind.MARK_NOT_PLACED,
    )
    assert action.order.status is OrderStatus.REJECTED
    assert "not placed" in (action.order.reason or "")
    assert "35 s apart" in action.reason


def test_a_lookup_older_than_the_orders_last_change_is_ignored() -> None:
    ours = order("lg-1", OrderStatus.UNKNOWN, changed=at(100))
    stale = not_found("lg-1", first=5, last=40)
    only(run(LedgerSnapshot.of([ours]), VenueSnapshot.of(lookups=[stale])), ActionKind.QUERY)


def test_a_working_order_the_venue_stopped_listing_is_queried_then_marked_gone() -> None:
    ours = order("lg-1", OrderStatus.ACCEPTED)
    only(run(LedgerSnapshot.of([ours]), VenueSnapshot()), ActionKind.QUERY)
    lookup = not_found("lg-1", first=10, last=45)
    action = only(
        run(LedgerSnapshot.of([ours]), VenueSnapshot.of(lookups=[lookup])), ActionKind.MARK_GONE
    )
    assert action.order.status is OrderStatus.CANCELLED


def test_a_working_order_found_by_query_but_not_listed_is_matched() -> None:
    ours = order("lg-1", OrderStatus.ACCEPTED)
    found = OrderLookup.record(None, "lg-1", at(5), ours)
    plan = run(LedgerSnapshot.of([ours]), VenueSnapshot.of(lookups=[found]))
    assert plan.is_empty
    assert plan.matched_orders == ("lg-1",)


def test_when_store_and_venue_disagree_the_venue_wins() -> None:
    ours = order("lg-1", OrderStatus.ACCEPTED)
    theirs = order("lg-1", OrderStatus.PARTIALLY_FILLED, filled="0.5")
    action = only(
        run(LedgerSnapshot.of([ours]), VenueSnapshot.of([theirs])), ActionKind.UPDATE_STATUS
    )
    assert action.order.status is OrderStatus.PARTIALLY_FILLED
    assert "the venue wins" in action.reason


def test_an_impossible_status_change_is_reported_not_written() -> None:
    ours = order("lg-1", OrderStatus.CANCELLED)
    theirs = order("lg-1", OrderStatus.ACCEPTED)
    action = only(run(LedgerSnapshot.of([ours]), VenueSnapshot.of([theirs])), ActionKind.REPORT)
    assert "cannot change" in action.reason


def test_fewer_fills_on_the_venue_than_recorded_are_reported() -> None:
    ours = order("lg-1", OrderStatus.PARTIALLY_FILLED, filled="0.5")
    theirs = order("lg-1", OrderStatus.ACCEPTED)
    only(run(LedgerSnapshot.of([ours]), VenueSnapshot.of([theirs])), ActionKind.REPORT)


def test_a_client_id_reused_for_a_different_order_is_reported() -> None:
    ours = order("lg-1")
    theirs = order("lg-1", quantity="3")
    action = only(run(LedgerSnapshot.of([ours]), VenueSnapshot.of([theirs])), ActionKind.REPORT)
    assert "not the one the store recorded" in action.reason


def test_queries_are_capped_unknown_orders_first_then_the_oldest() -> None:
    orders = [
        order("lg-a", OrderStatus.ACCEPTED, changed=at(0)),
        order("lg-b", OrderStatus.UNKNOWN, changed=at(50)),
        order("lg-c", OrderStatus.UNKNOWN, changed=at(10)),
        order("lg-d", OrderStatus.PARTIALLY_FILLED, filled="0.5", changed=at(5)),
        order("lg-e", OrderStatus.NEW, changed=at(20)),
    ]
    plan = run(LedgerSnapshot.of(orders), VenueSnapshot(), max_queries=2)
    assert [action.client_order_id for action in plan.queries] == ["lg-c", "lg-e"]
    assert plan.deferred_queries == ("lg-b", "lg-a", "lg-d")
    assert not plan.is_empty


def test_a_position_whose_stop_loss_is_gone_is_reprotected_at_the_recorded_price() -> None:
    ours = stop_loss()
    cancelled = dataclasses.replace(ours, status=OrderStatus.CANCELLED)
    found = OrderLookup.record(None, "lg-sl", at(60), cancelled)
    store = LedgerSnapshot.of([ours], [long()])
    plan = run(store, VenueSnapshot.of(positions=[long()], lookups=[found]))
    assert [a.kind for a in plan.actions] == [ActionKind.REPROTECT, ActionKind.UPDATE_STATUS]
    reprotect = plan.actions[0]
    assert (reprotect.symbol, reprotect.side, reprotect.quantity) == (
        PERP,
        OrderSide.SELL,
        Decimal(2),
    )
    assert reprotect.stop_price == Decimal(95)


def test_a_position_covered_by_a_smaller_stop_is_topped_up() -> None:
    small = order("lg-sl", kind=OrderType.STOP, side=OrderSide.SELL, quantity="1.5")
    store = LedgerSnapshot.of([small], [long()])
    action = only(run(store, VenueSnapshot.of([small], [long()])), ActionKind.REPROTECT)
    assert action.quantity == Decimal("0.5")


def test_a_position_whose_stop_is_still_unknown_is_not_reprotected_yet() -> None:
    pending = stop_loss(status=OrderStatus.UNKNOWN)
    store = LedgerSnapshot.of([pending], [long()])
    plan = run(store, VenueSnapshot.of(positions=[long()]))
    assert [a.kind for a in plan.actions] == [ActionKind.QUERY]


def test_a_stop_marked_not_placed_leads_to_reprotection_in_the_same_plan() -> None:
    pending = stop_loss(status=OrderStatus.UNKNOWN)
    store = LedgerSnapshot.of([pending], [long()])
    lookup = not_found("lg-sl", first=5, last=40)
    plan = run(store, VenueSnapshot.of(positions=[long()], lookups=[lookup]))
    assert [a.kind for a in plan.actions] == [ActionKind.REPROTECT, ActionKind.MARK_NOT_PLACED]


def test_a_just_opened_position_is_left_to_the_execution_manager() -> None:
    fresh = long(opened=at(590), stop_id=None)
    plan = run(LedgerSnapshot.of(positions=[fresh]), VenueSnapshot.of(positions=[fresh]))
    assert plan.is_empty


def test_an_unknown_unprotected_venue_position_is_closed_out() -> None:
    action = only(run(LedgerSnapshot(), VenueSnapshot.of(positions=[long()])), ActionKind.CLOSE_OUT)
    assert (action.side, action.quantity) == (OrderSide.SELL, Decimal(2))


def test_an_unknown_but_protected_venue_position_is_only_reported() -> None:
    plan = run(LedgerSnapshot(), VenueSnapshot.of([stop_loss()], [long()]))
    assert [a.kind for a in plan.actions] == [ActionKind.ADOPT, ActionKind.REPORT]


def test_position_size_differences_are_reported() -> None:
    store = LedgerSnapshot.of([stop_loss()], [long("2")])
    venue = VenueSnapshot.of([stop_loss()], [long("1")])
    action = only(run(store, venue), ActionKind.REPORT)
    assert "the store has long 2, the venue long 1" in action.reason


def test_a_position_the_venue_no_longer_has_is_reported() -> None:
    store = LedgerSnapshot.of([stop_loss()], [long()])
    plan = run(store, VenueSnapshot.of([stop_loss()]))
    assert "a protective order may have filled unseen" in only(plan, ActionKind.REPORT).reason


def test_balance_totals_are_compared_within_the_tolerance() -> None:
    store = LedgerSnapshot.of(balances=[Balance("USDT", Decimal("100.00"))])
    venue = VenueSnapshot.of(
        balances=[Balance("USDT", Decimal("99.50")), Balance("BTC", Decimal(1))]
    )
    plan = run(store, venue)
    assert [(a.asset, a.store_total, a.venue_total) for a in plan.actions] == [
        ("BTC", Decimal(0), Decimal(1)),
        ("USDT", Decimal("100.00"), Decimal("99.50")),
    ]
    tolerant = run(store, venue, balance_tolerance=Decimal("0.5"))
    assert [a.asset for a in tolerant.actions] == ["BTC"]


def test_a_lookup_remembers_when_the_order_first_went_missing() -> None:
    first = OrderLookup.record(None, "lg-1", at(5), None)
    second = OrderLookup.record(first, "lg-1", at(50), None)
    assert (second.missing_since, second.checked_at) == (at(5), at(50))
    found = OrderLookup.record(second, "lg-1", at(60), order("lg-1"))
    assert found.missing_since is None
    assert OrderLookup.record(found, "lg-1", at(70), None).missing_since == at(70)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: LedgerSnapshot({"other": order("lg-1")}), "orders"),
        (lambda: LedgerSnapshot.of([order("lg-1", changed=None)]), "orders"),
        (lambda: VenueSnapshot.of([order("lg-1", OrderStatus.UNKNOWN)]), "orders"),
        (lambda: OrderLookup("lg-1", at(5), None), "missing_since"),
        (lambda: OrderLookup("lg-1", at(5), order("lg-2")), "order"),
        (lambda: run(LedgerSnapshot(), VenueSnapshot(), now=NAIVE), "now"),
        (lambda: run(LedgerSnapshot(), VenueSnapshot(), max_queries=-1), "max_queries"),
        (
            lambda: diff(
                LedgerSnapshot(), VenueSnapshot(), client_id_prefix="", now=T0, grace_seconds=1
            ),
            "client_id_prefix",
        ),
        (
            lambda: diff(
                LedgerSnapshot(), VenueSnapshot(), client_id_prefix="x", now=T0, grace_seconds=-1
            ),
            "grace_seconds",
        ),
    ],
)
def test_bad_input_is_refused_by_field(build: Any, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        build()
    assert caught.value.field == field


# Property tests: random stores and venues, built from per-order cases.

_VENUE_STATUSES = [s for s in OrderStatus if s not in (OrderStatus.NEW, OrderStatus.UNKNOWN)]


def _fill_for(status: OrderStatus, partial: bool) -> str:
    if status is OrderStatus.FILLED:
        return "2"
    if status is OrderStatus.PARTIALLY_FILLED:
        return "1"
    if status in (OrderStatus.CANCELLED, OrderStatus.EXPIRED) and partial:
        return "1"
    return "0"


@st.composite
def _order(
    draw: st.DrawFn, cid: str, statuses: Sequence[OrderStatus], terms: tuple[Any, ...]
) -> Order:
    status = draw(st.sampled_from(statuses))
    kind, side = terms
    return order(
        cid,
        status,
        filled=_fill_for(status, draw(st.booleans())),
        changed=at(draw(st.integers(0, 600))),
        kind=kind,
        side=side,
        quantity=draw(st.sampled_from(["2", "2", "2", "3"])),
        venue_order_id=draw(st.sampled_from([None, f"V-{cid}"])),
    )


@st.composite
def _case(draw: st.DrawFn, index: int) -> tuple[Order | None, Order | None, OrderLookup | None]:
    cid = f"{draw(st.sampled_from([PREFIX, PREFIX, 'ext-']))}{index}"
    terms = (
        draw(st.sampled_from([OrderType.LIMIT, OrderType.STOP])),
        draw(st.sampled_from(OrderSide)),
    )
    where = draw(st.sampled_from(["store", "venue", "both"]))
    stored = draw(_order(cid, list(OrderStatus), terms)) if where != "venue" else None
    listed = draw(_order(cid, _VENUE_STATUSES, terms)) if where != "store" else None
    lookup = None
    answer = draw(st.sampled_from(["none", "found", "missing"]))
    checked = draw(st.integers(0, 700))
    if answer == "found":
        lookup = OrderLookup.record(
            None, cid, at(checked), draw(_order(cid, _VENUE_STATUSES, terms))
        )
    elif answer == "missing":
        first = draw(st.integers(0, checked))
        lookup = not_found(cid, first, checked)
    return stored, listed, lookup


@st.composite
def _snapshots(draw: st.DrawFn) -> tuple[LedgerSnapshot, VenueSnapshot]:
    cases = [draw(_case(i)) for i in range(draw(st.integers(0, 12)))]
    quantities = st.sampled_from([None, "1", "2", "3"])
    store_qty, venue_qty = draw(quantities), draw(quantities)
    store_positions = [long(store_qty)] if store_qty else []
    venue_positions = [long(venue_qty)] if venue_qty else []
    amounts = st.sampled_from(["100", "100", "90"])
    store = LedgerSnapshot.of(
        [s for s, _, _ in cases if s is not None],
        store_positions,
        [Balance("USDT", Decimal(draw(amounts)))],
    )
    venue = VenueSnapshot.of(
        [v for _, v, _ in cases if v is not None],
        venue_positions,
        [Balance("USDT", Decimal(draw(amounts)))],
        [lookup for _, _, lookup in cases if lookup is not None],
    )
    return store, venue


def _apply(store: LedgerSnapshot, plan: ReconciliationPlan) -> LedgerSnapshot:
    orders = dict(store.orders)
    for action in plan.actions:
        if action.writes_order:
            assert action.order is not None
            orders[action.order.client_order_id] = action.order
    return LedgerSnapshot(orders, store.positions, store.balances)


@settings(max_examples=100, deadline=None)
@given(snapshots=_snapshots(), max_queries=st.integers(0, 5), now=st.integers(600, 800))
def test_every_order_is_accounted_for_exactly_once(
    snapshots: tuple[LedgerSnapshot, VenueSnapshot], max_queries: int, now: int
) -> None:
    store, venue = snapshots
    plan = run(store, venue, now=at(now), max_queries=max_queries)
    seen = Counter(plan.matched_orders)
    seen.update(plan.deferred_queries)
    seen.update(a.client_order_id for a in plan.actions if a.client_order_id is not None)
    assert set(seen) == set(store.orders) | set(venue.orders)
    assert all(count == 1 for count in seen.values())


@settings(max_examples=100, deadline=None)
@given(snapshots=_snapshots(), max_queries=st.integers(0, 5))
def test_never_more_queries_than_the_cap(
    snapshots: tuple[LedgerSnapshot, VenueSnapshot], max_queries: int
) -> None:
    plan = run(*snapshots, max_queries=max_queries)
    assert len(plan.queries) <= max_queries
    if plan.deferred_queries:
        assert len(plan.queries) == max_queries


@settings(max_examples=100, deadline=None)
@given(snapshots=_snapshots(), now=st.integers(600, 800))
def test_applying_the_status_updates_leaves_none_to_make(
    snapshots: tuple[LedgerSnapshot, VenueSnapshot], now: int
) -> None:
    store, venue = snapshots
    plan = run(store, venue, now=at(now))
    again = run(_apply(store, plan), venue, now=at(now))
    assert not again.of_kind(ActionKind.UPDATE_STATUS)
    assert not again.of_kind(ActionKind.RESOLVE_UNKNOWN)
    assert not again.of_kind(ActionKind.ADOPT)


@st.composite
def _agreeing(draw: st.DrawFn) -> tuple[LedgerSnapshot, VenueSnapshot]:
    working = [OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED]
    finished = [
        OrderStatus.FILLED,
        OrderStatus.CANCELLED,
        OrderStatus.REJECTED,
        OrderStatus.EXPIRED,
    ]
    orders = []
    for index in range(draw(st.integers(0, 10))):
        terms = (OrderType.LIMIT, draw(st.sampled_from(OrderSide)))
        orders.append(draw(_order(f"{PREFIX}{index}", working + finished, terms)))
    positions = []
    if draw(st.booleans()):
        orders.append(stop_loss())
        positions.append(long(draw(st.sampled_from(["1", "2"]))))
    balances = [Balance(asset, Decimal(draw(st.integers(0, 10**6)))) for asset in ("USDT", "BTC")]
    store = LedgerSnapshot.of(orders, positions, balances)
    venue = VenueSnapshot.of([o for o in orders if o.is_open], positions, balances)
    return store, venue


@settings(max_examples=200, deadline=None)
@given(snapshots=_agreeing(), now=st.integers(600, 800))
def test_the_diff_of_agreeing_snapshots_is_empty(
    snapshots: tuple[LedgerSnapshot, VenueSnapshot], now: int
) -> None:
    plan = run(*snapshots, now=at(now))
    assert plan.is_empty
    assert set(plan.matched_orders) == set(snapshots[0].orders)
