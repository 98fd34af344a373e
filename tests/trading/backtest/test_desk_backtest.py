"""The whole desk as a backtest over recorded bars: deterministic, and every decision stored."""

from __future__ import annotations

import dataclasses
import gc
import itertools
from datetime import timedelta
from pathlib import Path

import pytest
import structlog

from legato.kernel.errors import ValidationError
from legato.kernel.simulation import run_simulated
from legato.trading.backtest.desk_backtest import (
    BACKTEST_RECONCILE_INTERVAL,
    BACKTEST_TELEMETRY_INTERVAL,
    backtest_desk_config,
    desk_backtest,
)
from legato.trading.backtest.production import backtest_execution_config
from legato.trading.backtest.report import BacktestReport
from legato.trading.backtest.report_files import REPORT_FILES, write_report
from legato.trading.backtest.runner import BacktestResult
from legato.trading.decision_log import DecisionLog, DecisionRecord, PipelineStatus
from legato.trading.desk_config import DeskConfig
from legato.trading.market_data import Bar, default_market_data_dir, load_bars

RECORDED = default_market_data_dir() / "binance_BTC-USDT-PERP_5m_2023-01.csv"
BARS = 400  # the indicators warm up over the first hundred or so


def recorded(count: int) -> list[Bar]:
    return list(itertools.islice(load_bars(RECORDED), count))


def stored_decisions(store: Path) -> list[DecisionRecord]:
    async def read() -> list[DecisionRecord]:
        log = await DecisionLog.open(f"sqlite:///{store}", upgrade=False)
        try:
            return await log.decisions(limit=10_000)
        finally:
            await log.close()

    return run_simulated(read())


def test_the_same_bars_give_the_same_report_byte_for_byte(tmp_path: Path) -> None:
    bars = recorded(BARS)
    reports = []
    for run in ("first", "second"):
        result = desk_backtest(DeskConfig(), bars, store=tmp_path / f"{run}.db")
        report = BacktestReport.build("desk", result.trades, result.equity)
        reports.append(write_report(report, tmp_path / run))
    assert len(reports[0]) == len(REPORT_FILES)
    for name in REPORT_FILES:
        assert reports[0][name].read_bytes() == reports[1][name].read_bytes(), name


def test_every_decided_bar_is_stored_once_hold_runs_included(tmp_path: Path) -> None:
    bars = recorded(BARS)
    store = tmp_path / "desk.db"
    result = desk_backtest(DeskConfig(), bars, store=store)
    decisions = stored_decisions(store)
    keys = [record.key for record in decisions]
    assert len(keys) == len(set(keys))
    # Runs that could not trade are written in batches; the desk flushes the last at stop.
    no_trade = [r for r in decisions if r.status is PipelineStatus.NO_TRADE]
    assert len(no_trade) > len(decisions) // 2
    decided_times = {r.bar_time for r in decisions}
    assert decided_times <= {bar.timestamp for bar in bars}
    assert max(decided_times) == bars[-1].timestamp
    assert result.bars == BARS


# ---------------------------------------------------------------- the market's own pace

PACED_BARS = 3_000  # ten days of five-minute bars: dozens of trades, several UTC days


@pytest.fixture(scope="module")
def paced(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Bar], BacktestResult]:
    bars = recorded(PACED_BARS)
    store = tmp_path_factory.mktemp("paced") / "desk.db"
    return bars, desk_backtest(DeskConfig(), bars, store=store)


def test_every_fill_and_trade_carries_the_time_of_a_replayed_bar(
    paced: tuple[list[Bar], BacktestResult],
) -> None:
    bars, result = paced
    times = {bar.timestamp for bar in bars}
    assert len(result.trades) >= 20
    # A fill made when a bar is matched carries that bar's own timestamp, not a clock
    # time compressed into the first hours of the file.
    assert {fill.timestamp for fill in result.fills} <= times
    for trade in result.trades:
        assert bars[0].timestamp <= trade.entry_time < trade.exit_time <= bars[-1].timestamp
        assert trade.entry_time in times
        assert trade.exit_time in times


def test_trades_are_spread_over_the_data_as_the_bars_are(
    paced: tuple[list[Bar], BacktestResult],
) -> None:
    bars, result = paced
    bar = bars[1].timestamp - bars[0].timestamp
    trades = result.trades
    for trade in trades:
        # The stop-loss is placed after the entry's bar was matched: a bracket lasts a bar.
        assert trade.exit_time - trade.entry_time >= bar
    for before, after in itertools.pairwise(trades):
        # A new entry is decided at the earliest on the bar that closed the last position
        # and fills on the next one.
        assert after.entry_time - before.exit_time >= bar
    # Ten days of data, ten days of trading: not a burst at the start of the file.
    days = {trade.entry_time.date() for trade in trades}
    assert len(days) >= 5
    assert trades[-1].entry_time - trades[0].entry_time > timedelta(days=5)


