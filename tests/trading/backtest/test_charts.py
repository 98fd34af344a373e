"""The equity PNG is deterministic and free of varying metadata; the HTML is self-contained."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from legato.kernel.errors import ValidationError
from legato.trading.backtest.charts import equity_png, report_html
from legato.trading.backtest.report import BacktestReport
from legato.trading.backtest.trades import ClosedTrade, EquityPoint
from legato.trading.positions import PositionSide

T0 = datetime(2024, 1, 1, tzinfo=UTC)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def points(count: int = 50) -> list[EquityPoint]:
    return [
        EquityPoint(
            T0 + timedelta(minutes=5 * i), Decimal(1000 + (i * 37) % 23 - i), Decimal(i % 2)
        )
        for i in range(count)
    ]


def png_text_keys(png: bytes) -> list[bytes]:
    """The keywords of every tEXt/iTXt/zTXt chunk (where 'Software' or dates would live)."""
    keys = []
    position = len(PNG_SIGNATURE)
    while position < len(png):
        length = int.from_bytes(png[position : position + 4], "big")
        kind = png[position + 4 : position + 8]
        data = png[position + 8 : position + 8 + length]
        if kind in (b"tEXt", b"iTXt", b"zTXt"):
            keys.append(data.split(b"\x00", 1)[0])
        if kind == b"tIME":
            keys.append(b"tIME")
        position += 12 + length
    return keys


def test_the_same_curve_draws_the_same_png_bytes() -> None:
    first = equity_png(points(), "run")
    second = equity_png(points(), "run")
    assert first.startswith(PNG_SIGNATURE)
    assert first == second


def test_the_png_carries_no_software_version_or_timestamp() -> None:
    keys = png_text_keys(equity_png(points()))
    assert b"Software" not in keys
    assert b"tIME" not in keys
    assert b"Creation Time" not in keys


def test_a_different_curve_draws_a_different_picture() -> None:
    other = [EquityPoint(p.timestamp, p.equity * 2, p.position) for p in points()]
    assert equity_png(points()) != equity_png(other)


def test_an_empty_curve_is_refused() -> None:
    with pytest.raises(ValidationError):
        equity_png([])


def test_the_html_page_embeds_the_png_and_needs_no_other_file() -> None:
    trade = ClosedTrade(
        "BTC-USDT-PERP",
        PositionSide.LONG,
        Decimal(1),
        T0,
        Decimal(100),
        T0 + timedelta(hours=1),
        Decimal(104),
        Decimal("0.08"),
        Decimal(4),
        "take_profit",
    )
    report = BacktestReport.build("EMA <test>", [trade], points())
    png = equity_png(report.equity)
    page = report_html(report, png)
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert embedded is not None
    assert base64.b64decode(embedded.group(1)) == png
    assert "EMA &lt;test&gt;" in page
    assert "take_profit" in page
    assert "Sharpe ratio" in page
    # Nothing fetched from elsewhere: no other src or href attributes.
    assert len(re.findall(r"\b(?:src|href)=", page)) == 1
