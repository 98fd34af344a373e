"""`legato backtest`: the desk, or a strategy, over a recorded file, and its report.

Everything runs on simulated time, as fast as the machine allows, through the production
path: the whole desk (agents, coordinator, risk engine, execution manager, paper venue), or
a strategy (the EMA(12)/EMA(26) crossover, or the user's own, `--strategy MODULE:NAME` made
with `--param` keyword arguments) through the risk engine, the execution manager and the
paper venue. The store is a SQLite file in the output directory, replaced at each run, so
the same inputs always give the same report, byte for byte. A file of public trades is made
into bars first (`--bar` seconds each, one minute by default).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from legato.cli.invoke import fail, options_of
from legato.cli.strategies import DESK, ParamOption, made_strategies, parameters
from legato.kernel.errors import ValidationError
from legato.kernel.logs import configure_logging
from legato.kernel.settings import load_settings
from legato.trading.agents.snapshot import IndicatorSettings
from legato.trading.backtest.desk_backtest import desk_backtest
from legato.trading.backtest.production import production_backtest
from legato.trading.backtest.report import BacktestReport, summary_json
from legato.trading.backtest.report_files import write_report
from legato.trading.backtest.runner import BacktestResult
from legato.trading.desk import configured_strategies
from legato.trading.desk_config import (
    DeskConfig,
    desk_config_from_mapping,
    trading_recorded_market,
)
from legato.trading.market_data import (
    Bar,
    bars_from_trades,
    is_trades_file,
    load_bars,
    load_trades,
    symbol_from_filename,
)
from legato.trading.strategy import Strategy

__all__ = ["backtest"]

STORE_FILE = "backtest.db"
"""The run's SQLite store, in the output directory; removed when the report is written."""
TRADE_BAR_SECONDS = 60.0
"""The bar length a file of trades is made into when `--bar` does not say."""


