"""`legato run`: the main job, a paper-trading desk with its operator service, until Ctrl-C.

With no arguments and no network: the embedded SQLite store, the in-process bus, the paper
venue fed by the seeded synthetic market, the agents, coordinator, risk engine, execution
manager, reconciler and runtime guards, and the service with the dashboard on
http://127.0.0.1:8600. Running it again resumes from the store: the desk reconciles, and
finishes the executions a stop cut short (while the bars flow: an entry fills only on a
bar) before it decides anything new. `--bars N` or the end of a recorded file ends the run
as Ctrl-C does: a decision run still waiting for a fill gets the stop's grace and resumes
at the next start.

SIGHUP (``kill -HUP <pid>``) or ``POST /desk/config/reload`` re-reads the config file (with
the same command-line overrides) and applies what a running desk can take (risk limits,
strategy thresholds, loop intervals); a change that needs a restart is refused as a whole,
each field named with its old and new value and why.

Every bar's decision runs as a durable ``legato.desk.decide`` task on the store, by a worker
inside this process (see `legato.trading.desk_tasks`): ``legato tasks`` and the dashboard's
task pages list them while the desk runs.

`--strategy MODULE:NAME` (or `ema`) trades every symbol with a strategy of the strategy API
instead of the agents: the same class `legato backtest --strategy` runs, made once per
symbol with the `--param` keyword arguments. Each trade it asks for is claimed in the
decision log before anything is sent, as an agents' decision is, then goes through the risk
engine and the execution manager; the strategy's own state starts afresh at each start,
and what the account holds comes from the store.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from legato.cli.exit_codes import ExitCode
from legato.cli.invoke import invoke
from legato.cli.options import CliOptions
from legato.cli.output import Output
from legato.cli.strategies import DESK, ParamOption, made_strategies, parameters
from legato.kernel.clock import RealClock
from legato.kernel.errors import ConfigError, ValidationError
from legato.kernel.logs import get_logger
from legato.kernel.settings import LegatoSettings, redact_url
from legato.service.routes.desk import mount_desk
from legato.service.runtime import TOKEN_ENV
from legato.service.server import Service
from legato.trading.desk import Desk, DeskSnapshot
from legato.trading.desk_config import (
    DataSource,
    DeskConfig,
    desk_config_from_mapping,
    trading_recorded_market,
)
from legato.trading.desk_tasks import Scheduling
from legato.trading.market_data import is_trades_file, load_market_bars, symbol_from_filename
from legato.trading.strategy import Strategy

__all__ = ["run"]

# Without a speed in the config or on the command line, a five-minute bar every second: a
# new user sees the desk trade within a minute instead of waiting five minutes per bar.
DEFAULT_SPEED = 300.0


def run(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Replay this recorded bars CSV (timestamp,open,high,low,close,volume) instead "
            "of the synthetic market.",
            show_default=False,
        ),
    ] = None,
    symbol: Annotated[
        str | None,
        typer.Option(
            help="With --data: the file's market (default: the one its name gives, else the "
            "desk's first symbol)."
        ),
    ] = None,
    speed: Annotated[
        float | None,
        typer.Option(
            help=f"Replay this many times faster than the bars' spacing (default {DEFAULT_SPEED:g}"
            ": a five-minute bar each second).",
            min=0.001,
            show_default=False,
        ),
    ] = None,
    bars: Annotated[
        int | None,
        typer.Option(help="Stop after this many bars (default: run until Ctrl-C).", min=1),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Service port (default: service.port, 8600).", min=0, max=65535),
    ] = None,
    progress: Annotated[float, typer.Option(help="Seconds between progress lines.", min=0.1)] = 5.0,
    strategy: Annotated[
        str,
        typer.Option(
            help="desk: the agents decide; ema: the EMA(12)/EMA(26) crossover; MODULE:NAME: "
            "your strategy class (made once per symbol, with the --param keyword arguments), "
            "as legato backtest --strategy runs it.",
        ),
    ] = DESK,
    param: ParamOption = None,
) -> None:
    """Run the paper-trading desk and its dashboard (Ctrl-C stops; run again to resume)."""

    async def work(options: CliOptions, output: Output) -> ExitCode | None:
        settings = options.settings()
        config = _desk_config(settings, data=data, symbol=symbol, speed=speed, bars=bars)
        # The user's strategy is imported and made before the store is opened.
        params = parameters(param, strategy)
        strategies = (
            {}
            if strategy == DESK
            else dict(
                zip(
                    config.symbols,
                    made_strategies(strategy, params, len(config.symbols)),
                    strict=True,
                )
            )
        )

        def reload() -> DeskConfig:
            # The file as it is now, with this run's command-line overrides on top.
            return _desk_config(
                options.settings(), data=data, symbol=symbol, speed=speed, bars=bars
            )

        return await _run_desk(
            options,
            settings,
            config,
            port=port,
            progress=progress,
            reload_config=reload,
            strategies=strategies,
        )

    invoke(ctx, work)


def _desk_config(
    settings: LegatoSettings,
    *,
    data: Path | None,
    symbol: str | None,
    speed: float | None,
    bars: int | None,
) -> DeskConfig:
    """The `[desk]` table of the settings with the command line's overrides applied."""
    table: dict[str, Any] = {key: value for key, value in settings.desk.items()}
    data_table: dict[str, Any] = dict(table.get("data", {}))
    if data is not None:
        data_table["source"] = DataSource.CSV.value
        data_table["path"] = str(data)
    if speed is not None:
        data_table["speed"] = speed
    data_table.setdefault("speed", DEFAULT_SPEED)
    if bars is not None:
        data_table["bars"] = bars
    table["data"] = data_table
    config = desk_config_from_mapping(table)
    if data is None:
        return config
    # A file that is missing, or holds neither bars nor trades, is refused here: before the
    # store is opened, so a bad --data changes nothing.
    is_trades_file(data)
    market = symbol
    if market is None:
        try:
            market = symbol_from_filename(data)
        except ValidationError:
            return config  # a name that says nothing: the desk's first symbol trades it
    if market not in config.symbols:
        # One recorded file feeds one market: trade it as the desk's only symbol.
        recorded = load_market_bars(data, market, trade_bar_seconds=config.data.interval_seconds)
        config = trading_recorded_market(config, market, list(recorded))
    return config


