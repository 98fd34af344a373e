"""Chart geometry for the desk pages: points and markers land where their values say."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from legato.kernel.errors import ValidationError
from legato.service.desk_charts import MarkerInput, line_chart

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def series(*values: str) -> list[tuple[datetime, Decimal]]:
    return [(T0 + timedelta(minutes=5 * i), Decimal(v)) for i, v in enumerate(values)]


def test_a_higher_value_is_drawn_higher_and_time_runs_left_to_right() -> None:
    chart = line_chart(series("100", "110", "105"))
    coordinates = [tuple(float(n) for n in step[1:].split(",")) for step in chart.path.split(" ")]
    xs = [x for x, _ in coordinates]
    ys = [y for _, y in coordinates]
    assert xs == sorted(xs)
    assert xs[0] == chart.plot_left
    assert xs[-1] == chart.plot_right
    assert ys[1] < ys[2] < ys[0]  # SVG y grows downwards: 110 is highest, 100 lowest
    assert all(chart.plot_top <= y <= chart.plot_bottom for y in ys)


def test_markers_outside_the_series_span_are_left_out_and_inside_ones_are_placed() -> None:
    inside = MarkerInput(T0 + timedelta(minutes=5), Decimal("120"), "entry", "buy 1 at 120")
    before = MarkerInput(T0 - timedelta(minutes=5), Decimal("100"), "exit", "too early")
    chart = line_chart(series("100", "110", "105"), [inside, before])
    assert [(m.kind, m.label) for m in chart.markers] == [("entry", "buy 1 at 120")]
    # The value axis stretches to show the marker above the line.
    assert (
        chart.plot_top
        <= chart.markers[0].y
        < min(float(step[1:].split(",")[1]) for step in chart.path.split(" "))
    )


def test_a_flat_series_is_drawn_mid_height() -> None:
    chart = line_chart(series("100", "100"))
    ys = [float(step[1:].split(",")[1]) for step in chart.path.split(" ")]
    middle = (chart.plot_top + chart.plot_bottom) / 2
    assert ys == [pytest.approx(middle, abs=0.1)] * 2


def test_no_points_give_an_empty_chart() -> None:
    chart = line_chart([])
    assert chart.points == 0
    assert chart.path == ""


def test_a_box_too_small_to_read_is_refused() -> None:
    with pytest.raises(ValidationError, match="size"):
        line_chart(series("1"), width=50, height=20)
