"""The whole desk as a backtest over recorded bars: deterministic, and every decision stored."""

from __future__ import annotations

import itertools
from pathlib import Path

from legato.kernel.simulation import run_simulated
from legato.trading.backtest.desk_backtest import desk_backtest
from legato.trading.backtest.report import BacktestReport
from legato.trading.backtest.report_files import REPORT_FILES, write_report
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