def backtest(
    ctx: typer.Context,
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="Recorded bars CSV (timestamp,open,high,low,close,volume), or public trades "
            "(timestamp,id,side,price,amount) made into bars of --bar seconds.",
            show_default=False,
        ),
    ],
    symbol: Annotated[
        str | None,
        typer.Option(
            help="The file's market, traded by the backtest (default: the one its name gives, "
            "binance_ETH-BTC_5m_2018-01.csv: ETH-BTC).",
            show_default=False,
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--from", help="First bar time (ISO 8601, UTC if no offset).", show_default=False
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Last bar time, inclusive (ISO 8601, UTC if no offset).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Settings file whose \\[desk] table configures the desk, risk limits and venue "
            "(default: the global --config, else legato.toml if present).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Directory the report is written to.")] = Path(
        "backtest-report"
    ),
    strategy: Annotated[
        str,
        typer.Option(
            help="desk: the whole desk; ema: the EMA(12)/EMA(26) crossover; MODULE:NAME: your "
            "strategy class (made with the --param keyword arguments) or object, with "
            "on_bar(bar, ctx), from a module in the working directory or on PYTHONPATH.",
        ),
    ] = DESK,
    param: ParamOption = None,
    bar: Annotated[
        float | None,
        typer.Option(
            "--bar",
            metavar="SECONDS",
            help="For a file of trades: the length of the bars made from them, in seconds "
            "(default 60). A file of bars keeps its own.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Backtest the desk (or a strategy) on a recorded file; write the report."""
    options = options_of(ctx)
    # As `invoke` does, but without its event loop: the backtest runs its own simulated one.
    configure_logging(
        "debug" if options.debug else "warning", "console", stream=sys.__stderr__ or sys.stderr
    )
    try:
        if out.exists() and not out.is_dir():
            raise ValidationError("--out", str(out), "a directory for the report, or a new path")
        # The user's strategy is imported and made first: a bad one is refused before any work.
        params = parameters(param, strategy)
        plain = None if strategy == DESK else made_strategies(strategy, params, 1)[0]
        settings = load_settings(config if config is not None else options.config_file)
        symbol = symbol if symbol is not None else _named_market(data)
        recorded = _recorded_bars(data, symbol, bar)
        configured = desk_config_from_mapping(dict(settings.desk))
        desk_config = trading_recorded_market(configured, symbol, recorded)
        if symbol not in configured.symbols:
            _note_fitted(desk_config, symbol)
        bars = _slice(recorded, start, end)
        # A strategy of yours the config names for the symbol trades the desk in the agents'
        # place: imported and made here, before anything is written.
        in_desk = (configured_strategies(desk_config) if plain is None else {}).get(symbol)
        label = desk_config.strategy_for(symbol).code if in_desk is not None else strategy
        warm_up = IndicatorSettings().warm_up  # the desk's coordinator uses the defaults
        if plain is None and in_desk is None and len(bars) <= warm_up:
            typer.echo(
                f"the desk's indicators warm up over their first {warm_up} bars and this range "
                f"holds {len(bars)}: no bar will be decided (widen --from/--to)",
                err=True,
            )
        result = _run(plain, desk_config, bars, out, quiet=options.json_output, in_desk=in_desk)
        title = f"{label} on {symbol}, {bars[0].timestamp:%Y-%m-%d %H:%M} to " + (
            f"{bars[-1].timestamp:%Y-%m-%d %H:%M} UTC"
        )
        report = BacktestReport.build(
            title, result.trades, result.equity, result.refusals, result.entries
        )
        written = write_report(report, out)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as error:
        raise fail(options, error) from None
    _summarise(report, written, json_output=options.json_output)


def _recorded_bars(data: Path, symbol: str, bar: float | None) -> list[Bar]:
    """The file's bars, or its trades made into bars of `bar` seconds (said on stderr)."""
    if not is_trades_file(data):
        if bar is not None:
            raise ValidationError("--bar", bar, f"no --bar: {data.name} holds bars already")
        return list(load_bars(data, symbol))
    seconds = TRADE_BAR_SECONDS if bar is None else bar
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValidationError("--bar", bar, "a bar length in seconds > 0")
    bars = list(bars_from_trades(load_trades(data, symbol), seconds))
    if not bars:
        raise ValidationError("--data", str(data), "a file with at least one trade")
    typer.echo(
        f"{data.name} holds trades: made {len(bars):,} bars of {seconds:g} s (--bar)", err=True
    )
    return bars


def _named_market(data: Path) -> str:
    """The market a recorded file's name gives; ValidationError asking for --symbol if none."""
    try:
        return symbol_from_filename(data)
    except ValidationError:
        raise ValidationError(
            "--symbol", None, f"the market of {data.name} (its name does not say)"
        ) from None


def _note_fitted(config: DeskConfig, symbol: str) -> None:
    """Say on stderr what a market the settings do not list is traded on."""
    instrument = config.instrument(symbol)
    typer.echo(
        f"{symbol} is not in desk.instruments: tick {instrument.tick_size:f} and lot "
        f"{instrument.lot_size:f} read off the file; {config.venue.starting_balance:f} "
        f"{config.venue.quote_asset} to start (desk.venue.starting_balance)",
        err=True,
    )


def _moment(field: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(field, text, "an ISO 8601 time, e.g. 2023-01-05T00:00") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _slice(bars: list[Bar], start: str | None, end: str | None) -> list[Bar]:
    """The bars from `start` to `end` (inclusive); at least two, or ValidationError."""
    first, last = _moment("--from", start), _moment("--to", end)
    if first is not None and last is not None and last < first:
        raise ValidationError("--to", end, f"a time at or after --from {start}")
    chosen = [
        bar
        for bar in bars
        if (first is None or bar.timestamp >= first) and (last is None or bar.timestamp <= last)
    ]
    if len(chosen) < 2:
        raise ValidationError(
            "--from/--to", f"{start} to {end}", f"a range holding at least two of {len(bars)} bars"
        )
    return chosen


def _run(
    plain: Strategy | None,
    config: DeskConfig,
    bars: list[Bar],
    out: Path,
    *,
    quiet: bool,
    in_desk: Strategy | None = None,
) -> BacktestResult:
    """Run the desk (`plain` None) or `plain` through the production path over `bars`.

    `in_desk` is the strategy of yours the config names to trade the desk's symbol.
    """
    out.mkdir(parents=True, exist_ok=True)
    store = out / STORE_FILE
    try:
        with _progress(len(bars), quiet=quiet) as advance:
            if plain is None:
                return desk_backtest(config, bars, store=store, progress=advance, strategy=in_desk)
            venue = config.venue
            return production_backtest(
                plain,
                bars,
                config.instrument(bars[0].symbol),
                store=store,
                initial_cash=venue.starting_balance,
                rules=venue.matching_rules(),
                limits=config.risk,
                seed=config.data.seed,
                progress=advance,
            )
    finally:
        store.unlink(missing_ok=True)


class _RateColumn(ProgressColumn):
    """Bars per second of wall time since the run started."""

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        if not elapsed:
            return Text("- bars/s")
        return Text(f"{task.completed / elapsed:,.0f} bars/s")


@contextmanager
def _progress(total: int, *, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A Rich progress bar on stderr (bars done / total, bars/s); silent when `quiet`."""
    bar = Progress(
        TextColumn("backtest"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=quiet,
    )
    task = bar.add_task("backtest", total=total)

    def advance(done: int) -> None:
        bar.update(task, completed=done)

    with bar:
        yield advance


def _summarise(report: BacktestReport, written: dict[str, Path], *, json_output: bool) -> None:
    metrics = report.metrics
    if json_output:
        # What summary.json holds (metrics, refusals, entry fills), and where the files are.
        document = json.loads(summary_json(report))
        document["files"] = {k: str(v) for k, v in written.items()}
        typer.echo(json.dumps(document))
        return
    typer.echo(f"{report.title}")
    typer.echo(
        f"  trades {metrics.trades}  return {metrics.total_return:.2%}  "
        f"max drawdown {metrics.max_drawdown:.2%}  fees {metrics.fees:.2f}"
    )
    if report.refusals:
        # Why a curve goes flat: a desk near its drawdown limit refuses every new position.
        refused = sum(group.count for group in report.refusals)
        most = report.refusals[0]
        typer.echo(
            f"  refused {refused} proposals by the risk engine; most: {most.code} "
            f"({most.count}, from {most.first:%Y-%m-%d %H:%M} UTC)"
        )
    fills = report.entry_fills
    if fills is not None and fills.short:
        # Why a report on a thin market shows slivers: a bar fills an order up to a share of
        # its volume, and the rest of the entry is cancelled once what filled is protected.
        typer.echo(
            f"  {fills.sentence()}: a bar fills one order up to desk.venue.participation "
            "of its volume"
        )
    for path in written.values():
        typer.echo(f"  wrote {path}")
