"""The backtest report: metrics from closed trades and an equity curve, and their text forms.

Pure functions on values. Money stays Decimal (equity, PnL, fees, total return); statistics
of returns are floats. The conventions, stated once:

- Returns are simple per-bar returns of the equity curve, r_i = e_i / e_(i-1) - 1.
- The bar interval is the most common gap between consecutive equity timestamps; a year is
  365 days (crypto markets trade every day), so periods_per_year = 365 days / interval.
- Annualised return: (final / initial) ** (periods_per_year / (points - 1)) - 1 (None when
  that overflows a float, or when the equity went to zero or below).
- Sharpe: mean(r) / sample std(r) (n - 1 denominator) × sqrt(periods_per_year), risk-free 0.
- Sortino: mean(r) / downside deviation × sqrt(periods_per_year), where the downside
  deviation is sqrt(sum(min(r_i, 0)²) / (n - 1)), target 0. None when nothing went down.
- Maximum drawdown: the largest fall from a running peak, as a fraction of that peak; its
  duration is the longest time spent below a previous peak (from the peak to the recovery, or
  to the last point if it never recovered).
- Win rate: share of closed trades with net PnL (after fees) > 0. Profit factor: the sum of
  positive net PnLs over the absolute sum of negative ones (None without a losing trade).
- Exposure: share of equity points at which a position was held.
- Fees: the fees of the closed trades.
- Refusals: the proposals the risk engine refused, grouped by the rule that refused them
  (count, first and last time, the first refusal's sentence), most frequent first. They say
  why a curve goes flat: a desk past 80% of its drawdown limit only reduces positions, and
  refuses every new one until equity recovers, which it cannot do without trading.
- Entry fills: how many entry orders filled in full, in part or not at all, and the median
  share filled of those filled in part. They say why positions are smaller than asked: on
  a thin market the paper venue fills one order up to a share of each bar's volume, and the
  execution manager protects what filled and cancels the rest.

Text renderers (`trades_csv`, `equity_csv`, `summary_json`, `summary_markdown`) return
strings that depend only on their inputs, so the same backtest gives the same bytes.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from legato.kernel.errors import ValidationError
from legato.trading.backtest.trades import ClosedTrade, EntryFill, EquityPoint, Refusal

__all__ = [
    "ENTRY_FILLS_NOTE",
    "REFUSAL_HEADERS",
    "TRADE_COLUMNS",
    "BacktestMetrics",
    "BacktestReport",
    "EntryFillSummary",
    "RefusalGroup",
    "bar_interval",
    "compute_metrics",
    "equity_csv",
    "group_refusals",
    "metric_rows",
    "refusal_rows",
    "summarise_entry_fills",
    "summary_json",
    "summary_markdown",
    "trades_csv",
]

_YEAR = timedelta(days=365)


@dataclass(frozen=True, slots=True)
class BacktestMetrics:
    """The summary numbers of one backtest (see the module docstring for definitions).

    Ratios are fractions (0.05 for 5%). Statistics that cannot be computed from the inputs
    (a Sharpe ratio from a flat curve, a win rate without trades) are None.
    """

    start: datetime
    end: datetime
    points: int
    bar_interval: timedelta
    initial_equity: Decimal
    final_equity: Decimal
    net_pnl: Decimal
    total_return: Decimal
    annualized_return: float | None
    sharpe: float | None
    sortino: float | None
    max_drawdown: float
    max_drawdown_duration: timedelta
    win_rate: float | None
    profit_factor: float | None
    exposure: float
    fees: Decimal
    trades: int

    def as_dict(self) -> dict[str, object]:
        """The metrics as JSON-ready values: Decimals as exact strings, times in ISO 8601."""
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "points": self.points,
            "bar_interval_seconds": self.bar_interval.total_seconds(),
            "initial_equity": str(self.initial_equity),
            "final_equity": str(self.final_equity),
            "net_pnl": str(self.net_pnl),
            "total_return": str(self.total_return),
            "annualized_return": _rounded(self.annualized_return),
            "sharpe": _rounded(self.sharpe),
            "sortino": _rounded(self.sortino),
            "max_drawdown": _rounded(self.max_drawdown),
            "max_drawdown_duration_seconds": self.max_drawdown_duration.total_seconds(),
            "win_rate": _rounded(self.win_rate),
            "profit_factor": _rounded(self.profit_factor),
            "exposure": _rounded(self.exposure),
            "fees": str(self.fees),
            "trades": self.trades,
        }


@dataclass(frozen=True, slots=True)
class RefusalGroup:
    """The refusals of one risk rule: how many, the first and last time, the first sentence."""

    code: str
    count: int
    first: datetime
    last: datetime
    message: str

    def as_dict(self) -> dict[str, object]:
        """The group as JSON-ready values (times in ISO 8601)."""
        return {
            "code": self.code,
            "count": self.count,
            "first": self.first.isoformat(),
            "last": self.last.isoformat(),
            "message": self.message,
        }


def group_refusals(refusals: Sequence[Refusal]) -> tuple[RefusalGroup, ...]:
    """`refusals` grouped by rule, most frequent first (ties by code), each in time order."""
    groups: dict[str, list[Refusal]] = {}
    for refusal in sorted(refusals, key=lambda r: r.at):
        groups.setdefault(refusal.code, []).append(refusal)
    built = [
        RefusalGroup(code, len(items), items[0].at, items[-1].at, items[0].message)
        for code, items in groups.items()
    ]
    return tuple(sorted(built, key=lambda group: (-group.count, group.code)))


@dataclass(frozen=True, slots=True)
class EntryFillSummary:
    """How fully the entry orders filled: in full, in part, not at all.

    `median_partial_share` is the median of filled / asked over the entries filled in part
    (None when none was).
    """

    entries: int
    full: int
    partial: int
    unfilled: int
    median_partial_share: float | None

    @property
    def short(self) -> int:
        """Entries that filled less than they asked for (in part or not at all)."""
        return self.partial + self.unfilled

    def as_dict(self) -> dict[str, object]:
        """The summary as JSON-ready values."""
        return {
            "entries": self.entries,
            "full": self.full,
            "partial": self.partial,
            "unfilled": self.unfilled,
            "median_partial_share": _rounded(self.median_partial_share),
        }

    def sentence(self) -> str:
        """One line for a reader: how many entries filled short, and by how much."""
        text = f"{self.short} of {self.entries} entry orders filled less than asked"
        if self.median_partial_share is not None:
            text += (
                f" ({self.partial} in part, a median {_share(self.median_partial_share)} "
                "of the size asked"
            )
            text += f"; {self.unfilled} not at all)" if self.unfilled else ")"
        elif self.unfilled:
            text += f" ({self.unfilled} not at all)"
        return text


def summarise_entry_fills(entries: Sequence[EntryFill]) -> EntryFillSummary | None:
    """How fully `entries` filled; None when there were none (or none are known)."""
    if not entries:
        return None
    shares = [
        float(entry.filled / entry.asked) for entry in entries if 0 < entry.filled < entry.asked
    ]
    unfilled = sum(1 for entry in entries if not entry.filled)
    return EntryFillSummary(
        entries=len(entries),
        full=len(entries) - len(shares) - unfilled,
        partial=len(shares),
        unfilled=unfilled,
        median_partial_share=statistics.median(shares) if shares else None,
    )


@dataclass(frozen=True, slots=True)
class BacktestReport:
    """A titled report: the closed trades, the equity curve and the metrics computed from them.

    `refusals` are the risk engine's refusals, grouped by rule (`group_refusals`);
    `entry_fills` how fully the entry orders filled (None when they are not known).
    """

    title: str
    trades: tuple[ClosedTrade, ...]
    equity: tuple[EquityPoint, ...]
    metrics: BacktestMetrics
    refusals: tuple[RefusalGroup, ...] = ()
    entry_fills: EntryFillSummary | None = None

    @classmethod
    def build(
        cls,
        title: str,
        trades: Sequence[ClosedTrade],
        equity: Sequence[EquityPoint],
        refusals: Sequence[Refusal] = (),
        entries: Sequence[EntryFill] = (),
    ) -> BacktestReport:
        """Compute the metrics of `trades` and `equity` and bundle them under `title`."""
        return cls(
            title,
            tuple(trades),
            tuple(equity),
            compute_metrics(trades, equity),
            group_refusals(refusals),
            summarise_entry_fills(entries),
        )


def _rounded(value: float | None) -> float | None:
    # Twelve significant digits: far below any meaningful difference, and it keeps the JSON
    # free of float noise such as 0.30000000000000004.
    return None if value is None else float(f"{value:.12g}")


def bar_interval(equity: Sequence[EquityPoint]) -> timedelta:
    """The most common gap between consecutive points (the smallest of equally common ones)."""
    gaps = Counter(b.timestamp - a.timestamp for a, b in itertools.pairwise(equity))
    if not gaps:
        raise ValidationError("equity", len(equity), "at least two equity points")
    best = max(gaps.values())
    return min(gap for gap, count in gaps.items() if count == best)


def _max_drawdown(equity: Sequence[EquityPoint]) -> float:
    """The largest fall from a running peak, as a fraction of that peak."""
    peak = equity[0].equity
    worst = 0.0
    for point in equity:
        if point.equity >= peak:
            peak = point.equity
        elif peak > 0:
            worst = max(worst, float((peak - point.equity) / peak))
    return worst


def _under_water_time(equity: Sequence[EquityPoint]) -> timedelta:
    """Longest span from a peak to the first point back at or above it (or to the end)."""
    peak = equity[0].equity
    peak_time = equity[0].timestamp
    under_water = False
    longest = timedelta(0)
    for point in equity:
        if point.equity >= peak:
            if under_water:
                longest = max(longest, point.timestamp - peak_time)
            peak, peak_time, under_water = point.equity, point.timestamp, False
        else:
            under_water = True
    if under_water:
        longest = max(longest, equity[-1].timestamp - peak_time)
    return longest


def compute_metrics(
    trades: Sequence[ClosedTrade], equity: Sequence[EquityPoint]
) -> BacktestMetrics:
    """Compute every report metric from closed trades and an equity curve (2 points or more)."""
    if len(equity) < 2:
        raise ValidationError("equity", len(equity), "at least two equity points")
    initial, final = equity[0].equity, equity[-1].equity
    if initial <= 0:
        raise ValidationError("equity[0].equity", initial, "a starting equity > 0")
    interval = bar_interval(equity)
    periods_per_year = _YEAR / interval
    growth = final / initial
    annualized: float | None = None
    if growth > 0:
        try:
            annualized = float(growth) ** (periods_per_year / (len(equity) - 1)) - 1.0
        except OverflowError:
            # A short, steep curve compounds past any float: no meaningful annual figure.
            annualized = None
    values = [float(point.equity) for point in equity]
    returns = [
        (now / before - 1.0) if before > 0 else 0.0 for before, now in itertools.pairwise(values)
    ]
    count = len(returns)
    mean = math.fsum(returns) / count
    scale = math.sqrt(periods_per_year)
    sharpe = sortino = None
    if count > 1:
        variance = math.fsum((r - mean) ** 2 for r in returns) / (count - 1)
        if variance > 0:
            sharpe = mean / math.sqrt(variance) * scale
        downside = math.fsum(min(r, 0.0) ** 2 for r in returns) / (count - 1)
        if downside > 0:
            sortino = mean / math.sqrt(downside) * scale
    wins = [t.net_pnl for t in trades if t.net_pnl > 0]
    losses = [t.net_pnl for t in trades if t.net_pnl < 0]
    gross_loss = -sum(losses, Decimal(0))
    return BacktestMetrics(
        start=equity[0].timestamp,
        end=equity[-1].timestamp,
        points=len(equity),
        bar_interval=interval,
        initial_equity=initial,
        final_equity=final,
        net_pnl=final - initial,
        total_return=growth - 1,
        annualized_return=annualized,
        sharpe=sharpe,
        sortino=sortino,
        max_drawdown=_max_drawdown(equity),
        max_drawdown_duration=_under_water_time(equity),
        win_rate=len(wins) / len(trades) if trades else None,
        profit_factor=float(sum(wins, Decimal(0)) / gross_loss) if gross_loss else None,
        exposure=sum(1 for point in equity if point.position) / len(equity),
        fees=sum((t.fees for t in trades), Decimal(0)),
        trades=len(trades),
    )


TRADE_COLUMNS = (
    "symbol",
    "side",
    "quantity",
    "entry_time",
    "entry_price",
    "exit_time",
    "exit_price",
    "pnl",
    "fees",
    "net_pnl",
    "exit_reason",
)


def trades_csv(trades: Sequence[ClosedTrade]) -> str:
    """The closed trades as CSV (header first; exact Decimals; ISO 8601 UTC times)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TRADE_COLUMNS)
    for t in trades:
        writer.writerow(
            (
                t.symbol,
                t.side.value,
                t.quantity,
                t.entry_time.isoformat(),
                t.entry_price,
                t.exit_time.isoformat(),
                t.exit_price,
                t.pnl,
                t.fees,
                t.net_pnl,
                t.exit_reason,
            )
        )
    return buffer.getvalue()


