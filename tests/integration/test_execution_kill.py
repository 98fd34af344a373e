"""Proof by kill -9: the execution workflow, killed at each step, against a separate exchange.

The paper exchange runs as its own process (`python -m legato.trading.paper_exchange`), as a
real exchange would: it keeps what a killed client placed. A trading process
(execution_child.py) carries one bracket trade through an `OrderExecutionManager` on a
SQLite ledger, over `HttpVenue`, and is killed with SIGKILL at one exact point of the
workflow; exact because the exchange's hold points stop the request on either side of
acceptance (or the child stops itself just before a send), and the test waits for that
event instead of sleeping. A second process then does what a restarted desk does (reconcile,
`manager.recover()`, the desk's loops) until everything is settled, and exits.

Then, against the exchange (the truth):

- the position is flat, or protected by live reduce-only stops for its whole quantity;
- no client order id was ever placed twice as a new order (the exchange's request audit);
- the ledger agrees with the exchange: every order the exchange knows is in the ledger with
  the same status and fill, every ledger order the exchange never saw is final and marked
  not placed, and the ledger's open position is the exchange's;
- after an emergency close (the exchange rejected the stop-loss), exactly one closing order
  was accepted and a CRITICAL stop-loss-failed alert is stored;
- a ghost (a held place request let land only after the restarted process gave it up and
  settled) ends cancelled on the exchange, and the restarted process settles again.
"""

from __future__ import annotations

import asyncio
import json
import select
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from legato.kernel.clock import Clock
from legato.trading.alerts import AlertCode, AlertLevel
from legato.trading.ledger import TradingLedger
from legato.trading.market_data import Bar
from legato.trading.orders import OrderStatus, OrderType
from legato.trading.paper_venue_state import PaperVenueState
from legato.trading.venue_wire import to_wire

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHILD = Path(__file__).with_name("execution_child.py")
SYMBOL = "BTC-USDT-PERP"
QUANTITY = Decimal("0.010")
# Bounds on waiting for an event; never a sleep. Generous: two shared cores, cold imports.
EVENT_DEADLINE = 30.0
SETTLE_DEADLINE = 45.0


@dataclass(frozen=True)
class KillPoint:
    """Where the trading process dies, and how the test gets it exactly there.

    `stop_before`: the child stops itself just before sending the order with this suffix.
    `hold`: the exchange holds the `hold_method` request ("place_order" or "cancel_order")
    of this suffix, `stage` "before" accepting it or "after" (accepted, answer held).
    `fill_first`: the entry is filled (a bar pushed) before the kill; only 0.004 of it when
    `partial`. `reject_stop_loss`: the exchange rejects the stop-loss (the emergency close
    follows). `take_profit_fills`: once the trade is bracketed, a bar fills the take-profit
    and the child's protection monitor cancels the stop-loss (OCO). `release`: what the
    exchange does with the held request once the trader is dead ("proceed": it lands late;
    "drop": it never does); with `ghost` it lands only after the restarted process gave the
    order up and settled. `bar_after_kill`: then a bar is pushed, while the trader is still
    dead; `bar_when_accepted`: a bar is pushed while the restarted process runs, once the
    order of this suffix was accepted. `position`: whether the trade ends with an open
    (protected) position of `quantity`. `critical`: a CRITICAL stop-loss-failed alert must
    be stored.
    """

    name: str
    stop_before: str | None = None
    hold: str | None = None
    hold_method: str = "place_order"
    stage: str = "before"
    fill_first: bool = True
    partial: bool = False
    reject_stop_loss: bool = False
    take_profit_fills: bool = False
    bar_after_kill: bool = False
    bar_when_accepted: str | None = None
    release: str = "proceed"
    ghost: bool = False
    position: bool = True
    quantity: Decimal = QUANTITY
    critical: bool = False


