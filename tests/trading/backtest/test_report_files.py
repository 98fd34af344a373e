"""The report directory: six files, the same bytes for the same inputs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from legato.trading.backtest.report import BacktestReport
from legato.trading.backtest.report_files import REPORT_FILES, write_report
from legato.trading.backtest.trades import EquityPoint

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def report() -> BacktestReport:
    equity = [
        EquityPoint(T0 + timedelta(minutes=5 * i), Decimal(1000 + i % 7 - i // 3), Decimal(0))
        for i in range(40)
    ]
    return BacktestReport.build("files", [], equity)


def test_write_report_writes_the_six_files(tmp_path: Path) -> None:
    written = write_report(report(), tmp_path / "out")
    assert tuple(written) == REPORT_FILES
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(REPORT_FILES)
    assert all(path.stat().st_size > 0 for path in written.values())


def test_every_file_has_the_same_bytes_for_the_same_inputs(tmp_path: Path) -> None:
    first = write_report(report(), tmp_path / "a")
    second = write_report(report(), tmp_path / "b")
    for name in REPORT_FILES:
        assert first[name].read_bytes() == second[name].read_bytes(), name
