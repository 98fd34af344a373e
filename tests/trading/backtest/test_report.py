"""Report metrics on hand-made curves and trades, and the text files' exact content."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from legato.kernel.errors import ValidationError
from legato.trading.backtest.charts import report_html
from legato.trading.backtest.report import (
    BacktestReport,
    EntryFillSummary,
    RefusalGroup,
    bar_interval,
    compute_metrics,
    equity_csv,
    group_refusals,
    summarise_entry_fills,
    summary_json,
    summary_markdown,
    trades_csv,
)
from legato.trading.backtest.trades import ClosedTrade, EntryFill, EquityPoint, Refusal
from legato.trading.positions import PositionSide

T0 = datetime(2024, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
CURVE = ("100", "110", "99", "105", "121", "110")
HELD = (0, 1, 1, 0, 1, 0)


def curve(values: tuple[str, ...] = CURVE, step: timedelta = DAY) -> list[EquityPoint]:
    return [
        EquityPoint(T0 + step * index, Decimal(value), Decimal(HELD[index % len(HELD)]))
        for index, value in enumerate(values)
    ]


def trade(net: str, fees: str = "1") -> ClosedTrade:
    return ClosedTrade(
        symbol="BTC-USDT-PERP",
        side=PositionSide.LONG,
        quantity=Decimal(1),
        entry_time=T0,
        entry_price=Decimal(100),
        exit_time=T0 + DAY,
        exit_price=Decimal(100) + Decimal(net) + Decimal(fees),
        fees=Decimal(fees),
        pnl=Decimal(net) + Decimal(fees),
        exit_reason="close",
    )


TRADES = [trade("10"), trade("-4"), trade("6"), trade("-1")]


def test_returns_are_exact_and_annualised_over_a_365_day_year() -> None:
    metrics = compute_metrics(TRADES, curve())
    assert metrics.total_return == Decimal("0.1")
    assert metrics.net_pnl == Decimal(10)
    assert metrics.bar_interval == DAY
    assert metrics.annualized_return == pytest.approx(1.1 ** (365 / 5) - 1)


def test_sharpe_and_sortino_use_sample_deviations_and_a_zero_risk_free_rate() -> None:
    values = [float(v) for v in CURVE]
    returns = [b / a - 1 for a, b in itertools.pairwise(values)]
    scale = math.sqrt(365)
    downside = math.sqrt(sum(min(r, 0.0) ** 2 for r in returns) / (len(returns) - 1))
    metrics = compute_metrics(TRADES, curve())
    assert metrics.sharpe == pytest.approx(
        statistics.mean(returns) / statistics.stdev(returns) * scale
    )
    assert metrics.sortino == pytest.approx(statistics.mean(returns) / downside * scale)


def test_maximum_drawdown_is_the_largest_fall_from_a_peak_and_its_longest_stretch() -> None:
    metrics = compute_metrics([], curve())
    assert metrics.max_drawdown == pytest.approx(0.1)  # 110 down to 99
    assert metrics.max_drawdown_duration == 3 * DAY  # under 110 from day 1 until day 4


def test_a_drawdown_that_never_recovers_lasts_until_the_last_point() -> None:
    metrics = compute_metrics([], curve(("100", "120", "90", "95", "96", "97")))
    assert metrics.max_drawdown == pytest.approx(0.25)
    assert metrics.max_drawdown_duration == 4 * DAY


def test_trade_statistics_count_net_pnl_after_fees() -> None:
    metrics = compute_metrics(TRADES, curve())
    assert metrics.trades == 4
    assert metrics.win_rate == 0.5
    assert metrics.profit_factor == pytest.approx(16 / 5)
    assert metrics.fees == Decimal(4)


def test_exposure_is_the_share_of_points_holding_a_position() -> None:
    assert compute_metrics([], curve()).exposure == pytest.approx(3 / 6)


def test_undefined_statistics_are_none_not_zero() -> None:
    flat = compute_metrics([], curve(("100", "100", "100")))
    assert (flat.sharpe, flat.sortino, flat.win_rate, flat.profit_factor) == (
        None,
        None,
        None,
        None,
    )
    winners_only = compute_metrics([trade("5")], curve())
    assert winners_only.profit_factor is None


def test_an_overflowing_annualisation_is_none() -> None:
    steep = compute_metrics([], curve(("100", "1000"), step=timedelta(seconds=1)))
    assert steep.annualized_return is None


def test_the_bar_interval_is_the_most_common_gap() -> None:
    points = curve(step=timedelta(minutes=5))
    gapped = [
        *points[:3],
        *[EquityPoint(p.timestamp + DAY, p.equity, p.position) for p in points[3:]],
    ]
    assert bar_interval(gapped) == timedelta(minutes=5)


def test_fewer_than_two_points_or_a_non_positive_start_are_refused() -> None:
    with pytest.raises(ValidationError) as raised:
        compute_metrics([], curve()[:1])
    assert raised.value.field == "equity"
    with pytest.raises(ValidationError) as raised:
        compute_metrics([], curve(("0", "10")))
    assert raised.value.field == "equity[0].equity"


def test_text_files_hold_exact_decimals_and_iso_times() -> None:
    trades_text = trades_csv(TRADES[:1])
    assert trades_text.splitlines() == [
        "symbol,side,quantity,entry_time,entry_price,exit_time,exit_price,pnl,fees,net_pnl,exit_reason",
        "BTC-USDT-PERP,long,1,2024-01-01T00:00:00+00:00,100,2024-01-02T00:00:00+00:00,111,11,1,10,close",
    ]
    assert equity_csv(curve()[:2]).splitlines() == [
        "timestamp,equity,position",
        "2024-01-01T00:00:00+00:00,100,0",
        "2024-01-02T00:00:00+00:00,110,1",
    ]


def test_summary_json_and_markdown_carry_every_metric() -> None:
    report = BacktestReport.build("EMA test", TRADES, curve())
    document = json.loads(summary_json(report))
    assert document["title"] == "EMA test"
    assert set(document["metrics"]) >= {
        "total_return",
        "annualized_return",
        "sharpe",
        "sortino",
        "max_drawdown",
        "max_drawdown_duration_seconds",
        "win_rate",
        "profit_factor",
        "exposure",
        "fees",
        "trades",
    }
    assert document["metrics"]["total_return"] == "0.1"
    markdown = summary_markdown(report)
    for label in (
        "Total return",
        "Sharpe ratio",
        "Sortino ratio",
        "Maximum drawdown",
        "Win rate",
        "Profit factor",
        "Exposure",
        "Fees",
    ):
        assert f"| {label} |" in markdown


def test_the_same_inputs_render_the_same_text() -> None:
    first = BacktestReport.build("same", TRADES, curve())
    second = BacktestReport.build("same", list(TRADES), curve())
    assert summary_json(first) == summary_json(second)
    assert summary_markdown(first) == summary_markdown(second)
    assert trades_csv(first.trades) == trades_csv(second.trades)


REFUSALS = [
    Refusal(T0 + DAY * 3, "drawdown", "the drawdown is 8.07% of peak equity, past 8%"),
    Refusal(T0 + DAY, "cooldown", "3 losing trades in a row | wait"),
    Refusal(T0 + DAY * 2, "drawdown", "the drawdown is 8.10% of peak equity, past 8%"),
]


def test_refusals_are_grouped_by_rule_most_frequent_first() -> None:
    assert group_refusals(REFUSALS) == (
        RefusalGroup(
            "drawdown",
            2,
            T0 + DAY * 2,
            T0 + DAY * 3,
            "the drawdown is 8.10% of peak equity, past 8%",
        ),
        RefusalGroup("cooldown", 1, T0 + DAY, T0 + DAY, "3 losing trades in a row | wait"),
    )


def test_every_report_form_says_what_the_risk_engine_refused() -> None:
    report = BacktestReport.build("t", TRADES, curve(), REFUSALS)
    document = json.loads(summary_json(report))
    assert [(g["code"], g["count"]) for g in document["refusals"]] == [
        ("drawdown", 2),
        ("cooldown", 1),
    ]
    assert document["refusals"][0]["first"] == (T0 + DAY * 2).isoformat()
    markdown = summary_markdown(report)
    assert "## Refused by the risk engine (3)" in markdown
    # A | in a sentence would split its Markdown cell.
    assert (
        "| cooldown | 1 | 2024-01-02 00:00 | 2024-01-02 00:00 | 3 losing trades in a row \\| wait |"
        in markdown
    )
    page = report_html(report, b"")
    assert "Refused by the risk engine (3)" in page
    assert "<td>2</td>" in page


def test_a_report_without_refusals_has_no_refusal_section() -> None:
    report = BacktestReport.build("t", TRADES, curve())
    assert json.loads(summary_json(report))["refusals"] == []
    assert "Refused" not in summary_markdown(report)
    assert "Refused" not in report_html(report, b"")


def entry(asked: str, filled: str, day: int = 0) -> EntryFill:
    return EntryFill(T0 + DAY * day, Decimal(asked), Decimal(filled))


def test_entry_fills_are_counted_in_full_in_part_and_not_at_all() -> None:
    entries = [
        entry("10", "10"),
        entry("1000000", "25", 1),
        entry("200", "50", 2),
        entry("400", "300", 3),
        entry("5", "0", 4),
    ]
    assert summarise_entry_fills(entries) == EntryFillSummary(
        entries=5,
        full=1,
        partial=3,
        unfilled=1,
        median_partial_share=0.25,
    )
    assert summarise_entry_fills([]) is None


def test_a_sliver_of_a_fill_keeps_its_digits_in_the_sentence() -> None:
    # 75 of 70,796,961 asked: "0.00%" would say nothing filled at all.
    summary = summarise_entry_fills([entry("70796961", "75"), entry("70572626", "24")])
    assert summary is not None
    assert summary.sentence() == (
        "2 of 2 entry orders filled less than asked "
        "(2 in part, a median 0.000070% of the size asked)"
    )
    none = summarise_entry_fills([entry("4", "0"), entry("4", "4")])
    assert none is not None
    assert none.sentence() == "1 of 2 entry orders filled less than asked (1 not at all)"
    half = summarise_entry_fills([entry("4", "2"), entry("4", "0")])
    assert half is not None
    assert half.sentence() == (
        "2 of 2 entry orders filled less than asked "
        "(1 in part, a median 50.00% of the size asked; 1 not at all)"
    )


def test_every_report_form_says_when_entries_filled_less_than_asked() -> None:
    report = BacktestReport.build(
        "t", TRADES, curve(), entries=[entry("10", "10"), entry("100", "1", 1)]
    )
    assert json.loads(summary_json(report))["entry_fills"] == {
        "entries": 2,
        "full": 1,
        "partial": 1,
        "unfilled": 0,
        "median_partial_share": 0.01,
    }
    assert "## Entries filled less than asked (1)" in summary_markdown(report)
    assert "participation share of each bar's volume" in summary_markdown(report)
    assert "Entries filled less than asked (1)" in report_html(report, b"")


def test_entries_that_filled_in_full_add_no_section() -> None:
    report = BacktestReport.build("t", TRADES, curve(), entries=[entry("10", "10")])
    assert json.loads(summary_json(report))["entry_fills"]["full"] == 1
    assert "Entries" not in summary_markdown(report)
    assert "Entries" not in report_html(report, b"")
    unknown = BacktestReport.build("t", TRADES, curve())
    assert json.loads(summary_json(unknown))["entry_fills"] is None
