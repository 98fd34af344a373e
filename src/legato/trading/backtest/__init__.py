"""Backtests: a strategy over recorded bars on simulated time, and the report it produces.

`backtest(strategy, bars, instrument)` runs a `Strategy` through a paper venue on a
`SimulatedClock`; `BacktestReport.build(...)` computes the metrics and `write_report` writes
trades.csv, equity.csv, equity.png, summary.json, summary.md and report.html.
`DirectBracketExecutor` is the research path (no risk engine, no safety net);
`ProductionExecutor` (and `production_backtest`) is the desk's path: risk engine, execution
manager, store. `desk_backtest` runs the whole desk. docs/backtesting.md explains it all.
"""

from __future__ import annotations

from legato.trading.backtest.charts import equity_png, report_html
from legato.trading.backtest.desk_backtest import (
    BACKTEST_RECONCILE_INTERVAL,
    BACKTEST_TELEMETRY_INTERVAL,
    backtest_desk_config,
    desk_backtest,
)
from legato.trading.backtest.ema_crossover import EmaCrossover
from legato.trading.backtest.executor import BracketOutcome, DirectBracketExecutor
from legato.trading.backtest.production import (
    ProductionExecutor,
    ProductionOutcome,
    backtest_execution_config,
    production_backtest,
)
from legato.trading.backtest.report import (
    BacktestMetrics,
    BacktestReport,
    compute_metrics,
    equity_csv,
    summary_json,
    summary_markdown,
    trades_csv,
)
from legato.trading.backtest.report_files import REPORT_FILES, write_report
from legato.trading.backtest.runner import PROGRESS_EVERY, BacktestResult, backtest, run_backtest
from legato.trading.backtest.trades import ClosedTrade, EquityPoint, TradeBook
from legato.trading.strategy import (
    Strategy,
    StrategyContext,
    TradeExecutor,
    TradeOutcome,
)

__all__ = [
    "BACKTEST_RECONCILE_INTERVAL",
    "BACKTEST_TELEMETRY_INTERVAL",
    "PROGRESS_EVERY",
    "REPORT_FILES",
    "BacktestMetrics",
    "BacktestReport",
    "BacktestResult",
    "BracketOutcome",
    "ClosedTrade",
    "DirectBracketExecutor",
    "EmaCrossover",
    "EquityPoint",
    "ProductionExecutor",
    "ProductionOutcome",
    "Strategy",
    "StrategyContext",
    "TradeBook",
    "TradeExecutor",
    "TradeOutcome",
    "backtest",
    "backtest_desk_config",
    "backtest_execution_config",
    "compute_metrics",
    "desk_backtest",
    "equity_csv",
    "equity_png",
    "production_backtest",
    "report_html",
    "run_backtest",
    "summary_json",
    "summary_markdown",
    "trades_csv",
    "write_report",
]
