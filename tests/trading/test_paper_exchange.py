"""The paper exchange's HTTP API: statuses, hold points, the placement audit and control.

Driven through its own Starlette app with httpx's in-process ASGI transport, on simulated
time. tests/integration/test_execution_kill.py runs it as a real process.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from legato.kernel.clock import Clock
from legato.kernel.ratelimit import Budget
from legato.trading.instruments import Instrument
from legato.trading.orders import Order, OrderSide, OrderType
from legato.trading.paper_exchange import PaperExchange, main
from legato.trading.paper_venue import PaperVenueConfig
from legato.trading.paper_venue_state import PaperVenueState
from legato.trading.venue_wire import to_wire

from .conftest import PERP
from .execution_harness import EXACT_RULES, GENEROUS, flat_bar


def order(cid: str, **changes: Any) -> dict[str, object]:
    fields: dict[str, Any] = {
        "client_order_id": cid,
        "symbol": PERP,
        "side": OrderSide.BUY,
        "type": OrderType.MARKET,
        "quantity": Decimal("0.010"),
        "leverage": Decimal(5),
    }
    fields.update(changes)
    return to_wire(Order(**fields))


def stop_loss(cid: str) -> dict[str, object]:
    return order(
        cid,
        side=OrderSide.SELL,
        type=OrderType.STOP,
        stop_price=Decimal(19500),
        reduce_only=True,
    )


@asynccontextmanager
async def client(
    perp: Instrument, clock: Clock, config: PaperVenueConfig = GENEROUS
) -> AsyncIterator[tuple[PaperExchange, httpx.AsyncClient]]:
    exchange = PaperExchange(
        [perp], balances={"USDT": Decimal(100_000)}, config=config, clock=clock
    )
    exchange.process_bars([flat_bar(0)])
    transport = httpx.ASGITransport(app=exchange.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange.test") as http:
        yield exchange, http


async def test_the_audit_marks_every_client_id_sent_more_than_once(
    perp: Instrument, clock: Clock
) -> None:
    async with client(perp, clock) as (_, http):
        assert (await http.post("/orders", json=order("a-E"))).status_code == 200
        again = await http.post("/orders", json=order("a-E"))
        assert (again.status_code, again.json()["error"]) == (409, "duplicate")
        assert (await http.post("/orders", json=order("b-E"))).status_code == 200
        audit = (await http.get("/control/audit")).json()
    assert [(r["client_order_id"], r["first"], r["outcome"]) for r in audit["placements"]] == [
        ("a-E", True, "accepted"),
        ("a-E", False, "duplicate"),
        ("b-E", True, "accepted"),
    ]
    assert audit["sent_twice"] == ["a-E"]


async def test_a_hold_after_acceptance_answers_only_once_released(
    perp: Instrument, clock: Clock
) -> None:
    async with client(perp, clock) as (exchange, http), asyncio.TaskGroup() as tasks:
        hold = (await http.post("/control/holds", json={"suffix": "-E", "stage": "after"})).json()
        placing = tasks.create_task(http.post("/orders", json=order("a-E")))
        reached = (await http.get(f"/control/holds/{hold['hold_id']}", params={"wait": 5})).json()
        assert reached["reached"]
        assert reached["client_order_id"] == "a-E"
        # Accepted while held: the order is on the book, its answer not sent yet.
        assert not placing.done()
        assert [o.client_order_id for o in exchange.venue.state().orders] == ["a-E"]
        audit = (await http.get("/control/audit", params={"wait_for": "a-E", "wait": 5})).json()
        assert audit["placements"][0]["outcome"] == "accepted"
        await http.post(f"/control/holds/{hold['hold_id']}/release", json={"action": "proceed"})
        answer = await placing
    assert answer.status_code == 200
    assert answer.json()["status"] == "accepted"


async def test_a_reset_drops_held_requests_and_empties_the_book(
    perp: Instrument, clock: Clock
) -> None:
    async with client(perp, clock) as (exchange, http), asyncio.TaskGroup() as tasks:
        await http.post("/orders", json=order("a-E"))
        await http.post("/control/holds", json={"suffix": "-SL", "stage": "before"})
        placing = tasks.create_task(http.post("/orders", json=stop_loss("a-SL")))
        await http.get("/control/holds/1", params={"wait": 5})
        assert (await http.post("/control/reset")).status_code == 200
        dropped = await placing
        state = PaperVenueState.from_json((await http.get("/control/state")).text)
        audit = (await http.get("/control/audit")).json()
    assert (dropped.status_code, dropped.json()["error"]) == (503, "transient")
    assert state.orders == ()
    assert audit == {"placements": [], "sent_twice": []}
    assert exchange.placements == ()


async def test_protection_reports_how_long_a_position_went_without_a_stop(
    perp: Instrument, clock: Clock
) -> None:
    async with client(perp, clock) as (_, http):
        await http.post("/orders", json=order("a-E"))
        fills = (await http.post("/control/bars", json={"bars": [to_wire(flat_bar(1))]})).json()[
            "fills"
        ]
        assert [fill["client_order_id"] for fill in fills] == ["a-E"]
        bare = (await http.get("/control/protection")).json()
        await clock.sleep(3.0)
        await http.post("/orders", json=stop_loss("a-SL"))
        covered = (await http.get("/control/protection")).json()
    assert bare["positions"][0]["protected"] is False
    assert covered["positions"][0]["protected"] is True
    assert covered["positions"][0]["stop_cover"] == "0.010"
    assert covered["longest_bare_seconds"] == pytest.approx(3.0)


async def test_over_budget_calls_are_answered_429_with_retry_after_then_418_banned(
    perp: Instrument, clock: Clock
) -> None:
    config = PaperVenueConfig(
        rules=EXACT_RULES,
        order_budget=Budget(limit=1, per=10.0),
        general_budget=Budget(limit=1_000, per=1.0),
        ban_threshold=2,
        ban_duration=60.0,
    )
    async with client(perp, clock, config) as (_, http):
        assert (await http.post("/orders", json=order("a-E"))).status_code == 200
        limited = await http.post("/orders", json=order("b-E"))
        banned = await http.post("/orders", json=order("c-E"))
    assert limited.status_code == 429
    assert limited.json()["error"] == "rate_limited"
    assert float(limited.headers["retry-after"]) == pytest.approx(10.0)
    assert banned.status_code == 418
    assert banned.json()["error"] == "banned"
    assert float(banned.headers["retry-after"]) == pytest.approx(60.0)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/orders", {"client_order_id": "x"}, "Order"),
        ("/orders", {**order("a-E"), "colour": "red"}, "Order fields"),
        ("/control/bars", {"bars": [{"symbol": PERP}]}, "Bar"),
        ("/control/holds", {"suffix": "-E", "stage": "during"}, "stage"),
        ("/control/holds", {"suffix": "-E", "method": "get_order"}, "method"),
        ("/control/faults", {"kind": "meltdown"}, "kind"),
        ("/control/faults", {"kind": "reject", "times": "twice"}, "times"),
        ("/control/faults", {"kind": "reject", "method": "get_order"}, "method"),
        ("/control/faults", {"kind": "reject", "colour": "red"}, "colour"),
    ],
)
async def test_bad_requests_are_answered_400_naming_the_field_and_change_nothing(
    perp: Instrument, clock: Clock, path: str, body: dict[str, object], field: str
) -> None:
    async with client(perp, clock) as (exchange, http):
        before = exchange.venue.state().to_json()
        answer = await http.post(path, json=body)
        assert exchange.venue.state().to_json() == before
    assert answer.status_code == 400
    assert answer.json()["error"] == "validation"
    assert answer.json()["field"] == field


async def test_a_fault_armed_over_http_rejects_the_next_place_request_then_is_used_up(
    perp: Instrument, clock: Clock
) -> None:
    async with client(perp, clock) as (exchange, http):
        armed = await http.post(
            "/control/faults",
            json={"kind": "reject", "method": "place_order", "reason": "no stops today"},
        )
        refused = await http.post("/orders", json=stop_loss("a-SL"))
        accepted = await http.post("/orders", json=order("a-E"))
        again = await http.post(
            "/control/faults", json={"kind": "reject", "method": "place_order", "times": None}
        )
        cleared = await http.delete("/control/faults")
        after = await http.post("/orders", json=order("b-E"))
        audit = (await http.get("/control/audit")).json()
    assert armed.status_code == 200
    assert isinstance(armed.json()["fault_id"], int)
    assert refused.status_code == 422, refused.text
    assert "no stops today" in refused.text
    assert accepted.status_code == 200
    assert again.status_code == 200
    assert cleared.json() == {"cleared": True}
    assert after.status_code == 200
    assert [(r["client_order_id"], r["outcome"]) for r in audit["placements"]] == [
        ("a-SL", "rejected"),
        ("a-E", "accepted"),
        ("b-E", "accepted"),
    ]
    assert exchange.venue.faults.active == ()


def test_the_program_refuses_a_bad_option_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--balance", "USDT"]) == 2
    assert "--balance" in capsys.readouterr().err
    instruments = tmp_path / "instruments.json"
    instruments.write_text(json.dumps([{"symbol": "X"}]))
    assert main(["--instruments", str(instruments)]) == 2
    assert "Instrument" in capsys.readouterr().err