PARTIAL = Decimal("0.004")
KILL_POINTS = [
    # The intent and its entry (UNKNOWN, "being sent") are in the store; nothing was sent.
    KillPoint("intent-recorded", stop_before="-E", fill_first=False, position=False),
    # The entry request reached the exchange, which never accepts it (the connection died).
    KillPoint("entry-in-flight", hold="-E", fill_first=False, release="drop", position=False),
    # The entry request was on its way; it lands only after the process died, then fills.
    KillPoint("entry-lands-after-the-kill", hold="-E", fill_first=False, bar_after_kill=True),
    # The exchange accepted the entry; the answer never came back; it fills meanwhile.
    KillPoint(
        "entry-accepted-answer-held",
        hold="-E",
        stage="after",
        fill_first=False,
        bar_after_kill=True,
    ),
    # The entry filled and the position is recorded; the stop-loss is not sent yet.
    KillPoint("entry-filled-before-stop-loss", stop_before="-SL"),
    # The stop-loss request reached the exchange, which never accepts it.
    KillPoint("stop-loss-in-flight", hold="-SL", release="drop"),
    # The stop-loss request was on its way; it lands only after the process died.
    KillPoint("stop-loss-lands-after-the-kill", hold="-SL"),
    # The exchange accepted the stop-loss; the answer never came back.
    KillPoint("stop-loss-accepted-answer-held", hold="-SL", stage="after"),
    # The take-profit request reached the exchange, which never accepts it.
    KillPoint("take-profit-in-flight", hold="-TP", release="drop"),
    # The trade returned BRACKETED; the process dies afterwards.
    KillPoint("done"),
    # The take-profit filled; the OCO cancel of the stop-loss never reaches the exchange.
    KillPoint(
        "oco-cancel-in-flight",
        hold="-SL",
        hold_method="cancel_order",
        take_profit_fills=True,
        release="drop",
        position=False,
    ),
    # The take-profit filled; the exchange cancelled the stop-loss; the answer never came.
    KillPoint(
        "oco-cancel-accepted-answer-held",
        hold="-SL",
        hold_method="cancel_order",
        stage="after",
        take_profit_fills=True,
        position=False,
    ),
    # The entry filled 0.004 of 0.010; the cancel of its rest never reaches the exchange.
    KillPoint(
        "partial-entry-cancel-in-flight",
        hold="-E",
        hold_method="cancel_order",
        partial=True,
        release="drop",
        quantity=PARTIAL,
    ),
    # The entry filled 0.004; the exchange cancelled its rest; the answer never came back.
    KillPoint(
        "partial-entry-cancel-accepted-answer-held",
        hold="-E",
        hold_method="cancel_order",
        stage="after",
        partial=True,
        quantity=PARTIAL,
    ),
    # The stop-loss is rejected; the emergency close never reaches the exchange: the
    # restarted process gives it up and closes under a fresh id.
    KillPoint(
        "emergency-close-in-flight",
        hold="-X",
        reject_stop_loss=True,
        release="drop",
        bar_when_accepted="-X2",
        position=False,
        critical=True,
    ),
    # The stop-loss is rejected; the close lands only after the process died, and fills.
    KillPoint(
        "emergency-close-lands-after-the-kill",
        hold="-X",
        reject_stop_loss=True,
        bar_after_kill=True,
        position=False,
        critical=True,
    ),
    # The stop-loss is rejected; the exchange accepted the close; the answer never came.
    KillPoint(
        "emergency-close-accepted-answer-held",
        hold="-X",
        stage="after",
        reject_stop_loss=True,
        bar_after_kill=True,
        position=False,
        critical=True,
    ),
    # The ghost entry: held at the exchange, given up by the restarted process (the intent
    # failed), then it lands: the reconciler must not leave it live.
    KillPoint("ghost-entry", hold="-E", fill_first=False, ghost=True, position=False),
    # The ghost stop-loss: given up and replaced by -SL2, then it lands: one stop stays.
    KillPoint("ghost-stop-loss", hold="-SL", ghost=True),
]


def free_port() -> int:
    """A loopback port nothing listens on right now (the exchange binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def read_line(process: subprocess.Popen[bytes], deadline: float) -> bytes:
    """One line of the process's stdout, waiting at most `deadline` seconds for it."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], deadline)
    if not ready:
        raise AssertionError(f"no line from pid {process.pid} within {deadline}s")
    return process.stdout.readline()


@pytest.fixture(scope="module")
def exchange_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The paper exchange as a separate process on a loopback port; killed by pid after."""
    log = tmp_path_factory.mktemp("exchange") / "stderr.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "legato.trading.paper_exchange",
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--balance",
                "USDT=100000",
                "--order-budget",
                "1000/1",
                "--general-budget",
                "1000/1",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        line = read_line(process, EVENT_DEADLINE)
        assert line, f"the exchange exited: {log.read_text()}"
        yield str(json.loads(line)["listening"])
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def ledger_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A fresh, migrated SQLite ledger file for the trading processes."""
    path = tmp_path / "ledger.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


