"""The trading desk over HTTP: its state, its history, its pages, and the operator's controls.

Mounted by `legato run` next to the operator API, over the running `Desk`. Reading is open
like the rest of the API on loopback; every control (kill switch, pause, resume, close) is a
mutating call and so needs the bearer token (the service's access policy applies to these
routes as to all others).

JSON under /desk: the snapshot, decisions with their model votes, conflicts with their
resolutions, alerts, orders (UNKNOWN ones flagged), the equity series and a symbol's recent
closes with its entries and exits. Pages under /ui/desk render the same data as HTML with
inline SVG charts and refresh themselves by a light poll (static/desk.js); they stay out of
the OpenAPI schema like the rest of the dashboard.

`mount_desk(app, desk, reload_config=...)` is how `legato run` mounts it: the routes, the
desk's `legato_desk_*` families on /metrics, and (with a config loader) the
``POST /desk/config/reload`` control that re-reads the config file and applies what a
running desk can take (`Desk.apply_config`).

The equity series and the recent closes come from the desk bus's retained history (the
``desk.telemetry`` and ``desk.signal.*`` messages), so they reach back as far as that
bounded history does; entries and exits come from the ledger's fills.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from starlette.routing import NoMatchFound

from legato.kernel.errors import ConfigError
from legato.service.desk_charts import LineChart, MarkerInput, line_chart
from legato.service.errors import ApiError
from legato.service.metrics import add_metric_source, desk_metric_source
from legato.service.models import ErrorEnvelope
from legato.service.routes.dashboard import templates
from legato.service.routes.dependencies import runtime_of
from legato.service.runtime import OperatorRuntime
from legato.trading.alerts import Alert, AlertLevel
from legato.trading.coordinator import topic_token
from legato.trading.decision_log import ConflictRecord, DecisionRecord, PipelineStatus
from legato.trading.desk import TELEMETRY_TOPIC, Desk
from legato.trading.desk_config import DeskConfig
from legato.trading.ledger import LedgerOrder, OrderRole
from legato.trading.orders import Order, OrderStatus

__all__ = [
    "AlertView",
    "ConfigReloadView",
    "ConflictView",
    "DecisionView",
    "DeskControl",
    "DeskView",
    "EquityPoint",
    "EquityView",
    "OrderView",
    "PriceView",
    "TradeMarker",
    "desk_router",
    "mount_desk",
]

ConfigLoader = Callable[[], DeskConfig]
"""Re-reads the desk's configuration (the config file, with the command line's overrides)."""

Symbol = Annotated[str, Path(min_length=1, max_length=64)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Runtime = Annotated[OperatorRuntime, Depends(runtime_of)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorEnvelope},
    404: {"model": ErrorEnvelope},
    422: {"model": ErrorEnvelope},
}
_READ_ERRORS: dict[int | str, dict[str, Any]] = {422: {"model": ErrorEnvelope}}
_EXIT_ROLES = {OrderRole.STOP_LOSS, OrderRole.TAKE_PROFIT, OrderRole.CLOSE, OrderRole.REPROTECT}
_POLL_SECONDS = 3
_DESK_PAGE = "legato_desk_page"


def desk_mounted(request: Request) -> bool:
    """True when the app serving `request` has a desk's pages (the nav shows a Desk tab)."""
    try:
        request.app.url_path_for(_DESK_PAGE)
    except NoMatchFound:
        return False
    return True


# Every dashboard page extends base.html, which asks this to decide on the Desk tab.
templates.env.globals["desk_mounted"] = desk_mounted


class DeskView(BaseModel):
    """A running desk at one instant: telemetry, positions, open orders, recent decisions."""

    symbols: list[str]
    bars_processed: int
    kill_switch: bool
    paused: list[str]
    strategies: dict[str, str] = Field(
        default_factory=dict,
        description="The symbols a strategy of the user's trades instead of the agents "
        "(`legato run --strategy`), with the strategy's MODULE:NAME.",
    )
    telemetry: dict[str, Any] | None
    positions: list[dict[str, Any]]
    open_orders: list[dict[str, Any]]
    recent_decisions: list[dict[str, Any]]
    loops: dict[str, dict[str, Any]] = Field(default_factory=dict)


class DeskControl(BaseModel):
    """The outcome of an operator control."""

    ok: bool
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ConfigChangeView(BaseModel):
    """One changed field: old and new value, and how it applies or why it needs a restart."""

    field: str
    old: Any
    new: Any
    safe: bool
    effect: str | None
    restart_reason: str | None