async def _run_desk(
    options: CliOptions,
    settings: LegatoSettings,
    config: DeskConfig,
    *,
    port: int | None,
    progress: float,
    reload_config: Callable[[], DeskConfig],
    strategies: Mapping[str, Strategy],
) -> ExitCode | None:
    # Each bar's decision is a durable `legato.desk.decide` task: `legato tasks` and the
    # dashboard's task pages show every one, with its history.
    desk = Desk(
        config,
        store_url=settings.store.url,
        scheduling=Scheduling.ORCHESTRATOR,
        strategies=strategies,
        # `--bars N` or the end of a recorded file ends the run as Ctrl-C would: an entry
        # that no bar will fill resumes at the next start instead of holding the process.
        stop_at_end_of_data=True,
    )
    await desk.start()
    token = options.api_token(settings)
    generated = token is None
    if token is None:
        # Controls change state and always need a token; one per run keeps them usable.
        token = secrets.token_urlsafe(18)
    service = Service(
        settings,
        bus=desk.bus,
        port=port,
        environ={**os.environ, TOKEN_ENV: token},
    )
    mount_desk(service.app, desk, reload_config=reload_config)
    hangup = asyncio.Event()

    def stop() -> None:
        desk.request_stop()
        service.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, hangup.set)
    _say(f"legato run: paper-trading desk on {', '.join(config.symbols)}")
    _say(f"  store    {redact_url(settings.store.url)}")
    _say(f"  market   {_describe_data(config)}")
    for traded, name in desk.strategies.items():
        _say(f"  strategy {name} trades {traded} (instead of the agents)")
    venue = config.venue
    _say(
        f"  venue    paper, {venue.starting_balance} {venue.quote_asset}, taker fee "
        f"{venue.taker_fee_bps} bps, slippage {venue.slippage_bps} bps"
    )
    resumed = _describe_resume(await desk.snapshot(), _last_bar(desk))
    if resumed is not None:
        _say(f"  resumed  {resumed}")
    try:
        async with asyncio.TaskGroup() as group:
            served = group.create_task(service.run(), name="legato-run-service")
            await _wait_listening(service, served)
            base = f"http://{settings.service.host}:{service.port}"
            _say(f"  dashboard {base}/   API {base}/docs   desk {base}/desk")
            if generated:
                _say(f"  token    {token}  (for controls; set service.api_token to choose one)")
            _say("  Ctrl-C stops cleanly; running again resumes from the store.")
            _say("  kill -HUP the process to reload the config file")
            reporter = group.create_task(_report(desk, progress), name="legato-run-progress")
            reloader = group.create_task(
                _reload_on_hangup(desk, reload_config, hangup), name="legato-run-reload"
            )
            try:
                fed = await desk.run()
            finally:
                reporter.cancel()
                reloader.cancel()
                service.stop()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    _say(f"legato run: stopped after {fed} bars. {_summary(desk)}")
    return None