def equity_csv(equity: Sequence[EquityPoint]) -> str:
    """The equity curve as CSV: timestamp, equity, position."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("timestamp", "equity", "position"))
    for point in equity:
        writer.writerow((point.timestamp.isoformat(), point.equity, point.position))
    return buffer.getvalue()


def summary_json(report: BacktestReport) -> str:
    """The title, metrics, refusals and entry fills as indented JSON with sorted keys.

    It ends in a newline; `entry_fills` is null when the run does not know them.
    """
    fills = report.entry_fills
    document = {
        "title": report.title,
        "metrics": report.metrics.as_dict(),
        "refusals": [group.as_dict() for group in report.refusals],
        "entry_fills": None if fills is None else fills.as_dict(),
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def _percent(value: float | Decimal | None) -> str:
    return "n/a" if value is None else f"{float(value) * 100:.2f}%"


def _share(value: float) -> str:
    # A share far below a percent (a sliver of a position) keeps two significant digits
    # instead of rounding to 0.00%.
    percent = value * 100
    if percent >= 0.01 or percent <= 0:
        return f"{percent:.2f}%"
    return f"{percent:.{1 - math.floor(math.log10(percent))}f}%"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _money(value: Decimal) -> str:
    return f"{value:,.2f}"


def metric_rows(metrics: BacktestMetrics) -> list[tuple[str, str]]:
    """The metrics as (label, formatted value) rows, in the order reports show them."""
    return [
        ("Period", f"{metrics.start.isoformat()} to {metrics.end.isoformat()}"),
        ("Bars", f"{metrics.points} × {metrics.bar_interval}"),
        ("Initial equity", _money(metrics.initial_equity)),
        ("Final equity", _money(metrics.final_equity)),
        ("Net PnL", _money(metrics.net_pnl)),
        ("Total return", _percent(metrics.total_return)),
        ("Annualised return", _percent(metrics.annualized_return)),
        ("Sharpe ratio", _ratio(metrics.sharpe)),
        ("Sortino ratio", _ratio(metrics.sortino)),
        ("Maximum drawdown", _percent(metrics.max_drawdown)),
        ("Longest drawdown", str(metrics.max_drawdown_duration)),
        ("Trades", str(metrics.trades)),
        ("Win rate", _percent(metrics.win_rate)),
        ("Profit factor", _ratio(metrics.profit_factor)),
        ("Exposure", _percent(metrics.exposure)),
        ("Fees", _money(metrics.fees)),
    ]


REFUSAL_HEADERS = ("Rule", "Refused", "First", "Last", "First refusal")

ENTRY_FILLS_NOTE = (
    "The paper venue fills one order up to its participation share of each bar's volume; the "
    "execution manager protects what filled and cancels the rest, so these positions are "
    "smaller than their proposals asked."
)


def refusal_rows(refusals: Sequence[RefusalGroup]) -> list[tuple[str, str, str, str, str]]:
    """The refusal groups as formatted rows (`REFUSAL_HEADERS`), in the report's order."""
    return [
        (
            group.code,
            str(group.count),
            f"{group.first:%Y-%m-%d %H:%M}",
            f"{group.last:%Y-%m-%d %H:%M}",
            group.message,
        )
        for group in refusals
    ]


def summary_markdown(report: BacktestReport) -> str:
    """The title, the metrics, the refusals and short entries as Markdown, ending in a newline."""
    lines = [f"# {report.title}", "", "| Metric | Value |", "|---|---|"]
    lines.extend(f"| {label} | {value} |" for label, value in metric_rows(report.metrics))
    if report.refusals:
        refused = sum(group.count for group in report.refusals)
        lines.extend(["", f"## Refused by the risk engine ({refused})", ""])
        lines.append("| " + " | ".join(REFUSAL_HEADERS) + " |")
        lines.append("|---|---|---|---|---|")
        lines.extend(
            "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
            for row in refusal_rows(report.refusals)
        )
    fills = report.entry_fills
    if fills is not None and fills.short:
        lines.extend(["", f"## Entries filled less than asked ({fills.short})", ""])
        lines.append(f"{fills.sentence()}. {ENTRY_FILLS_NOTE}")
    return "\n".join(lines) + "\n"
