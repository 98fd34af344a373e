"""The desk's JSON routes and pages over a real Desk trading a scripted market on simulated time.

Each test starts a real `Desk` (paper venue, agents, coordinator, risk engine, execution
manager, ledger) on the test's store and clock, mounts it on the service app with
`mount_desk` as `legato run` does, and reads and acts through HTTP only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from legato.kernel.clock import Clock
from legato.kernel.message import Message
from legato.orchestrator import Orchestrator
from legato.service import ServiceOptions, create_app
from legato.service.routes.desk import ConfigLoader, desk_router, mount_desk
from legato.trading.desk import Desk
from legato.trading.desk_config import (
    DataSettings,
    DeskConfig,
    StrategyConfig,
    VenueSettings,
    desk_config_from_mapping,
)
from legato.trading.ledger import EquityMarks, OrderRole
from legato.trading.market_data import Bar
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType
from trading.agents.scripted_bars import SYMBOL, trend
from trading.desk_harness import INSTRUMENT, START, empty_desk_tables

from ..asyncness import threaded_callables
from ..conftest import settings_for

# Ten virtual seconds a bar: a bracket is complete before the next bar arrives, and the
# telemetry (every 20 s) draws an equity curve of a few dozen points.
CONFIG = DeskConfig(
    instruments=(INSTRUMENT,),
    strategies=(StrategyConfig(symbols=(SYMBOL,)),),
    venue=VenueSettings(starting_balance=START, participation=Decimal(1)),
    data=DataSettings(speed=30.0),
    guard_interval=2.0,
    telemetry_interval=20.0,
)

DeskClient = tuple[Desk, httpx.AsyncClient]
# The service's own loops (task watcher, reaper, loop-lag probe) have nothing to watch here;
# run rarely, they leave the simulated minutes of trading to the desk.
QUIET = ServiceOptions(watch_interval=60.0, reaper_interval=60.0, lag_interval=60.0)


@pytest.fixture
def desk_url(store_url: str) -> str:
    """An empty, migrated store on each backend."""
    empty_desk_tables(store_url)
    return store_url


@pytest.fixture
def desk_service(
    orchestrator: Orchestrator, serving: Any, desk_url: str, clock: Clock
) -> Callable[..., AbstractAsyncContextManager[DeskClient]]:
    """`async with desk_service(bars) as (desk, client):` a trading desk behind the service."""

    @asynccontextmanager
    async def run(
        bars: Iterable[Bar] | None = None, *, reload_config: ConfigLoader | None = None
    ) -> AsyncIterator[DeskClient]:
        desk = Desk(CONFIG, store_url=desk_url, clock=clock, bars=bars if bars is not None else [])
        await desk.start()
        app = create_app(
            settings_for(desk_url),
            orchestrator,
            bus=desk.bus,
            options=QUIET,
            rng=random.Random(3),
            environ={},
        )
        mount_desk(app, desk, reload_config=reload_config)
        if bars is None:
            # No market: the desk stays started, idle, for the test to read and act on.
            try:
                async with serving(app) as client:
                    yield desk, client
            finally:
                await desk.stop()
            return
        async with asyncio.TaskGroup() as group:
            group.create_task(desk.run(), name="desk-under-test")
            try:
                async with serving(app) as client:
                    yield desk, client
            finally:
                desk.request_stop()

    return run


async def protected_position(desk: Desk, client: httpx.AsyncClient) -> dict[str, Any]:
    """Wait for the desk to report a trade executed (its bracket complete); return the position.

    Waits on the bus for the run's outcome rather than polling the API.
    """
    executed = asyncio.Event()

    async def on_outcome(message: Message) -> None:
        if message.payload["status"] == "executed":
            executed.set()

    await desk.bus.subscribe(
        subscriber_id="test-outcomes", topic="desk.outcome.>", handler=on_outcome
    )
    try:
        await executed.wait()
    finally:
        await desk.bus.unsubscribe("test-outcomes")
    [position] = (await client.get("/desk")).json()["positions"]
    assert position["stop_loss_order_id"]
    assert position["take_profit_order_id"]
    found: dict[str, Any] = position
    return found


async def until(condition: Callable[[], Awaitable[bool]], clock: Clock, within: float) -> None:
    """Check `condition` every virtual bar (ten seconds) until it holds, failing after `within`."""
    deadline = clock.monotonic() + within
    while not await condition():
        if clock.monotonic() >= deadline:
            pytest.fail(f"condition not met within {within} s of clock time")
        await clock.sleep(10.0)


async def test_the_desk_page_shows_an_open_position_with_its_stop_loss_and_take_profit(
    desk_service: Any,
) -> None:
    async with desk_service(trend(85, drift=0.003)) as (desk, client):
        position = await protected_position(desk, client)
        orders = {o["client_order_id"]: o for o in (await client.get("/desk/orders")).json()}
        page = (await client.get("/ui/desk")).text
    stop_loss = orders[position["stop_loss_order_id"]]
    take_profit = orders[position["take_profit_order_id"]]
    assert (stop_loss["role"], take_profit["role"]) == ("stop_loss", "take_profit")
    row = re.search(rf'<tr data-position="{SYMBOL}">.*?</tr>', page, re.S)
    assert row is not None
    stop_cell = re.search(r"data-stop-loss[^>]*>([^<]+)<", row.group(0))
    target_cell = re.search(r"data-take-profit[^>]*>([^<]+)<", row.group(0))
    assert stop_cell is not None
    assert target_cell is not None
    assert stop_cell.group(1) == stop_loss["stop_price"]
    assert target_cell.group(1) == (take_profit["stop_price"] or take_profit["price"])
    assert f'data-action="/desk/positions/{SYMBOL}/close"' in row.group(0)


async def test_the_history_routes_show_the_decision_votes_entry_and_equity_behind_a_trade(
    desk_service: Any,
) -> None:
    async with desk_service(trend(85, drift=0.003)) as (desk, client):
        position = await protected_position(desk, client)

        async def executed_runs() -> list[dict[str, Any]]:
            params = {"status": "executed"}
            runs: list[dict[str, Any]] = (await client.get("/desk/decisions", params=params)).json()
            return runs

        decisions = await executed_runs()
        prices = (await client.get(f"/desk/prices/{SYMBOL}")).json()
        equity = (await client.get("/desk/equity")).json()
        decisions_page = (await client.get("/ui/desk/decisions")).text
        desk_page = (await client.get("/ui/desk")).text
    [executed] = decisions
    assert executed["action"] in {"BUY", "buy"}
    assert executed["votes"], "an executed decision carries its model votes"
    assert all(0.0 <= vote["confidence"] <= 1.0 for vote in executed["votes"])
    assert f'data-decision="{executed["key"]}"' in decisions_page
    # A bar's time is market time, shown as it is: a replay runs ahead of the wall clock,
    # and "in 1 d" (relative to now) would say nothing about the bar.
    bar = datetime.fromisoformat(executed["bar_time"])
    assert f'<time datetime="{bar.isoformat()}">{bar:%Y-%m-%d %H:%M}</time>' in decisions_page
    # The price chart marks the entry fill at its price, inside the span of recent closes.
    entries = [m for m in prices["markers"] if m["kind"] == "entry"]
    assert [m["role"] for m in entries] == ["entry"]
    assert Decimal(entries[0]["price"]) == Decimal(position["entry_price"])
    assert prices["closes"][0]["at"] <= entries[0]["at"] <= prices["closes"][-1]["at"]
    assert 'data-marker="entry"' in desk_page
    # The equity curve follows the telemetry passes, oldest first.
    times = [point["at"] for point in equity["points"]]
    assert len(times) >= 2
    assert times == sorted(times)
    assert 'class="desk-chart equity"' in desk_page
    assert 'class="series"' in desk_page


async def test_the_kill_switch_needs_the_token_then_closes_the_position_and_shows_on(
    desk_service: Any, clock: Clock, auth: dict[str, str]
) -> None:
    async with desk_service(trend(85, drift=0.003)) as (desk, client):
        await protected_position(desk, client)
        refused = await client.post("/desk/kill-switch")
        still_off = (await client.get("/desk")).json()["kill_switch"]
        accepted = await client.post("/desk/kill-switch", headers=auth)

        async def flat() -> bool:
            return not (await client.get("/desk")).json()["positions"]

        await until(flat, clock, within=600.0)
        page = (await client.get("/ui/desk")).text
        closes = (await client.get("/desk/orders", params={"symbol": SYMBOL})).json()
    assert refused.status_code == 401
    assert refused.json()["error"]["code"]
    assert still_off is False
    assert accepted.status_code == 200
    assert accepted.json()["ok"] is True
    assert "Kill switch is on" in page
    assert 'data-action="/desk/kill-switch"' not in page
    assert [o["status"] for o in closes if o["role"] == "close"] == ["filled"]


async def test_a_drawdown_reset_needs_the_token_and_measures_from_the_equity_now(
    desk_service: Any, clock: Clock, auth: dict[str, str]
) -> None:
    async with desk_service() as (desk, client):
        # A peak of twice the equity: a 50% drawdown, far past the 10% halt.
        now = clock.now()
        day = now.date().isoformat()
        high = EquityMarks(day, START, START, START * 2, START)
        await desk.ledger.write(lambda tx: tx.put_equity_marks(high, now))
        refused = await client.post("/desk/risk/reset-drawdown")
        accepted = await client.post("/desk/risk/reset-drawdown", headers=auth)
        alerts = (await client.get("/desk/alerts")).json()
        marks = await desk.ledger.read(lambda tx: tx.latest_equity_marks())
    assert refused.status_code == 401
    assert accepted.status_code == 200
    assert accepted.json()["details"] == {
        "peak_equity": str(START),
        "replaced_peak_equity": str(START * 2),
    }
    assert marks is not None
    assert (marks.peak_equity, marks.trough_equity) == (START, START)
    [alert] = [a for a in alerts if a["code"] == "drawdown_reset"]
    assert alert["level"] == "warning"
    assert f"the peak was {START * 2:.2f}" in alert["message"]


async def test_pausing_a_symbol_and_closing_its_position_work_through_the_controls(
    desk_service: Any, clock: Clock, auth: dict[str, str]
) -> None:
    async with desk_service(trend(85, drift=0.003)) as (desk, client):
        await protected_position(desk, client)
        paused = await client.post(f"/desk/symbols/{SYMBOL}/pause", headers=auth)
        paused_page = (await client.get("/ui/desk")).text
        closing = await client.post(f"/desk/positions/{SYMBOL}/close", headers=auth)
        order_id = closing.json()["details"]["client_order_id"]

        async def filled() -> bool:
            orders = (await client.get("/desk/orders", params={"status": "filled"})).json()
            return any(o["client_order_id"] == order_id for o in orders)

        await until(filled, clock, within=600.0)
        resumed = await client.post(f"/desk/symbols/{SYMBOL}/resume", headers=auth)
        state = (await client.get("/desk")).json()
    assert paused.json()["ok"] is True
    assert f'data-action="/desk/symbols/{SYMBOL}/resume"' in paused_page
    assert closing.json()["ok"] is True
    assert resumed.json()["ok"] is True
    assert state["paused"] == []
    assert state["positions"] == []


async def test_an_unknown_order_is_listed_first_and_flagged_for_reconciling(
    desk_service: Any, clock: Clock
) -> None:
    async with desk_service() as (desk, client):
        now = clock.now()
        base = Order(
            client_order_id="lg-a-known",
            symbol=SYMBOL,
            side=OrderSide.BUY,
            type=OrderType.LIMIT,
            quantity=Decimal("0.5"),
            price=Decimal(99),
            status=OrderStatus.ACCEPTED,
            created_at=now,
            updated_at=now,
        )
        unknown = dataclasses.replace(
            base, client_order_id="lg-z-unknown", status=OrderStatus.UNKNOWN
        )
        for order in (base, unknown):
            await desk.ledger.write(lambda tx, o=order: tx.put_order(o, OrderRole.ENTRY))
        listed = (await client.get("/desk/orders")).json()
        only_unknown = (await client.get("/desk/orders", params={"status": "unknown"})).json()
        page = (await client.get("/ui/desk/orders")).text
    assert [o["client_order_id"] for o in listed] == ["lg-z-unknown", "lg-a-known"]
    assert [o["unknown"] for o in listed] == [True, False]
    assert [o["client_order_id"] for o in only_unknown] == ["lg-z-unknown"]
    assert '<tr data-order="lg-z-unknown" class="unknown-order">' in page
    assert "1 UNKNOWN order" in page


async def test_bad_input_gets_an_error_envelope_naming_what_is_accepted(
    desk_service: Any, auth: dict[str, str]
) -> None:
    async with desk_service() as (_, client):
        unknown_symbol = await client.get("/desk/prices/DOGE-USDT")
        unknown_pause = await client.post("/desk/symbols/DOGE-USDT/pause", headers=auth)
        bad_status = await client.get("/desk/orders", params={"status": "lost"})
        bad_limit = await client.get("/desk/decisions", params={"limit": 0})
        state = (await client.get("/desk")).json()
    assert unknown_symbol.status_code == 404
    assert unknown_symbol.json()["error"]["details"]["accepted"] == [SYMBOL]
    assert unknown_pause.status_code == 404
    assert state["paused"] == []
    assert bad_status.status_code == 422
    assert "error" in bad_status.json()
    assert bad_limit.status_code == 422
    assert "error" in bad_limit.json()


async def test_the_json_routes_are_in_the_openapi_schema_and_the_pages_are_not(
    desk_service: Any,
) -> None:
    async with desk_service() as (_, client):
        paths = (await client.get("/openapi.json")).json()["paths"]
    for path in (
        "/desk",
        "/desk/decisions",
        "/desk/conflicts",
        "/desk/alerts",
        "/desk/orders",
        "/desk/equity",
        "/desk/prices/{symbol}",
        "/desk/kill-switch",
    ):
        assert path in paths, path
    assert not [path for path in paths if path.startswith("/ui/")]


async def test_every_desk_page_renders_an_empty_state_before_any_trade(
    desk_service: Any,
) -> None:
    async with desk_service() as (_, client):
        pages = {
            path: await client.get(path)
            for path in (
                "/ui/desk",
                "/ui/desk/orders",
                "/ui/desk/decisions",
                "/ui/desk/conflicts",
                "/ui/desk/alerts",
            )
        }
        conflicts = (await client.get("/desk/conflicts")).json()
        alerts = (await client.get("/desk/alerts")).json()
    assert {path: r.status_code for path, r in pages.items()} == dict.fromkeys(pages, 200)
    assert "No open position" in pages["/ui/desk"].text
    assert "No order yet" in pages["/ui/desk/orders"].text
    assert "No decision yet" in pages["/ui/desk/decisions"].text
    assert "No conflict yet" in pages["/ui/desk/conflicts"].text
    assert "No alert" in pages["/ui/desk/alerts"].text
    assert conflicts == []
    assert alerts == []


async def test_the_desk_tab_shows_only_where_a_desk_is_mounted(
    desk_service: Any, service_app: FastAPI, serving: Any
) -> None:
    async with serving(service_app) as client:
        without = (await client.get("/")).text
    async with desk_service() as (_, client):
        with_desk = (await client.get("/")).text
    assert 'href="/ui/desk"' not in without
    assert 'href="/ui/desk"' in with_desk


async def test_no_desk_route_or_dependency_runs_in_a_worker_thread(desk_service: Any) -> None:
    async with desk_service() as (desk, _):
        app = FastAPI()
        app.include_router(desk_router(desk, reload_config=lambda: CONFIG))
        assert threaded_callables(app) == []


def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _sample(families: dict[str, Any], name: str, **labels: str) -> float:
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                value: float = sample.value
                return value
    raise AssertionError(f"no sample {name}{labels}")


async def test_metrics_show_the_position_equity_and_counters_after_a_trade(
    desk_service: Any,
) -> None:
    async with desk_service(trend(85, drift=0.003)) as (desk, client):
        position = await protected_position(desk, client)
        scrape = await client.get("/metrics")
        balances = (await client.get("/desk")).json()
    assert scrape.status_code == 200
    families = _families(scrape.text)
    quantity = float(position["quantity"])
    assert _sample(families, "legato_desk_position_quantity", symbol=SYMBOL) == quantity
    assert _sample(families, "legato_desk_open_positions") == 1
    last = _sample(families, "legato_desk_last_price", symbol=SYMBOL)
    exposure = _sample(families, "legato_desk_position_exposure_notional", symbol=SYMBOL)
    assert exposure == pytest.approx(quantity * last)
    assert _sample(families, "legato_desk_exposure_notional", quote_asset="USDT") == exposure
    unrealized = _sample(families, "legato_desk_position_unrealized_pnl", symbol=SYMBOL)
    entry = float(position["entry_price"])
    assert unrealized == pytest.approx((last - entry) * quantity)
    cash = _sample(families, "legato_desk_balance", asset="USDT")
    equity = _sample(families, "legato_desk_equity", quote_asset="USDT")
    assert equity == pytest.approx(cash + unrealized)
    # The entry's fee is all that has left the account yet.
    assert float(START) * 0.99 < equity < float(START) * 1.01
    assert _sample(families, "legato_desk_trades_total", symbol=SYMBOL, result="executed") == 1
    assert _sample(families, "legato_desk_trades_total", symbol=SYMBOL, result="failed") == 0
    assert _sample(families, "legato_desk_decisions_total", symbol=SYMBOL, status="executed") == 1
    assert _sample(families, "legato_desk_bars_processed_total") >= 70
    assert _sample(families, "legato_desk_trading_state", state="active") == 1
    assert _sample(families, "legato_desk_trading_state", state="halted") == 0
    assert _sample(families, "legato_desk_kill_switch") == 0
    assert _sample(families, "legato_desk_orders_unknown", symbol=SYMBOL) == 0
    assert _sample(families, "legato_desk_orders_open", symbol=SYMBOL) == 2  # stop and target
    assert _sample(families, "legato_desk_pending_writes") == 0
    assert {s.labels["level"] for s in families["legato_desk_alerts"].samples} == {
        "info",
        "warning",
        "high",
        "critical",
    }
    runs = _sample(families, "legato_desk_agent_latency_seconds_count", stage="execution")
    assert runs == 1
    assert (
        _sample(families, "legato_desk_agent_latency_seconds_bucket", stage="execution", le="+Inf")
        == 1
    )
    assert _sample(families, "legato_desk_agent_latency_seconds_count", stage="analysis") >= 1
    assert balances["positions"][0]["quantity"] == position["quantity"]


async def test_metrics_count_unknown_orders_and_the_overview_shows_the_telemetry(
    desk_service: Any, clock: Clock
) -> None:
    async with desk_service(trend(85, drift=0.003)) as (desk, client):
        await protected_position(desk, client)

        async def telemetry_sees_the_position() -> bool:
            telemetry = (await client.get("/desk")).json()["telemetry"]
            return telemetry is not None and telemetry["open_positions"] == 1

        await until(telemetry_sees_the_position, clock, within=120.0)
        page = (await client.get("/ui/desk")).text
        now = clock.now()
        unknown = Order(
            client_order_id="lg-z-unknown",
            symbol=SYMBOL,
            side=OrderSide.BUY,
            type=OrderType.LIMIT,
            quantity=Decimal("0.5"),
            price=Decimal(99),
            status=OrderStatus.UNKNOWN,
            created_at=now,
            updated_at=now,
        )
        await desk.ledger.write(lambda tx: tx.put_order(unknown, OrderRole.ENTRY))
        families = _families((await client.get("/metrics")).text)
    assert _sample(families, "legato_desk_orders_unknown", symbol=SYMBOL) == 1
    assert re.search(r'data-figure="open-positions">1<', page)
    assert "data-telemetry" in page
    assert 'data-latency="execution"' in page


async def test_metrics_carry_no_desk_families_when_no_desk_is_mounted(
    service_app: FastAPI, serving: Any
) -> None:
    async with serving(service_app) as client:
        families = _families((await client.get("/metrics")).text)
    assert "legato_tasks" in families
    assert not [name for name in families if name.startswith("legato_desk_")]


async def test_a_config_reload_needs_the_token_and_applies_a_lower_risk_limit(
    desk_service: Any, auth: dict[str, str]
) -> None:
    lowered = dataclasses.replace(
        CONFIG, risk=dataclasses.replace(CONFIG.risk, max_open_positions=1)
    )
    async with desk_service(reload_config=lambda: lowered) as (desk, client):
        refused = await client.post("/desk/config/reload")
        unchanged = desk.config.risk.max_open_positions
        reloaded = await client.post("/desk/config/reload", headers=auth)
        page = (await client.get("/ui/desk")).text
        again = await client.post("/desk/config/reload", headers=auth)
    assert refused.status_code == 401
    assert unchanged == 5
    assert reloaded.status_code == 200
    body = reloaded.json()
    assert body["applied"] is True
    assert body["applied_changes"] == [
        {
            "field": "risk.max_open_positions",
            "old": 5,
            "new": 1,
            "safe": True,
            "effect": body["applied_changes"][0]["effect"],
            "restart_reason": None,
        }
    ]
    assert desk.config.risk.max_open_positions == 1
    assert "Limits: 1 open positions at most" in page
    assert again.status_code == 200
    assert again.json()["applied_changes"] == []
    assert "no change" in again.json()["summary"]


async def test_a_config_reload_needing_a_restart_is_refused_with_each_field_named(
    desk_service: Any, auth: dict[str, str]
) -> None:
    moved = dataclasses.replace(
        CONFIG,
        venue=dataclasses.replace(CONFIG.venue, starting_balance=Decimal(1_000)),
        risk=dataclasses.replace(CONFIG.risk, max_open_positions=1),
    )
    async with desk_service(reload_config=lambda: moved) as (desk, client):
        answer = await client.post("/desk/config/reload", headers=auth)
        config_after = desk.config
    assert answer.status_code == 409
    error = answer.json()["error"]
    assert error["code"] == "restart_required"
    [refused] = error["details"]["refused"]
    assert refused["field"] == "venue.starting_balance"
    assert (refused["old"], refused["new"]) == (str(START), "1000")
    assert refused["restart_reason"]
    assert [c["field"] for c in error["details"]["held_back"]] == ["risk.max_open_positions"]
    assert config_after is CONFIG


async def test_an_invalid_config_file_is_reported_and_changes_nothing(
    desk_service: Any, auth: dict[str, str]
) -> None:
    def broken() -> DeskConfig:
        return desk_config_from_mapping({"risk": {"max_open_positions": 0}, "speling": 1})

    async with desk_service(reload_config=broken) as (desk, client):
        answer = await client.post("/desk/config/reload", headers=auth)
        config_after = desk.config
    async with desk_service() as (_, client):
        without_file = await client.post("/desk/config/reload", headers=auth)
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "invalid_config"
    assert {p["field"] for p in error["details"]["problems"]} == {
        "risk.max_open_positions",
        "speling",
    }
    assert config_after is CONFIG
    assert without_file.status_code == 404
