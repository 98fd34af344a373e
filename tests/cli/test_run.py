"""`legato run`, the main job, as a real process: it trades, protects, stops on Ctrl-C, resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import IO

import pytest

from legato.cli.run import _desk_config
from legato.kernel.settings import load_settings
from legato.kernel.simulation import run_simulated
from legato.trading.decision_log import DecisionLog
from legato.trading.ledger import TradingLedger
from legato.trading.market_data import default_market_data_dir
from legato.trading.orders import OrderStatus
from trading.backtest.scripted_strategy import BREAKOUT_MODULE

pytestmark = pytest.mark.slow

# The synthetic market's indicators warm up over about 100 bars; the seeded market of the
# default desk opens its first bracket within the first 150.
ENOUGH_BARS_TO_TRADE = 150


def _legato(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "legato.cli", *args]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "LEGATO_DATA_DIR": str(tmp_path), "LEGATO_API_TOKEN": "run-test-token"}


def _run_once(tmp_path: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`legato run ARGS` as a real process in `tmp_path`, to its end (bounded by `timeout`)."""
    return subprocess.run(
        _legato(tmp_path, "run", *args),
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, check=False,
        timeout=timeout,
    )  # fmt: skip


def _lines(stream: IO[str]) -> Iterator[str]:
    # Reading the process's own output blocks until it says something: waiting on the
    # event, not on a timer. The test's timeout bounds it.
    for line in stream:
        yield line.rstrip("\n")