def test_the_cooldown_after_a_losing_streak_counts_market_seconds(
    paced: tuple[list[Bar], BacktestResult],
) -> None:
    _, result = paced
    limits = DeskConfig().risk
    cooldown = timedelta(seconds=limits.cooldown_seconds)
    streak = 0
    checked = 0
    for before, after in itertools.pairwise(result.trades):
        streak = streak + 1 if before.net_pnl < 0 else 0
        if streak >= limits.max_consecutive_losses:
            # An hour of the recorded market (twelve bars), not 3,600 bars.
            assert after.entry_time - before.exit_time >= cooldown
            checked += 1
    assert checked >= 5


def test_the_risk_engines_refusals_come_back_with_the_result(
    paced: tuple[list[Bar], BacktestResult],
) -> None:
    bars, result = paced
    codes = {refusal.code for refusal in result.refusals}
    # Losing streaks' cooldowns, then the drawdown past 80% of its limit: REDUCING, where
    # every new entry is refused and the equity curve goes flat.
    assert {"cooldown", "drawdown_warning"} <= codes
    assert [r.at for r in result.refusals] == sorted(r.at for r in result.refusals)
    assert {r.at for r in result.refusals} <= {bar.timestamp for bar in bars}
    last_trade = result.trades[-1].exit_time
    after = [r for r in result.refusals if r.at > last_trade]
    assert after
    assert {r.code for r in after} == {"drawdown_warning"}


def test_the_backtest_pacing_runs_the_loops_once_a_bar_at_market_speed() -> None:
    config = backtest_desk_config(DeskConfig(), 300.0)
    assert config.data.speed == 1.0
    assert config.monitor_interval == 300.0
    assert config.guard_interval == 300.0
    assert config.reconcile_interval == BACKTEST_RECONCILE_INTERVAL
    assert config.telemetry_interval == BACKTEST_TELEMETRY_INTERVAL
    # A longer configured interval is kept; daily bars get one pass a bar.
    slow = dataclasses.replace(DeskConfig(), guard_interval=900.0)
    assert backtest_desk_config(slow, 300.0).guard_interval == 900.0
    assert backtest_desk_config(DeskConfig(), 86_400.0).reconcile_interval == 86_400.0
    execution = backtest_execution_config(300.0)
    assert execution.fill_poll_interval == 150.0
    assert execution.partial_protect_after == 150.0
    assert execution.entry_timeout == 1_200.0


@pytest.mark.parametrize("spacing", [0.0, -300.0, True, "300"])
def test_a_bad_bar_spacing_is_refused(spacing: object) -> None:
    with pytest.raises(ValidationError) as refused:
        backtest_desk_config(DeskConfig(), spacing)  # type: ignore[arg-type]
    assert refused.value.field == "spacing"
    with pytest.raises(ValidationError):
        backtest_execution_config(spacing)  # type: ignore[arg-type]


def test_the_collector_runs_less_often_during_a_backtest_and_as_before_after(
    tmp_path: Path,
) -> None:
    before = gc.get_threshold()
    during: list[tuple[int, int, int]] = []
    desk_backtest(
        DeskConfig(),
        recorded(BARS),
        store=tmp_path / "a.db",
        progress=lambda _: during.append(gc.get_threshold()),
    )
    after_run = gc.get_threshold()

    def fail(_: int) -> None:
        raise RuntimeError("stop here")

    failed = False
    try:
        desk_backtest(DeskConfig(), recorded(BARS), store=tmp_path / "b.db", progress=fail)
    except* RuntimeError:
        failed = True
    assert failed
    assert during[0][0] > before[0]  # fewer young-generation passes while the desk runs
    assert during[0][1:] == before[1:]
    assert after_run == gc.get_threshold() == before  # restored, after a failure too


def test_a_close_the_venue_refuses_because_a_stop_already_closed_it_is_not_a_warning(
    tmp_path: Path,
) -> None:
    # On these bars a stop-loss or take-profit fills on a bar whose decision still sees the
    # position and asks to close it: the venue, already flat, refuses the reduce-only close.
    with structlog.testing.capture_logs() as logs:
        desk_backtest(DeskConfig(), recorded(700), store=tmp_path / "desk.db")
    refused = [entry for entry in logs if entry["event"] == "desk_close_refused"]
    assert refused, "these bars no longer produce a refused close: pick others"
    assert all(entry["venue_position_open"] is False for entry in refused)
    assert all(entry["log_level"] == "info" for entry in refused)
    assert not [entry for entry in logs if entry["log_level"] in {"warning", "error"}]