class Child:
    """One trading process: started cold, told to go, read event by event, killed by pid."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log

    @classmethod
    async def start(cls, log: Path, *args: str) -> Child:
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(CHILD),
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        return cls(process, log)

    async def event(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(SETTLE_DEADLINE):
                line = await self.process.stdout.readline()
        except TimeoutError:
            raise AssertionError(f"no event from the child: {self.log.read_text()}") from None
        assert line, f"the child exited ({await self.process.wait()}): {self.log.read_text()}"
        event: dict[str, Any] = json.loads(line)
        return event

    async def expect(self, name: str) -> dict[str, Any]:
        event = await self.event()
        assert event["event"] == name, f"{event} instead of {name}: {self.log.read_text()}"
        return event

    async def go(self) -> None:
        await self.expect("ready")
        await self.say("go")

    async def say(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{line}\n".encode())
        await self.process.stdin.drain()

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()  # SIGKILL, by pid
        await self.process.wait()


class Exchange:
    """The test's side of the exchange: the market, the hold points and the truth."""

    def __init__(self, http: httpx.AsyncClient, clock: Clock) -> None:
        self.http = http
        self.clock = clock

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, path, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    async def push_quiet_bar(
        self, *, high: Decimal = Decimal(20010), volume: Decimal = Decimal(1000)
    ) -> None:
        """A bar opening at 20,000: market orders fill at its open (up to `volume`); a
        `high` of 21,000 or more triggers the take-profit."""
        now: datetime = self.clock.now()
        bar = Bar(SYMBOL, now, Decimal(20000), high, Decimal(19990), Decimal(20000), volume)
        await self.call("POST", "/control/bars", json={"bars": [to_wire(bar)]})

    async def arm(self, suffix: str, stage: str, method: str = "place_order") -> int:
        hold = await self.call(
            "POST",
            "/control/holds",
            json={"method": method, "suffix": suffix, "stage": stage},
        )
        return int(hold["hold_id"])

    async def release(self, hold_id: int, action: str) -> None:
        await self.call("POST", f"/control/holds/{hold_id}/release", json={"action": action})

    async def await_hold(self, hold_id: int) -> str:
        """Wait until the hold stops a request; return that request's client order id."""
        hold = await self.call("GET", f"/control/holds/{hold_id}", params={"wait": EVENT_DEADLINE})
        assert hold["reached"], f"hold {hold} not reached within {EVENT_DEADLINE}s"
        return str(hold["client_order_id"])

    async def await_answered(self, client_order_id: str) -> str:
        audit = await self.call(
            "GET", "/control/audit", params={"wait_for": client_order_id, "wait": EVENT_DEADLINE}
        )
        outcomes = [
            record["outcome"]
            for record in audit["placements"]
            if record["client_order_id"] == client_order_id and record["outcome"] != "pending"
        ]
        assert outcomes, f"{client_order_id} not answered within {EVENT_DEADLINE}s: {audit}"
        return str(outcomes[0])

    async def state(self) -> PaperVenueState:
        response = await self.http.get("/control/state")
        assert response.status_code == 200, response.text
        return PaperVenueState.from_json(response.text)


@asynccontextmanager
async def exchange_client(url: str, clock: Clock) -> AsyncIterator[Exchange]:
    async with httpx.AsyncClient(base_url=url, timeout=EVENT_DEADLINE + 10) as http:
        exchange = Exchange(http, clock)
        await exchange.call("POST", "/control/reset")
        await exchange.push_quiet_bar()  # a last price: market orders need one
        yield exchange


async def check_invariants(
    exchange: Exchange, ledger_url: str, clock: Clock, point: KillPoint, intent_id: str
) -> None:
    state = await exchange.state()
    audit = await exchange.call("GET", "/control/audit")
    # No client order id was sent twice as a new order.
    assert audit["sent_twice"] == [], audit
    # The emergency close went out once: one closing order accepted, whatever its id.
    closes = [
        record["client_order_id"]
        for record in audit["placements"]
        if record["client_order_id"].startswith(f"lg-{intent_id}-X")
        and record["outcome"] == "accepted"
    ]
    assert len(closes) == (1 if point.reject_stop_loss else 0), audit
    # Flat, or protected by live reduce-only stops for the whole quantity.
    orders = {order.client_order_id: order for order in state.orders}
    live = [orders[cid] for cid in state.open_order_ids]
    for position in state.positions:
        cover = sum(
            (
                order.remaining_quantity
                for order in live
                if order.symbol == position.symbol
                and order.type is OrderType.STOP
                and order.reduce_only
                and order.side is position.side.closing_side
            ),
            Decimal(0),
        )
        assert cover >= position.quantity, f"{position} covered by only {cover}: {live}"
    assert [p.quantity for p in state.positions] == ([point.quantity] if point.position else []), (
        f"positions {state.positions}, orders {state.orders}, fills {state.fills}"
    )
    # Exactly one stop-loss and one take-profit stay live, for the whole position; nothing
    # is left over from an attempt the restart replaced.
    expected = [(OrderType.STOP, point.quantity), (OrderType.TAKE_PROFIT, point.quantity)]
    assert sorted(
        ((order.type, order.remaining_quantity) for order in live), key=lambda item: item[0].value
    ) == (expected if point.position else []), live
    # The ledger agrees with the exchange.
    ledger = await TradingLedger.open(ledger_url, upgrade=False, clock=clock)
    try:
        recorded = {record.order.client_order_id: record.order for record in await ledger.orders()}
        unfinished = await ledger.intents(unfinished_only=True)
        held = await ledger.open_positions()
        critical = await ledger.alerts(AlertLevel.CRITICAL)
    finally:
        await ledger.close()
    assert unfinished == []
    if point.critical:
        assert AlertCode.STOP_LOSS_FAILED in [alert.code for alert in critical], critical
    for cid, order in orders.items():
        assert cid in recorded, f"{cid} is on the exchange but not in the ledger"
        ours = recorded[cid]
        assert (ours.status, ours.filled_quantity) == (order.status, order.filled_quantity), (
            f"ledger {ours} != exchange {order}"
        )
    for cid, ours in recorded.items():
        if cid not in orders:
            assert ours.status is OrderStatus.REJECTED, f"{ours} never reached the exchange"
    assert [(p.symbol, p.side, p.quantity) for p in held] == [
        (p.symbol, p.side, p.quantity) for p in state.positions
    ]