@contextmanager
def _legato_run(tmp_path: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`legato run ARGS` as a real process in `tmp_path`; killed at the end if still running."""
    process = subprocess.Popen(
        _legato(tmp_path, "run", *args),
        cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _interrupt(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Ctrl-C the process and return the rest of its stdout and its stderr once it exits."""
    process.send_signal(signal.SIGINT)
    return process.communicate(timeout=60)


def _open_positions(tmp_path: Path) -> list[tuple[str, str | None, str | None]]:
    async def read() -> list[tuple[str, str | None, str | None]]:
        ledger = await TradingLedger.open(f"sqlite:///{tmp_path / 'legato.db'}")
        try:
            snapshot = await ledger.snapshot()
        finally:
            await ledger.close()
        live = {
            cid
            for cid, order in snapshot.orders.items()
            if order.status in (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED)
        }
        return [
            (
                symbol,
                position.stop_loss_order_id if position.stop_loss_order_id in live else None,
                position.take_profit_order_id if position.take_profit_order_id in live else None,
            )
            for symbol, position in snapshot.positions.items()
        ]

    return run_simulated(read())


def _ledger_orders(tmp_path: Path) -> dict[str, tuple[str, OrderStatus]]:
    async def read() -> dict[str, tuple[str, OrderStatus]]:
        ledger = await TradingLedger.open(f"sqlite:///{tmp_path / 'legato.db'}")
        try:
            records = await ledger.orders()
        finally:
            await ledger.close()
        return {r.order.client_order_id: (r.role.value, r.order.status) for r in records}

    return run_simulated(read())


def _working(tmp_path: Path) -> list[str]:
    working = (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED)
    return [cid for cid, (_, status) in _ledger_orders(tmp_path).items() if status in working]


def _final_open_positions(output: str) -> int:
    found = re.search(r"legato run: stopped after \d+ bars\..*open positions (\d+)", output)
    assert found is not None, output[-2000:]
    return int(found.group(1))


def test_a_bounded_run_trades_protects_its_positions_and_the_next_run_resumes_them(
    tmp_path: Path,
) -> None:
    completed = _run_once(
        tmp_path, "--bars", str(ENOUGH_BARS_TO_TRADE), "--speed", "1000000", "--port", "0"
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert "paper-trading desk on BTC-USDT-PERP" in out
    assert f"stopped after {ENOUGH_BARS_TO_TRADE} bars" in out
    assert "resumed" not in out  # a fresh store: nothing to resume
    positions = _open_positions(tmp_path)
    assert positions, f"the desk opened no position in {ENOUGH_BARS_TO_TRADE} bars:\n{out}"
    for symbol, stop_loss, take_profit in positions:
        assert stop_loss is not None, f"{symbol} has no live stop-loss"
        assert take_profit is not None, f"{symbol} has no live take-profit"

    left_working = _working(tmp_path)
    assert left_working, "the first run left no protective or closing order working"
    resumed = _run_once(tmp_path, "--bars", "1", "--speed", "1000000", "--port", "0")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # It says what it picked up, after reconciling and before trading.
    picked_up = re.search(
        r"resumed  from the store, reconciled with the venue: (\d+) open positions?.*, "
        r"(\d+) working orders?, last decided bar ",
        resumed.stdout,
    )
    assert picked_up is not None, resumed.stdout[-2000:]
    assert int(picked_up.group(1)) == len(positions)
    assert int(picked_up.group(2)) >= 1
    # The second run starts from the store and the venue's saved book, so the orders the first
    # run left working are on the venue: either the position is still open and protected, or
    # one of those very orders (its stop-loss, take-profit or close) closed it.
    still_open = _open_positions(tmp_path)
    assert _final_open_positions(resumed.stdout) == len(still_open)
    if still_open:
        assert still_open == positions
    else:
        orders = _ledger_orders(tmp_path)
        assert any(orders[cid][1] is OrderStatus.FILLED for cid in left_working)


def test_ctrl_c_stops_a_trading_desk_cleanly_with_the_store_agreeing(tmp_path: Path) -> None:
    with _legato_run(tmp_path, "--speed", "30000", "--port", "0", "--progress", "0.2") as process:
        assert process.stdout is not None
        base = None
        for line in _lines(process.stdout):
            found = re.search(r"dashboard (http://\S+)/", line)
            if found:
                base = found.group(1)
                with urllib.request.urlopen(f"{base}/desk", timeout=10) as answer:
                    desk = json.load(answer)
                assert desk["symbols"] == ["BTC-USDT-PERP"]
            if "open positions 1" in line:
                break  # the desk is trading: stop it in the middle
        assert base is not None, "the service address was never printed"
        rest, errors = _interrupt(process)
    assert process.returncode == 0, errors[-3000:]
    reported = _final_open_positions(rest)
    positions = _open_positions(tmp_path)
    assert len(positions) == reported
    for symbol, stop_loss, _ in positions:
        assert stop_loss is not None, f"{symbol} was left without a live stop-loss"


def test_a_recorded_file_is_traded_as_the_market_its_name_gives(tmp_path: Path) -> None:
    settings = load_settings(environ={})
    eth_btc = default_market_data_dir() / "binance_ETH-BTC_5m_2018-01.csv"
    named = _desk_config(settings, data=eth_btc, symbol=None, speed=None, bars=None)
    # Not the BTC perpetual renamed: ETH quoted in BTC, at the file's own tick size.
    assert named.symbols == ("ETH-BTC",)
    assert named.instrument("ETH-BTC").quote_asset == "BTC"
    assert named.instrument("ETH-BTC").tick_size < 0.0001
    unnamed = tmp_path / "bars.csv"
    unnamed.write_bytes(eth_btc.read_bytes())
    fallback = _desk_config(settings, data=unnamed, symbol=None, speed=None, bars=None)
    assert fallback.symbols == ("BTC-USDT-PERP",)  # a name that says nothing: as before


def test_a_missing_data_file_is_refused_before_the_store_is_made(tmp_path: Path) -> None:
    missing = tmp_path / "binance_BTC-USDT-PERP_5m_missing.csv"
    result = _run_once(tmp_path, "--data", str(missing), "--bars", "5", "--port", "0", timeout=120)
    assert result.returncode != 0
    assert f"invalid path: got '{missing}', expected an existing CSV file" in result.stderr
    assert not list(tmp_path.glob("*.db*"))  # nothing written


def test_a_recorded_file_of_trades_is_traded_as_bars_of_the_data_interval() -> None:
    settings = load_settings(environ={})
    trades = default_market_data_dir() / "binance_XRP-ETH_trades_2019-10.csv"
    config = _desk_config(settings, data=trades, symbol=None, speed=None, bars=None)
    assert config.symbols == ("XRP-ETH",)
    # Fitted on bars made at the data interval (5 minutes by default): the tick is the
    # trades' finest price step.
    assert config.instrument("XRP-ETH").tick_size == Decimal("0.00000001")


def _decisions(tmp_path: Path) -> list[tuple[str, str, str]]:
    async def read() -> list[tuple[str, str, str]]:
        ledger = await TradingLedger.open(f"sqlite:///{tmp_path / 'legato.db'}")
        try:
            records = await DecisionLog(ledger.database).decisions()
        finally:
            await ledger.close()
        return [(r.strategy, r.action.value, r.status.value) for r in records]

    return run_simulated(read())


def test_your_strategy_trades_the_running_desk_shown_on_the_dashboard_and_resumes(
    tmp_path: Path,
) -> None:
    (tmp_path / "breakout.py").write_text(BREAKOUT_MODULE)
    strategy = ("--strategy", "breakout:Breakout", "--param", "window=24")
    with _legato_run(
        tmp_path, *strategy, "--speed", "30000", "--port", "0", "--progress", "0.2"
    ) as process:
        assert process.stdout is not None
        seen: list[str] = []
        for line in _lines(process.stdout):
            seen.append(line)
            found = re.search(r"dashboard (http://\S+)/", line)
            if found:
                base = found.group(1)
            if "open positions 1" in line:
                break  # the strategy has traded: look, then stop it in the middle
        with urllib.request.urlopen(f"{base}/desk", timeout=10) as answer:
            desk = json.load(answer)
        with urllib.request.urlopen(f"{base}/ui/desk/decisions", timeout=10) as answer:
            page = answer.read().decode()
        with urllib.request.urlopen(f"{base}/ui/desk", timeout=10) as answer:
            overview = answer.read().decode()
        rest, errors = _interrupt(process)
    assert process.returncode == 0, errors[-3000:]
    assert "  strategy breakout:Breakout trades BTC-USDT-PERP (instead of the agents)" in seen
    assert desk["strategies"] == {"BTC-USDT-PERP": "breakout:Breakout"}
    assert "asked by <code>breakout:Breakout</code>" in page
    assert "BTC-USDT-PERP is traded by your strategy <code>breakout:Breakout</code>" in overview
    decisions = _decisions(tmp_path)
    assert decisions, "no trade was stored"
    assert {(name, action) for name, action, _ in decisions} == {("breakout:Breakout", "BUY")}
    assert "executed" in {status for _, _, status in decisions}
    positions = _open_positions(tmp_path)
    assert len(positions) == _final_open_positions(rest)
    for symbol, stop_loss, _ in positions:
        assert stop_loss is not None, f"{symbol} was left without a live stop-loss"
    resumed = _run_once(tmp_path, *strategy, "--bars", "1", "--speed", "1000000", "--port", "0")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed  from the store" in resumed.stdout
    assert _decisions(tmp_path)[: len(decisions)] == decisions


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--strategy", "nosuch:Strategy"),
            "invalid --strategy: got 'nosuch:Strategy', expected an importable module",
        ),
        (
            ("--strategy", "breakout:Missing"),
            "invalid --strategy: got 'breakout:Missing', expected breakout to define 'Missing'",
        ),
        (("--param", "window=24"), "no --param with the desk"),
        (
            ("--strategy", "breakout:Breakout", "--param", "window=wide"),
            "invalid --param window: got 'wide', expected a int, as its default 48",
        ),
    ],
)
def test_a_bad_strategy_is_refused_before_the_store_is_made(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    (tmp_path / "breakout.py").write_text(BREAKOUT_MODULE)
    result = _run_once(tmp_path, *args, "--bars", "5", "--port", "0", timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert not list(tmp_path.glob("*.db*"))  # nothing written


def test_a_strategy_the_config_names_trades_its_symbol_and_the_command_line_overrides_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "breakout.py").write_text(BREAKOUT_MODULE)
    (tmp_path / "legato.toml").write_text(
        '[[desk.strategies]]\nname = "breakout"\nsymbols = ["BTC-USDT-PERP"]\n'
        'code = "breakout:Breakout"\nparams = { window = 12 }\n'
    )
    bounded = ("--bars", "5", "--speed", "1000000", "--port", "0")
    named = _run_once(tmp_path, *bounded)
    overridden = _run_once(tmp_path, "--strategy", "ema", *bounded)
    assert named.returncode == 0, named.stderr[-3000:]
    assert "  strategy breakout:Breakout trades BTC-USDT-PERP (instead of the agents)" in (
        named.stdout
    )
    assert overridden.returncode == 0, overridden.stderr[-3000:]
    assert (
        "  strategy legato.trading.backtest.ema_crossover:EmaCrossover trades BTC-USDT-PERP"
        in overridden.stdout
    )


EAGER = """
from decimal import Decimal


class Eager:
    def on_bar(self, bar, ctx):
        if ctx.is_flat and not ctx.pending:
            ctx.buy(Decimal("0.5"), stop_loss=bar.close * Decimal("0.98"),
                    take_profit=bar.close * Decimal("1.04"))
"""


def test_the_last_bar_ends_a_bounded_run_as_ctrl_c_would_and_the_next_run_resumes_its_entry(
    tmp_path: Path,
) -> None:
    # The entry asked for on the only bar can fill on no bar of this run: the run stops with
    # the stop's grace (the subprocess bound is shorter than the entry's 300 s timeout, which
    # it used to wait out), and the next run resumes the entry while its bars flow.
    (tmp_path / "eager.py").write_text(EAGER)
    args = ("--strategy", "eager:Eager", "--speed", "1000000", "--port", "0")
    first = _run_once(tmp_path, *args, "--bars", "1", timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopped after 1 bars" in first.stdout
    second = _run_once(tmp_path, *args, "--bars", "20", timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "0 open positions, 1 working order" in second.stdout  # the entry, resumed
    positions = _open_positions(tmp_path)
    assert [(stop_loss is not None) for _, stop_loss, _ in positions] == [True]
