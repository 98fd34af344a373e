"""The report's pictures: the equity curve as a PNG, and the self-contained HTML page.

The PNG is drawn with matplotlib's Agg canvas directly (no pyplot, so no global backend or
figure state is touched) and saved without the metadata that would vary between runs or
versions: the 'Software' text chunk is dropped and Agg writes no date. The same curve gives
the same bytes. The HTML page embeds that PNG as base64 and needs no other file.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from legato.kernel.errors import ValidationError
from legato.trading.backtest.report import (
    ENTRY_FILLS_NOTE,
    REFUSAL_HEADERS,
    BacktestReport,
    metric_rows,
    refusal_rows,
)
from legato.trading.backtest.trades import EquityPoint

__all__ = ["equity_png", "report_html"]

_WIDTH_INCHES = 10.0
_HEIGHT_INCHES = 5.0
_DPI = 100


def equity_png(equity: Sequence[EquityPoint], title: str = "Equity") -> bytes:
    """Draw the equity curve (with the drawdown beneath it) and return PNG bytes."""
    if not equity:
        raise ValidationError("equity", 0, "at least one equity point")
    times = [point.timestamp for point in equity]
    values = [float(point.equity) for point in equity]
    peaks: list[float] = []
    running = values[0]
    for value in values:
        running = max(running, value)
        peaks.append(running)
    drawdowns = [
        (value / peak - 1.0) * 100 if peak > 0 else 0.0
        for value, peak in zip(values, peaks, strict=True)
    ]
    figure = Figure(figsize=(_WIDTH_INCHES, _HEIGHT_INCHES), dpi=_DPI)
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot(times, values, color="#1f5fa8", linewidth=1.0)
    top.set_title(title)
    top.set_ylabel("equity")
    top.grid(True, alpha=0.3)
    bottom.fill_between(times, drawdowns, 0.0, color="#c0392b", alpha=0.4, linewidth=0)
    bottom.set_ylabel("drawdown %")
    bottom.grid(True, alpha=0.3)
    figure.autofmt_xdate()
    figure.tight_layout()
    buffer = io.BytesIO()
    # Dropping 'Software' keeps the bytes independent of the matplotlib version string.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; }
td.label { text-align: left; }
img { max-width: 100%; }
""".strip()


def report_html(report: BacktestReport, png: bytes) -> str:
    """The report as one HTML page: metrics, the embedded equity PNG and the trade list."""
    escape = html.escape
    picture = base64.b64encode(png).decode("ascii")
    metric_lines = "\n".join(
        f'<tr><td class="label">{escape(label)}</td><td>{escape(value)}</td></tr>'
        for label, value in metric_rows(report.metrics)
    )
    header = (
        "<tr><th>#</th><th>side</th><th>quantity</th><th>entry time</th><th>entry</th>"
        "<th>exit time</th><th>exit</th><th>PnL</th><th>fees</th><th>net PnL</th>"
        "<th>exit reason</th></tr>"
    )
    trade_lines = "\n".join(
        f"<tr><td>{index}</td><td>{t.side.value}</td><td>{t.quantity}</td>"
        f"<td>{t.entry_time.isoformat()}</td><td>{t.entry_price}</td>"
        f"<td>{t.exit_time.isoformat()}</td><td>{t.exit_price}</td>"
        f"<td>{t.pnl:.2f}</td><td>{t.fees:.2f}</td><td>{t.net_pnl:.2f}</td>"
        f"<td>{escape(t.exit_reason)}</td></tr>"
        for index, t in enumerate(report.trades, start=1)
    )
    refusals = ""
    if report.refusals:
        refused = sum(group.count for group in report.refusals)
        refusal_header = "".join(f"<th>{escape(name)}</th>" for name in REFUSAL_HEADERS)
        refusal_lines = "\n".join(
            f'<tr><td class="label">{escape(code)}</td><td>{count}</td><td>{first}</td>'
            f'<td>{last}</td><td class="label">{escape(message)}</td></tr>'
            for code, count, first, last, message in refusal_rows(report.refusals)
        )
        refusals = (
            f"<h2>Refused by the risk engine ({refused})</h2>\n"
            f"<table>\n<tr>{refusal_header}</tr>\n{refusal_lines}\n</table>\n"
        )
    fills = report.entry_fills
    short = ""
    if fills is not None and fills.short:
        short = (
            f"<h2>Entries filled less than asked ({fills.short})</h2>\n"
            f"<p>{escape(fills.sentence())}. {escape(ENTRY_FILLS_NOTE)}</p>\n"
        )
    title = escape(report.title)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>\n{_STYLE}\n</style>\n</head>\n<body>\n"
        f"<h1>{title}</h1>\n"
        f'<img alt="equity curve and drawdown" src="data:image/png;base64,{picture}">\n'
        f"<h2>Summary</h2>\n<table>\n{metric_lines}\n</table>\n"
        f"{refusals}"
        f"{short}"
        f"<h2>Trades ({len(report.trades)})</h2>\n<table>\n{header}\n{trade_lines}\n</table>\n"
        "</body>\n</html>\n"
    )