class ConfigReloadView(BaseModel):
    """The outcome of a config reload: applied (every change) or not, and each change."""

    applied: bool
    summary: str
    applied_changes: list[ConfigChangeView]
    refused: list[ConfigChangeView]
    held_back: list[ConfigChangeView]


class VoteView(BaseModel):
    """One model's vote in a decision (prices and costs as exact decimal strings)."""

    model: str
    action: str
    confidence: float
    reasoning: str
    fallback_reason: str | None
    error: str | None
    cost: str


class DecisionView(BaseModel):
    """One decision pipeline run with the votes of the models polled for it."""

    key: str
    symbol: str
    bar_time: datetime
    strategy: str
    correlation_id: str
    action: str
    leading_action: str
    consensus: float
    split: bool
    entry: str | None
    stop: str | None
    target: str | None
    reasoning: str
    status: str
    detail: str | None
    intent_id: str | None
    votes: list[VoteView]


class ConflictItem(BaseModel):
    """One detected conflict: its kind and what disagrees with what."""

    kind: str
    description: str


class ResolutionView(BaseModel):
    """How a run's conflicts were resolved, by which resolver, and why."""

    action: str
    size_factor: str
    reasoning: str
    confidence: float
    source: str
    fallback_reason: str | None


class ConflictView(BaseModel):
    """The conflicts of one decision run and their resolution."""

    key: str
    symbol: str
    at: datetime
    conflicts: list[ConflictItem]
    resolution: ResolutionView


class AlertView(BaseModel):
    """One desk alert: level, code, the operator's sentence and what it concerns."""

    level: str
    code: str
    message: str
    at: datetime
    symbol: str | None
    client_order_id: str | None
    intent_id: str | None


class OrderView(BaseModel):
    """One recorded order with why the desk holds it; `unknown` flags UNKNOWN status."""

    client_order_id: str
    symbol: str
    side: str
    type: str
    role: str
    status: str
    unknown: bool
    quantity: str
    price: str | None
    stop_price: str | None
    filled_quantity: str
    average_price: str | None
    reduce_only: bool
    intent_id: str | None
    reason: str | None
    created_at: datetime | None
    updated_at: datetime | None


class EquityPoint(BaseModel):
    """The desk's equity and exposure at one telemetry pass."""

    at: datetime
    equity: str
    exposure: str
    unrealized_pnl: str
    realized_pnl: str
    open_positions: int


class EquityView(BaseModel):
    """The equity series, oldest first, as far back as the bus history reaches."""

    points: list[EquityPoint]


class PricePoint(BaseModel):
    """A bar's close (the bars the coordinator decided on, after indicator warm-up)."""

    at: datetime
    close: str


class TradeMarker(BaseModel):
    """A fill to mark on the price chart: an entry, or an exit (stop, target, close).

    `filled_at` is when the fill happened (clock time); `at` is where it falls on the bars'
    own timeline, which runs `speed` times faster when the market is replayed.
    """

    at: datetime
    filled_at: datetime
    price: str
    side: str
    kind: Literal["entry", "exit"]
    role: str
    quantity: str
    client_order_id: str


class PriceView(BaseModel):
    """A symbol's recent closes, oldest first, with the entries and exits in their span."""

    symbol: str
    closes: list[PricePoint]
    markers: list[TradeMarker]


