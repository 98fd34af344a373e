"""Chart geometry for the desk pages: a time series and its markers placed in an SVG box.

The pages draw their charts on the server as inline SVG, so a chart needs no script, no
library and no build step, and a reloaded page shows exactly what a live refresh shows.
`line_chart` turns (time, value) points and trade markers into pixel coordinates; the
template only writes them out. Coordinates are floats: they place pixels, never money.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from legato.kernel.errors import ValidationError

__all__ = ["ChartMarker", "LineChart", "MarkerInput", "line_chart"]

_LEFT = 64.0
_RIGHT = 12.0
_TOP = 12.0
_BOTTOM = 24.0


@dataclass(frozen=True, slots=True)
class MarkerInput:
    """A point of interest to mark on a chart: an entry or an exit at a price and time."""

    at: datetime
    value: Decimal
    kind: str
    label: str


@dataclass(frozen=True, slots=True)
class ChartMarker:
    """A marker placed in the chart box (`kind` picks its shape, `label` its tooltip)."""

    x: float
    y: float
    kind: str
    label: str


@dataclass(frozen=True, slots=True)
class LineChart:
    """A line and its markers in a `width` x `height` box, with axis labels."""

    width: int
    height: int
    path: str
    markers: tuple[ChartMarker, ...]
    y_ticks: tuple[tuple[float, str], ...]
    x_ticks: tuple[tuple[float, str], ...]
    points: int
    plot_left: float
    plot_right: float
    plot_top: float
    plot_bottom: float


def _label(value: float, spread: float) -> str:
    # Enough decimals to tell neighbouring gridlines apart, no more.
    decimals = 0 if spread >= 50 else 2 if spread >= 0.5 else 4
    return f"{value:,.{decimals}f}"


def line_chart(
    points: Sequence[tuple[datetime, Decimal]],
    markers: Sequence[MarkerInput] = (),
    *,
    width: int = 720,
    height: int = 220,
) -> LineChart:
    """Place `points` (oldest first) and the `markers` inside their time span in the box.

    The value axis spans the points and the markers with a little room above and below; a
    flat series gets a band around its value so the line sits in the middle.
    """
    if width < 200 or height < 100:
        raise ValidationError("size", (width, height), "a chart at least 200 x 100 pixels")
    plot_right = width - _RIGHT
    plot_bottom = height - _BOTTOM
    if not points:
        return LineChart(width, height, "", (), (), (), 0, _LEFT, plot_right, _TOP, plot_bottom)
    start = points[0][0].timestamp()
    end = points[-1][0].timestamp()
    inside = [m for m in markers if start <= m.at.timestamp() <= end]
    values = [float(value) for _, value in points] + [float(m.value) for m in inside]
    low, high = min(values), max(values)
    # A flat series gets a band around its value so the line sits mid-height.
    flat = high - low < 1e-12
    pad = (abs(high) * 0.01 or 1.0) if flat else (high - low) * 0.08
    low, high = low - pad, high + pad
    span = max(end - start, 1e-9)

    def x_of(at: datetime) -> float:
        if len(points) == 1:
            return (_LEFT + plot_right) / 2
        return _LEFT + (at.timestamp() - start) / span * (plot_right - _LEFT)

    def y_of(value: float) -> float:
        return plot_bottom - (value - low) / (high - low) * (plot_bottom - _TOP)

    path = " ".join(
        f"{'M' if index == 0 else 'L'}{x_of(at):.1f},{y_of(float(value)):.1f}"
        for index, (at, value) in enumerate(points)
    )
    placed = tuple(ChartMarker(x_of(m.at), y_of(float(m.value)), m.kind, m.label) for m in inside)
    y_ticks = tuple(
        (y_of(low + (high - low) * share), _label(low + (high - low) * share, high - low))
        for share in (0.0, 0.5, 1.0)
    )
    first, last = points[0][0], points[-1][0]
    x_ticks = ((_LEFT, f"{first:%m-%d %H:%M}"), (plot_right, f"{last:%m-%d %H:%M} UTC"))
    return LineChart(
        width,
        height,
        path,
        placed,
        y_ticks,
        x_ticks,
        len(points),
        _LEFT,
        plot_right,
        _TOP,
        plot_bottom,
    )
