"""Prometheus exposition: a collector that renders one `MetricsSnapshot` taken at scrape time.

Nothing is counted in the hot path: the route reads the store and the in-memory figures once
per scrape (`OperatorRuntime.snapshot()`), and this collector turns the snapshot into metric
families. See docs/operator-guide.md for the list.

Parts mounted next to the operator API add their own families with `add_metric_source(app,
source)`: a source is an async function called once per scrape. `legato run` mounts the
desk's (`desk_metric_source`), whose `legato_desk_*` families `desk_metric_families` builds
from one `DeskMetrics` reading.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from decimal import Decimal

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from legato.kernel.supervisor import LoopState
from legato.service.latency import LatencyWindow
from legato.service.runtime import MetricsSnapshot
from legato.trading.desk import Desk, DeskMetrics, SymbolMetrics
from legato.trading.risk import TradingState

__all__ = [
    "CONTENT_TYPE",
    "MetricSource",
    "SnapshotCollector",
    "add_metric_source",
    "collect_metric_sources",
    "desk_metric_families",
    "desk_metric_source",
    "render_metrics",
]

MetricSource = Callable[[], Awaitable[Iterable[Metric]]]
"""An async function returning metric families; called once per /metrics scrape."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _histogram(name: str, documentation: str, window: LatencyWindow) -> HistogramMetricFamily:
    return HistogramMetricFamily(
        name, documentation, buckets=window.cumulative_buckets(), sum_value=window.total
    )


class SnapshotCollector(Collector):
    """Yields Legato's metric families from one snapshot."""

    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Every metric family of the snapshot."""
        snap = self.snapshot
        tasks = GaugeMetricFamily(
            "legato_tasks", "Tasks in the store by queue and state", labels=["queue", "state"]
        )
        for (queue, state), count in sorted(snap.tasks.items()):
            tasks.add_metric([queue, state], count)
        yield tasks
        yield GaugeMetricFamily(
            "legato_tasks_unschedulable",
            "Waiting tasks that no live worker can ever fit (queue or resources)",
            value=snap.unschedulable,
        )
        figures = snap.figures
        yield _histogram(
            "legato_task_enqueue_to_start_seconds",
            "Time from a task becoming due to an attempt starting",
            figures.enqueue_to_start,
        )
        yield _histogram(
            "legato_task_run_seconds", "Run time of attempts that ended", figures.run_time
        )
        yield CounterMetricFamily(
            "legato_task_retries",
            "Attempts that failed and were scheduled again",
            value=figures.retries,
        )
        yield CounterMetricFamily(
            "legato_task_dead_lettered",
            "Tasks that went to the dead-letter queue",
            value=figures.dead_lettered,
        )
        yield CounterMetricFamily(
            "legato_task_succeeded", "Tasks that succeeded", value=figures.succeeded
        )
        yield CounterMetricFamily(
            "legato_reaper_reclaimed",
            "Expired leases the service's reaper settled",
            value=figures.reaped,
        )
        workers = GaugeMetricFamily(
            "legato_workers", "Registered workers by health state", labels=["state"]
        )
        for state, count in sorted(snap.workers.items()):
            workers.add_metric([state], count)
        yield workers
        loop_up = GaugeMetricFamily(
            "legato_loop_up", "1 when a supervised loop is starting or running", labels=["loop"]
        )
        loop_failures = GaugeMetricFamily(
            "legato_loop_consecutive_failures",
            "Consecutive failed iterations of a supervised loop",
            labels=["loop"],
        )
        for name, health in sorted(snap.loops.items()):
            loop_up.add_metric(
                [name], 1 if health.state in (LoopState.STARTING, LoopState.RUNNING) else 0
            )
            loop_failures.add_metric([name], health.consecutive_failures)
        yield loop_up
        yield loop_failures
        if snap.loop_lag is not None:
            yield GaugeMetricFamily(
                "legato_event_loop_lag_seconds",
                "Worst recent event-loop lag of the service process",
                value=snap.loop_lag,
            )
        if snap.limiter_tokens:
            tokens = GaugeMetricFamily(
                "legato_limiter_available_tokens",
                "Tokens a named rate limiter could grant now",
                labels=["limiter"],
            )
            for name, available in sorted(snap.limiter_tokens.items()):
                tokens.add_metric([name], available)
            yield tokens
        if snap.bus is not None:
            bus = snap.bus
            for name, value, doc in (
                ("published", bus.published, "Messages published on the bus"),
                ("delivered", bus.delivered, "Successful handler calls"),
                ("failed", bus.failed, "Failed handler attempts"),
                ("dead_lettered", bus.dead_lettered, "Messages given up to the dead-letter topic"),
            ):
                yield CounterMetricFamily(f"legato_bus_{name}", doc, value=value)
            depth = GaugeMetricFamily(
                "legato_bus_queue_depth", "Messages waiting per subscriber", labels=["subscriber"]
            )
            for subscriber in bus.subscribers:
                depth.add_metric([subscriber.subscriber_id], subscriber.queue_depth)
            yield depth


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def render_metrics(snapshot: MetricsSnapshot, extra: Iterable[Metric] = ()) -> bytes:
    """The snapshot, and the `extra` families (from metric sources), in the text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    registry.register(_Families(extra))
    return generate_latest(registry)