def plain(value: Any) -> Any:
    """Turn a domain value (dataclass, Decimal, datetime, enum, mapping) into JSON-ready data.

    Decimals become strings so that prices and quantities keep every digit.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(item) for item in value]
    return value


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _known(desk: Desk, symbol: str) -> str:
    if symbol not in desk.config.symbols:
        raise ApiError(
            404,
            "not_found",
            f"the desk does not trade {symbol!r}",
            {"symbol": symbol, "accepted": list(desk.config.symbols)},
        )
    return symbol


def _order_view(record: LedgerOrder) -> OrderView:
    order = record.order
    return OrderView(
        client_order_id=order.client_order_id,
        symbol=order.symbol,
        side=order.side.value,
        type=order.type.value,
        role=record.role.value,
        status=order.status.value,
        unknown=order.status is OrderStatus.UNKNOWN,
        quantity=str(order.quantity),
        price=_text(order.price),
        stop_price=_text(order.stop_price),
        filled_quantity=str(order.filled_quantity),
        average_price=_text(order.average_price),
        reduce_only=order.reduce_only,
        intent_id=record.intent_id,
        reason=order.reason,
        created_at=order.created_at,
        updated_at=order.updated_at,
    )


def _alert_view(alert: Alert) -> AlertView:
    return AlertView(
        level=alert.level.value,
        code=alert.code.value,
        message=alert.message,
        at=alert.at,
        symbol=alert.symbol,
        client_order_id=alert.client_order_id,
        intent_id=alert.intent_id,
    )


def _conflict_view(record: ConflictRecord) -> ConflictView:
    resolution = record.resolution
    return ConflictView(
        key=record.key,
        symbol=record.symbol,
        at=record.at,
        conflicts=[
            ConflictItem(kind=c.kind.value, description=c.description) for c in record.conflicts
        ],
        resolution=ResolutionView(
            action=resolution.action.value,
            size_factor=str(resolution.size_factor),
            reasoning=resolution.reasoning,
            confidence=resolution.confidence,
            source=resolution.source,
            fallback_reason=resolution.fallback_reason,
        ),
    )


class _DeskReader:
    """The queries the JSON routes and the pages share, over one desk."""

    def __init__(self, desk: Desk) -> None:
        self.desk = desk

    async def decisions(
        self, symbol: str | None, status: PipelineStatus | None, limit: int
    ) -> list[DecisionView]:
        log = self.desk.decision_log
        records: list[DecisionRecord] = await log.decisions(
            symbol=symbol, status=status, limit=limit
        )
        views = []
        for record in records:
            votes = await log.votes(record.key)
            views.append(
                DecisionView(
                    key=record.key,
                    symbol=record.symbol,
                    bar_time=record.bar_time,
                    strategy=record.strategy,
                    correlation_id=record.correlation_id,
                    action=record.action.value,
                    leading_action=record.leading_action.value,
                    consensus=record.consensus,
                    split=record.split,
                    entry=_text(record.entry),
                    stop=_text(record.stop),
                    target=_text(record.target),
                    reasoning=record.reasoning,
                    status=record.status.value,
                    detail=record.detail,
                    intent_id=record.intent_id,
                    votes=[
                        VoteView(
                            model=vote.model,
                            action=vote.action.value,
                            confidence=vote.confidence,
                            reasoning=vote.reasoning,
                            fallback_reason=vote.fallback_reason,
                            error=vote.error,
                            cost=str(vote.cost),
                        )
                        for vote in votes
                    ],
                )
            )
        return views

    async def conflicts(self, symbol: str | None, limit: int) -> list[ConflictView]:
        records = await self.desk.decision_log.conflicts(symbol=symbol, limit=limit)
        return [_conflict_view(record) for record in records]

    async def alerts(self, level: AlertLevel | None, limit: int) -> list[AlertView]:
        alerts = await self.desk.ledger.alerts(level)
        return [_alert_view(alert) for alert in reversed(alerts[-limit:])]

    async def orders(
        self, symbol: str | None, status: OrderStatus | None, open_only: bool, limit: int
    ) -> list[OrderView]:
        records = await self.desk.ledger.orders(symbol=symbol, open_only=open_only)
        if status is not None:
            records = [r for r in records if r.order.status is status]
        # UNKNOWN first: it is what the operator must look at; then the newest.
        records.sort(key=lambda r: _created(r.order), reverse=True)
        records.sort(key=lambda r: r.order.status is not OrderStatus.UNKNOWN)
        return [_order_view(record) for record in records[:limit]]

    def equity(self, limit: int) -> EquityView:
        messages = self.desk.bus.history(TELEMETRY_TOPIC, limit=limit)
        points = [
            EquityPoint(
                at=datetime.fromisoformat(m.payload["at"]),
                equity=m.payload["equity"],
                exposure=m.payload["exposure"],
                unrealized_pnl=m.payload["unrealized_pnl"],
                realized_pnl=m.payload["realized_pnl"],
                open_positions=m.payload["open_positions"],
            )
            for m in messages
        ]
        return EquityView(points=points)

    async def prices(self, symbol: str, limit: int) -> PriceView:
        messages = self.desk.bus.history(f"desk.signal.{topic_token(symbol)}", limit=limit)
        closes = [
            PricePoint(at=datetime.fromisoformat(m.payload["bar_time"]), close=m.payload["close"])
            for m in messages
        ]
        timeline = _Timeline([m.timestamp for m in messages], [p.at for p in closes])
        ledger = self.desk.ledger
        roles = {r.order.client_order_id: r for r in await ledger.orders(symbol=symbol)}
        markers: list[TradeMarker] = []
        for fill in await ledger.fills(symbol):
            at = timeline.bar_time(fill.timestamp.timestamp())
            if at is None:
                continue
            record = roles.get(fill.client_order_id)
            role = record.role if record is not None else OrderRole.ADOPTED
            is_exit = role in _EXIT_ROLES or (
                role is OrderRole.ADOPTED and record is not None and record.order.reduce_only
            )
            markers.append(
                TradeMarker(
                    at=at,
                    filled_at=fill.timestamp,
                    price=str(fill.price),
                    side=fill.side.value,
                    kind="exit" if is_exit else "entry",
                    role=role.value,
                    quantity=str(fill.quantity),
                    client_order_id=fill.client_order_id,
                )
            )
        return PriceView(symbol=symbol, closes=closes, markers=markers)


class _Timeline:
    """Maps clock time onto the bars' timeline, from when each bar was decided on.

    Fills are stamped with the clock, bars with market time; a replayed market runs faster
    than the clock, so a fill is placed between the two bars decided around it.
    """

    def __init__(self, stamps: list[float], bar_times: list[datetime]) -> None:
        self._stamps = stamps
        self._bars = [t.timestamp() for t in bar_times]

    def bar_time(self, stamp: float) -> datetime | None:
        """Where `stamp` falls on the bars' timeline; None before the first bar shown."""
        if not self._stamps or stamp < self._stamps[0]:
            return None
        index = bisect.bisect_right(self._stamps, stamp)
        if index >= len(self._stamps):
            return datetime.fromtimestamp(self._bars[-1], UTC)
        before, after = self._stamps[index - 1], self._stamps[index]
        share = 0.0 if after <= before else (stamp - before) / (after - before)
        bar = self._bars[index - 1] + share * (self._bars[index] - self._bars[index - 1])
        return datetime.fromtimestamp(bar, UTC)