def _last_bar(desk: Desk) -> datetime | None:
    """The newest bar the (restored) venue had matched: a recorded file carries on after it."""
    times = [desk.venue.last_bar_time(symbol) for symbol in desk.config.symbols]
    return max((at for at in times if at is not None), default=None)


def _describe_resume(snapshot: DeskSnapshot, last_bar: datetime | None) -> str | None:
    """What a desk started on a store with history carried over, or None for a fresh store.

    By the time the snapshot is taken the desk has reconciled with the venue and resumed its
    unfinished executions, so these are the positions and orders it trades on from now.
    `last_bar` is the newest bar the venue had matched.
    """
    if not (snapshot.positions or snapshot.open_orders or snapshot.recent_decisions or last_bar):
        return None
    positions = [
        f"{p.symbol} {p.side.value} {p.quantity}"
        + ("" if p.stop_loss_order_id else " (no stop-loss yet)")
        for p in snapshot.positions
    ]
    held = f"{len(positions)} open position{'' if len(positions) == 1 else 's'}"
    if positions:
        held += f" ({', '.join(positions)})"
    orders = len(snapshot.open_orders)
    parts = [held, f"{orders} working order{'' if orders == 1 else 's'}"]
    if snapshot.recent_decisions:
        last = max(record.bar_time for record in snapshot.recent_decisions)
        parts.append(f"last decided bar {last:%Y-%m-%d %H:%M} UTC")
    if last_bar is not None:
        parts.append(f"last bar matched {last_bar:%Y-%m-%d %H:%M} UTC")
    return "from the store, reconciled with the venue: " + ", ".join(parts)


async def _wait_listening(service: Service, served: asyncio.Task[None]) -> None:
    # The service may fail to start (say, the port is taken): its error ends the wait.
    listening = asyncio.ensure_future(service.listening.wait())
    try:
        await asyncio.wait({listening, served}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        listening.cancel()
    if served.done():
        served.result()


async def _reload_on_hangup(
    desk: Desk, reload_config: Callable[[], DeskConfig], hangup: asyncio.Event
) -> None:
    log = get_logger("legato.cli.run")
    while True:
        await hangup.wait()
        hangup.clear()
        try:
            new = reload_config()
        except ConfigError as error:
            log.error("config_reload_invalid", problems=error.problems)
            _say(
                f"legato run: config reload refused, the file is invalid; nothing changed\n{error}"
            )
            continue
        change = await desk.apply_config(new)
        if change.applied:
            log.info("config_reloaded", changes=[c.describe() for c in change.safe])
        else:
            log.warning(
                "config_reload_refused",
                refused=[c.describe() for c in change.refused],
                held_back=[c.describe() for c in change.safe],
            )
        _say(f"legato run: config reload {change.summary()}")


async def _report(desk: Desk, every: float) -> None:
    clock = RealClock()
    while True:
        await clock.sleep(every)
        _say(f"  {desk.bars_processed} bars  {_summary(desk)}")


def _summary(desk: Desk) -> str:
    telemetry = desk.telemetry
    if telemetry is None:
        return "no telemetry yet"
    return (
        f"equity {telemetry.equity:.2f}  open positions {telemetry.open_positions}  "
        f"realized {telemetry.realized_pnl:.2f}  unrealized {telemetry.unrealized_pnl:.2f}  "
        f"fees {telemetry.fees_paid:.2f}  state {telemetry.trading_state.value}"
    )


def _describe_data(config: DeskConfig) -> str:
    data = config.data
    if data.source is DataSource.CSV:
        assert data.path is not None  # DataSettings requires it for csv
        if is_trades_file(data.path):
            return (
                f"{data.interval_seconds:g}s bars made from the recorded trades in {data.path} "
                "([desk.data] interval_seconds), "
                f"{data.speed:g}x"
            )
        return f"recorded bars from {data.path}, {data.speed:g}x"
    return f"synthetic (seed {data.seed}), {data.interval_seconds:g}s bars at {data.speed:g}x" + (
        "" if data.bars is None else f", {data.bars} bars"
    )


def _say(line: str) -> None:
    typer.echo(line)