def add_metric_source(app: FastAPI, source: MetricSource) -> None:
    """Have `app`'s /metrics also report what `source` returns at each scrape."""
    app.state.metric_sources = (*metric_sources(app), source)


def metric_sources(app: FastAPI) -> tuple[MetricSource, ...]:
    """The metric sources added to `app`, in the order they were added."""
    sources: tuple[MetricSource, ...] = getattr(app.state, "metric_sources", ())
    return sources


async def collect_metric_sources(app: FastAPI) -> list[Metric]:
    """Every family of every metric source of `app`, read now."""
    families: list[Metric] = []
    for source in metric_sources(app):
        families.extend(await source())
    return families


def desk_metric_source(desk: Desk) -> MetricSource:
    """The metric source of a desk: its `legato_desk_*` families while it runs, else none."""

    async def read() -> list[Metric]:
        if not desk.running:
            return []
        return desk_metric_families(await desk.metrics())

    return read


def desk_metric_families(metrics: DeskMetrics) -> list[Metric]:
    """The desk's families: money in the quote asset (its `quote_asset` label), time in s."""
    quote = metrics.quote_asset
    families: list[Metric] = []

    def gauge(name: str, doc: str, value: Decimal) -> None:
        family = GaugeMetricFamily(name, doc, labels=["quote_asset"])
        family.add_metric([quote], float(value))
        families.append(family)

    gauge("legato_desk_equity", "Quote balance plus open positions' unrealized PnL", metrics.equity)
    gauge(
        "legato_desk_exposure_notional",
        "Notional of every open position at the last price",
        metrics.exposure,
    )
    gauge(
        "legato_desk_unrealized_pnl",
        "Unrealized PnL of the open positions at the last price",
        sum((s.unrealized_pnl for s in metrics.symbols), Decimal(0)),
    )
    gauge(
        "legato_desk_realized_pnl",
        "Realized PnL of every position, closed and open",
        sum((s.realized_pnl for s in metrics.symbols), Decimal(0)),
    )
    gauge(
        "legato_desk_fees_paid",
        "Fees paid on every position, closed and open",
        sum((s.fees_paid for s in metrics.symbols), Decimal(0)),
    )
    balances = GaugeMetricFamily(
        "legato_desk_balance", "Recorded balance (cash) per asset", labels=["asset"]
    )
    for asset, total in sorted(metrics.balances.items()):
        balances.add_metric([asset], float(total))
    families.append(balances)
    families.append(
        GaugeMetricFamily(
            "legato_desk_open_positions", "Symbols holding a position", value=metrics.open_positions
        )
    )
    per_symbol: dict[str, tuple[str, Callable[[SymbolMetrics], Decimal | int]]] = {
        "legato_desk_position_quantity": (
            "Open position size in the base asset (negative when short)",
            lambda s: s.quantity if s.side != "short" else -s.quantity,
        ),
        "legato_desk_position_exposure_notional": (
            "Open position notional at the last price, in the quote asset",
            lambda s: s.exposure,
        ),
        "legato_desk_position_unrealized_pnl": (
            "Open position unrealized PnL at the last price, in the quote asset",
            lambda s: s.unrealized_pnl,
        ),
        "legato_desk_symbol_realized_pnl": (
            "Realized PnL of the symbol's positions, in the quote asset",
            lambda s: s.realized_pnl,
        ),
        "legato_desk_symbol_paused": ("1 when the symbol is paused", lambda s: int(s.paused)),
        "legato_desk_orders_open": ("Working orders recorded open", lambda s: s.open_orders),
        "legato_desk_orders_unknown": (
            "Orders in UNKNOWN status, waiting for the reconciler",
            lambda s: s.unknown_orders,
        ),
    }
    for name, (doc, value_of) in per_symbol.items():
        family = GaugeMetricFamily(name, doc, labels=["symbol"])
        for symbol in metrics.symbols:
            family.add_metric([symbol.symbol], float(value_of(symbol)))
        families.append(family)
    prices = GaugeMetricFamily(
        "legato_desk_last_price", "Close of the last bar seen, per symbol", labels=["symbol"]
    )
    for symbol in metrics.symbols:
        if symbol.last_price is not None:
            prices.add_metric([symbol.symbol], float(symbol.last_price))
    families.append(prices)
    state = GaugeMetricFamily(
        "legato_desk_trading_state",
        "1 for the desk's trading state at the last telemetry pass, 0 for the others",
        labels=["state"],
    )
    for candidate in TradingState:
        state.add_metric([candidate.value], int(candidate is metrics.trading_state))
    families.append(state)
    families.append(
        GaugeMetricFamily(
            "legato_desk_kill_switch",
            "1 when the kill switch is on",
            value=int(metrics.kill_switch),
        )
    )
    families.append(
        GaugeMetricFamily(
            "legato_desk_pending_writes",
            "Store writes that failed after a venue call, queued for retry",
            value=metrics.pending_writes,
        )
    )
    families.append(
        CounterMetricFamily(
            "legato_desk_bars_processed",
            "Bars fed to the venue and the coordinator since the desk started",
            value=metrics.bars_processed,
        )
    )
    decisions = CounterMetricFamily(
        "legato_desk_decisions",
        "Decided pipeline runs since the desk started, by how they ended",
        labels=["symbol", "status"],
    )
    trades = CounterMetricFamily(
        "legato_desk_trades",
        "Trades handed to the execution manager since the desk started",
        labels=["symbol", "result"],
    )
    for symbol in metrics.symbols:
        for status, count in sorted(symbol.decisions.items()):
            decisions.add_metric([symbol.symbol, status], count)
        for result in (True, False):
            trades.add_metric(
                [symbol.symbol, "executed" if result else "failed"], symbol.trades.get(result, 0)
            )
    families.extend((decisions, trades))
    alerts = CounterMetricFamily(
        "legato_desk_alerts", "Alerts recorded in the store, by level", labels=["level"]
    )
    for level, count in metrics.alerts.items():
        alerts.add_metric([level.value], count)
    families.append(alerts)
    latency = HistogramMetricFamily(
        "legato_desk_agent_latency_seconds",
        "Time each decision stage (agents, resolver, risk, execution) took per run",
        labels=["stage"],
    )
    for stage, figures in sorted(metrics.latencies.items()):
        latency.add_metric([stage], figures.cumulative(), sum_value=figures.total_seconds)
    families.append(latency)
    return families