def _created(order: Order) -> float:
    return order.created_at.timestamp() if order.created_at is not None else 0.0


def _price_chart(view: PriceView) -> LineChart:
    return line_chart(
        [(p.at, Decimal(p.close)) for p in view.closes],
        [
            MarkerInput(
                m.at,
                Decimal(m.price),
                m.kind,
                f"{m.kind} ({m.role}): {m.side} {m.quantity} at {m.price}",
            )
            for m in view.markers
        ],
    )


def _equity_chart(view: EquityView) -> LineChart:
    return line_chart([(p.at, Decimal(p.equity)) for p in view.points])


def mount_desk(app: FastAPI, desk: Desk, *, reload_config: ConfigLoader | None = None) -> None:
    """Mount `desk` on `app`: its routes and pages, and its families on /metrics.

    `reload_config` (re-reading the config file) enables ``POST /desk/config/reload``.
    """
    app.include_router(desk_router(desk, reload_config=reload_config))
    add_metric_source(app, desk_metric_source(desk))


def desk_router(desk: Desk, *, reload_config: ConfigLoader | None = None) -> APIRouter:
    """Routes over `desk`: the JSON API under /desk and the dashboard pages under /ui/desk.

    With `reload_config`, ``POST /desk/config/reload`` re-reads the configuration and
    applies it to the running desk.
    """
    router = APIRouter(tags=["desk"])
    reader = _DeskReader(desk)

    # ------------------------------------------------------------------ JSON

    @router.get("/desk", response_model=DeskView, responses=_ERRORS)
    async def desk_state() -> DeskView:
        """The desk's telemetry, positions, open orders, recent decisions and loop health."""
        snapshot = await desk.snapshot()
        telemetry = snapshot.telemetry
        return DeskView(
            symbols=list(desk.config.symbols),
            bars_processed=snapshot.bars_processed,
            kill_switch=snapshot.kill_switch,
            paused=sorted(snapshot.paused),
            strategies=desk.strategies,
            telemetry=None if telemetry is None else telemetry.as_dict(),
            positions=plain(snapshot.positions),
            open_orders=plain(snapshot.open_orders),
            recent_decisions=plain(snapshot.recent_decisions),
            loops=plain(snapshot.loops),
        )

    @router.get("/desk/decisions", response_model=list[DecisionView], responses=_READ_ERRORS)
    async def decisions(
        symbol: Annotated[str | None, Query(max_length=64)] = None,
        status: PipelineStatus | None = None,
        limit: Limit = 50,
    ) -> list[DecisionView]:
        """Decision runs, newest bar first, each with its model votes."""
        return await reader.decisions(symbol, status, limit)

    @router.get("/desk/conflicts", response_model=list[ConflictView], responses=_READ_ERRORS)
    async def conflicts(
        symbol: Annotated[str | None, Query(max_length=64)] = None, limit: Limit = 50
    ) -> list[ConflictView]:
        """Detected conflicts with their resolution, newest first."""
        return await reader.conflicts(symbol, limit)

    @router.get("/desk/alerts", response_model=list[AlertView], responses=_READ_ERRORS)
    async def alerts(level: AlertLevel | None = None, limit: Limit = 100) -> list[AlertView]:
        """Desk alerts (of one level), newest first."""
        return await reader.alerts(level, limit)

    @router.get("/desk/orders", response_model=list[OrderView], responses=_READ_ERRORS)
    async def orders(
        symbol: Annotated[str | None, Query(max_length=64)] = None,
        status: OrderStatus | None = None,
        open_only: bool = False,
        limit: Limit = 200,
    ) -> list[OrderView]:
        """Recorded orders: UNKNOWN ones first (they need attention), then the newest."""
        return await reader.orders(symbol, status, open_only, limit)

    @router.get("/desk/equity", response_model=EquityView, responses=_READ_ERRORS)
    async def equity(limit: Limit = 500) -> EquityView:
        """The equity series from the telemetry passes, oldest first."""
        return reader.equity(limit)

    @router.get("/desk/prices/{symbol}", response_model=PriceView, responses=_ERRORS)
    async def prices(symbol: Symbol, limit: Limit = 300) -> PriceView:
        """A symbol's recent closes with the entries and exits in their span."""
        return await reader.prices(_known(desk, symbol), limit)

    @router.post("/desk/kill-switch", response_model=DeskControl, responses=_ERRORS)
    async def kill_switch() -> DeskControl:
        """Stop all new trading; the runtime guards close every open position."""
        desk.kill_switch()
        return DeskControl(ok=True, message="kill switch on: no new trades, positions closing")

    @router.post("/desk/risk/reset-drawdown", response_model=DeskControl, responses=_ERRORS)
    async def reset_drawdown() -> DeskControl:
        """Measure the drawdown from the equity now, after a review: lifts a drawdown halt.

        Today's loss still counts (a daily-loss halt lifts the next day). Recorded as a
        WARNING alert with the peak it replaced.
        """
        marks, replaced = await desk.reset_drawdown(reason="operator")
        return DeskControl(
            ok=True,
            message=f"drawdown measured from {marks.peak_equity:.2f}",
            details={
                "peak_equity": str(marks.peak_equity),
                "replaced_peak_equity": None if replaced is None else str(replaced.peak_equity),
            },
        )

    @router.post("/desk/symbols/{symbol}/pause", response_model=DeskControl, responses=_ERRORS)
    async def pause(symbol: Symbol) -> DeskControl:
        """Stop opening new trades on one symbol (open positions stay protected)."""
        desk.pause(_known(desk, symbol))
        return DeskControl(ok=True, message=f"{symbol} paused", details={"symbol": symbol})

    @router.post("/desk/symbols/{symbol}/resume", response_model=DeskControl, responses=_ERRORS)
    async def resume(symbol: Symbol) -> DeskControl:
        """Let a paused symbol trade again."""
        desk.resume(_known(desk, symbol))
        return DeskControl(ok=True, message=f"{symbol} resumed", details={"symbol": symbol})

    @router.post("/desk/positions/{symbol}/close", response_model=DeskControl, responses=_ERRORS)
    async def close(symbol: Symbol) -> DeskControl:
        """Close the symbol's open position with a reduce-only market order."""
        order = await desk.close_position(_known(desk, symbol), reason="operator")
        if order is None:
            return DeskControl(ok=False, message=f"no open position on {symbol}")
        return DeskControl(
            ok=True,
            message=f"closing {symbol}",
            details={"client_order_id": order.client_order_id},
        )

    @router.post(
        "/desk/config/reload",
        response_model=ConfigReloadView,
        responses={**_ERRORS, 409: {"model": ErrorEnvelope}},
    )
    async def reload_config_file() -> ConfigReloadView:
        """Re-read the config file and apply what a running desk can take, all or nothing.

        409 (nothing changed) when any change needs a restart: the details list each such
        field with its old and new value and why. 422 when the file is invalid.
        """
        if reload_config is None:
            raise ApiError(
                404, "not_found", "this desk was started without a config file to reload"
            )
        try:
            # Reading and validating a small TOML file: quick enough for the event loop.
            new = reload_config()
        except ConfigError as error:
            raise ApiError(
                422,
                "invalid_config",
                "the config file is invalid; nothing changed",
                {
                    "problems": [
                        {"field": field, "value": str(value), "expected": expected}
                        for field, value, expected in error.problems
                    ]
                },
            ) from None
        change = await desk.apply_config(new)
        data = change.as_dict()
        if not change.applicable:
            raise ApiError(409, "restart_required", change.summary(), data)
        return ConfigReloadView(summary=change.summary(), **data)

    # ------------------------------------------------------------------ pages

    def page(
        request: Request, runtime: OperatorRuntime, name: str, tab: str, **context: Any
    ) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            name,
            {
                "now": runtime.clock.timestamp(),
                "token_needed": runtime.access.token is not None,
                "section": "desk",
                "desk_tab": tab,
                "symbols": list(desk.config.symbols),
                "poll_seconds": _POLL_SECONDS,
                **context,
            },
        )

    async def overview_context() -> dict[str, Any]:
        snapshot = await desk.snapshot()
        ledger = desk.ledger
        protection: dict[str, dict[str, str | None]] = {}
        for position in snapshot.positions:
            levels: dict[str, str | None] = {}
            for label, cid in (
                ("stop_loss", position.stop_loss_order_id),
                ("take_profit", position.take_profit_order_id),
            ):
                record = await ledger.get_order(cid) if cid else None
                order = record.order if record is not None else None
                levels[label] = None if order is None else _text(order.stop_price or order.price)
                levels[f"{label}_status"] = None if order is None else order.status.value
            protection[position.symbol] = levels
        charts = []
        for symbol in desk.config.symbols:
            view = await reader.prices(symbol, 300)
            charts.append((symbol, view, _price_chart(view)))
        equity = reader.equity(500)
        return {
            "snapshot": snapshot,
            "strategies": desk.strategies,
            "telemetry": snapshot.telemetry,
            "protection": protection,
            "open_orders": await reader.orders(None, None, True, 50),
            "alerts": await reader.alerts(None, 10),
            "equity_chart": _equity_chart(equity),
            "equity_points": equity.points,
            "price_charts": charts,
            "risk": desk.config.risk,
        }

    @router.get("/ui/desk", response_class=HTMLResponse, include_in_schema=False, name=_DESK_PAGE)
    async def desk_page(request: Request, runtime: Runtime) -> HTMLResponse:
        """Positions with their protection, risk, controls, charts, open orders and alerts."""
        return page(request, runtime, "desk.html", "overview", **await overview_context())

    @router.get("/ui/desk/decisions", response_class=HTMLResponse, include_in_schema=False)
    async def decisions_page(request: Request, runtime: Runtime) -> HTMLResponse:
        """Decision runs with their model votes."""
        views = await reader.decisions(None, None, 100)
        return page(request, runtime, "desk_decisions.html", "decisions", decisions=views)

    @router.get("/ui/desk/conflicts", response_class=HTMLResponse, include_in_schema=False)
    async def conflicts_page(request: Request, runtime: Runtime) -> HTMLResponse:
        """Conflicts and how they were resolved."""
        views = await reader.conflicts(None, 100)
        return page(request, runtime, "desk_conflicts.html", "conflicts", conflicts=views)

    @router.get("/ui/desk/orders", response_class=HTMLResponse, include_in_schema=False)
    async def orders_page(request: Request, runtime: Runtime) -> HTMLResponse:
        """Every recorded order, UNKNOWN ones first."""
        views = await reader.orders(None, None, False, 500)
        return page(request, runtime, "desk_orders.html", "orders", orders=views)

    @router.get("/ui/desk/alerts", response_class=HTMLResponse, include_in_schema=False)
    async def alerts_page(request: Request, runtime: Runtime) -> HTMLResponse:
        """Desk alerts, newest first."""
        views = await reader.alerts(None, 500)
        return page(request, runtime, "desk_alerts.html", "alerts", alerts=views)

    return router