@pytest.mark.realtime
@pytest.mark.parametrize("point", KILL_POINTS, ids=[point.name for point in KILL_POINTS])
async def test_a_kill_at_each_step_leaves_no_bare_position_and_no_id_sent_twice(
    exchange_url: str, ledger_url: str, tmp_path: Path, clock: Clock, point: KillPoint
) -> None:
    intent_id = "k" + point.name.replace("-", "")[:12]
    entry = f"lg-{intent_id}-E"
    args = (exchange_url, ledger_url, intent_id)
    stop = (f"--stop-before={point.stop_before}",) if point.stop_before else ()
    monitor = ("--monitor",) if point.take_profit_fills else ()
    pause = ("--pause",) if point.ghost else ()
    async with exchange_client(exchange_url, clock) as exchange:
        # The restarted process is started ahead (warm), and told to go only after the kill.
        trader = await Child.start(tmp_path / "trader.log", "trade", *args, *stop, *monitor)
        restarted = await Child.start(tmp_path / "restarted.log", "recover", *args, *pause)
        try:
            hold = (
                await exchange.arm(point.hold, point.stage, point.hold_method)
                if point.hold
                else None
            )
            await trader.go()
            if point.fill_first:
                assert await exchange.await_answered(entry) == "accepted"
                if point.reject_stop_loss:
                    # The next place request (the stop-loss) is refused by the exchange.
                    await exchange.call(
                        "POST",
                        "/control/faults",
                        json={"kind": "reject", "method": "place_order", "reason": "no stops"},
                    )
                # The market entry fills at this bar's open (only 0.004 of it, if partial).
                await exchange.push_quiet_bar(volume=PARTIAL if point.partial else Decimal(1000))
            if point.take_profit_fills:
                result = await trader.expect("result")
                assert result["status"] == "bracketed", result
                await exchange.push_quiet_bar(high=Decimal(21100))
            held = None
            if hold is not None:
                held = await exchange.await_hold(hold)
            elif point.stop_before:
                await trader.expect("stopped")
            else:
                result = await trader.expect("result")
                assert result["status"] == "bracketed", result
            await trader.kill()
            if hold is not None and not point.ghost:
                await exchange.release(hold, point.release)
                if point.release == "proceed" and point.hold_method == "place_order":
                    # The held request goes on without its sender: wait until it has landed.
                    assert held is not None
                    assert await exchange.await_answered(held) == "accepted"
            if point.bar_after_kill:
                await exchange.push_quiet_bar()
            await restarted.go()
            if point.ghost:
                # The restarted process gave the held order up and settled; only now does
                # the exchange let it land, and the restarted process carries on.
                assert hold is not None
                assert held is not None
                await restarted.expect("paused")
                await exchange.release(hold, "proceed")
                assert await exchange.await_answered(held) == "accepted"
                await restarted.say("go on")
            if point.bar_when_accepted:
                # The closing order the restarted process sends fills at the next bar.
                resent = f"lg-{intent_id}{point.bar_when_accepted}"
                assert await exchange.await_answered(resent) == "accepted"
                await exchange.push_quiet_bar()
            settled = await restarted.event()
            assert settled["event"] == "settled", f"{settled}: {restarted.log.read_text()}"
            assert await restarted.process.wait() == 0
        finally:
            await trader.kill()
            await restarted.kill()
        await check_invariants(exchange, ledger_url, clock, point, intent_id)
        if point.ghost:
            # The late order landed, and was cancelled rather than left live beside the
            # trade (a second stop-loss, or an entry nobody would protect).
            assert held is not None
            ghost = {order.client_order_id: order for order in (await exchange.state()).orders}
            assert ghost[held].status is OrderStatus.CANCELLED, ghost[held]
