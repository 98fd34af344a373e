"""The report's files on disk: one directory, six files, the same bytes for the same inputs."""

from __future__ import annotations

from pathlib import Path

from legato.trading.backtest.charts import equity_png, report_html
from legato.trading.backtest.report import (
    BacktestReport,
    equity_csv,
    summary_json,
    summary_markdown,
    trades_csv,
)

__all__ = ["REPORT_FILES", "write_report"]

REPORT_FILES = (
    "trades.csv",
    "equity.csv",
    "equity.png",
    "summary.json",
    "summary.md",
    "report.html",
)


def write_report(report: BacktestReport, directory: Path | str) -> dict[str, Path]:
    """Write the six report files into `directory` (created if missing); return their paths.

    trades.csv, equity.csv, equity.png, summary.json, summary.md and report.html. Text files
    are UTF-8 with "\\n" line ends on every platform.
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    png = equity_png(report.equity, report.title)
    contents: dict[str, bytes] = {
        "trades.csv": trades_csv(report.trades).encode(),
        "equity.csv": equity_csv(report.equity).encode(),
        "equity.png": png,
        "summary.json": summary_json(report).encode(),
        "summary.md": summary_markdown(report).encode(),
        "report.html": report_html(report, png).encode(),
    }
    written: dict[str, Path] = {}
    for name in REPORT_FILES:
        path = target / name
        path.write_bytes(contents[name])
        written[name] = path
    return written
