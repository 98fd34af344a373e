"""The desk's Prometheus families, built from one `DeskMetrics` reading."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from legato.service.metrics import desk_metric_families, desk_metric_source
from legato.trading.alerts import AlertLevel
from legato.trading.coordinator import LATENCY_BUCKETS, StageLatency
from legato.trading.desk import Desk, DeskMetrics, SymbolMetrics
from legato.trading.desk_config import DeskConfig
from legato.trading.risk import TradingState


def _symbol(name: str, **changes: object) -> SymbolMetrics:
    values: dict[str, object] = {
        "symbol": name,
        "side": None,
        "quantity": Decimal(0),
        "exposure": Decimal(0),
        "unrealized_pnl": Decimal(0),
        "realized_pnl": Decimal(0),
        "fees_paid": Decimal(0),
        "last_price": Decimal(100),
        "paused": False,
        "unknown_orders": 0,
        "open_orders": 0,
        "decisions": {},
        "trades": {},
        **changes,
    }
    return SymbolMetrics(**values)  # type: ignore[arg-type]


class _Desk(Collector):
    def __init__(self, metrics: DeskMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(desk_metric_families(self.metrics))


def _render(metrics: DeskMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Desk(metrics))
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_short_position_reads_negative_and_the_state_is_one_hot() -> None:
    short = _symbol(
        "ETH-USDT-PERP",
        side="short",
        quantity=Decimal("2.5"),
        exposure=Decimal(250),
        unrealized_pnl=Decimal(-5),
        realized_pnl=Decimal(12),
        decisions={"rejected": 3, "executed": 1},
        trades={True: 1},
        unknown_orders=1,
        paused=True,
    )
    flat = _symbol("BTC-USDT-PERP", realized_pnl=Decimal(-2))
    metrics = DeskMetrics(
        quote_asset="USDT",
        equity=Decimal(995),
        balances={"USDT": Decimal(1_000)},
        symbols=(short, flat),
        trading_state=TradingState.REDUCING,
        kill_switch=False,
        bars_processed=42,
        alerts={level: 0 for level in AlertLevel} | {AlertLevel.HIGH: 2},
        latencies={"decision": StageLatency(3, 0.75, (0, 0, 0, 1, 0, 2) + (0,) * 4)},
        pending_writes=1,
        telemetry=None,
    )
    samples = _render(metrics)
    eth = (("symbol", "ETH-USDT-PERP"),)
    assert samples[("legato_desk_position_quantity", eth)] == -2.5
    assert samples[("legato_desk_position_quantity", (("symbol", "BTC-USDT-PERP"),))] == 0
    assert samples[("legato_desk_symbol_paused", eth)] == 1
    assert samples[("legato_desk_orders_unknown", eth)] == 1
    assert samples[("legato_desk_equity", (("quote_asset", "USDT"),))] == 995
    assert samples[("legato_desk_realized_pnl", (("quote_asset", "USDT"),))] == 10
    assert samples[("legato_desk_open_positions", ())] == 1
    assert samples[("legato_desk_trading_state", (("state", "reducing"),))] == 1
    assert samples[("legato_desk_trading_state", (("state", "active"),))] == 0
    assert samples[("legato_desk_bars_processed_total", ())] == 42
    assert samples[("legato_desk_pending_writes", ())] == 1
    assert samples[("legato_desk_alerts_total", (("level", "high"),))] == 2
    rejected = (("status", "rejected"), ("symbol", "ETH-USDT-PERP"))
    assert samples[("legato_desk_decisions_total", rejected)] == 3
    failed = (("result", "failed"), ("symbol", "ETH-USDT-PERP"))
    assert samples[("legato_desk_trades_total", failed)] == 0
    # Cumulative buckets: one run within 0.05 s, all three within 0.5 s.
    decision = "legato_desk_agent_latency_seconds"
    assert samples[(f"{decision}_bucket", (("le", "0.05"), ("stage", "decision")))] == 1
    assert samples[(f"{decision}_bucket", (("le", "0.5"), ("stage", "decision")))] == 3
    assert samples[(f"{decision}_bucket", (("le", "+Inf"), ("stage", "decision")))] == 3
    assert samples[(f"{decision}_sum", (("stage", "decision"),))] == 0.75
    assert len(LATENCY_BUCKETS) == 10


async def test_a_desk_that_is_not_running_adds_no_families() -> None:
    desk = Desk(DeskConfig(), store_url="sqlite:///unused.db")
    assert await desk_metric_source(desk)() == []
