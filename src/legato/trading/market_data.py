"""Market data: bars and trades as values, loaded from recorded CSV files or streamed.

The recorded files live outside the repository, in ../shared/data/market next to the repo
root (`default_market_data_dir()`), or anywhere a caller points at. Every price and size is a
Decimal parsed from the file's text (never through a float), and every timestamp is an aware
UTC datetime. Loaders are lazy iterators; `replay` turns any iterable of bars into an async
stream paced on a `Clock`, so a replay on simulated time runs as fast as the CPU allows.

A file of public trades becomes bars with `bars_from_trades` (or `load_market_bars`, which
reads either kind of file): one bar per interval that has trades, as an exchange's own bars
are made. The recorded XRP-ETH trades give, at one minute, exactly the recorded one-minute
bars of the same days.
"""

from __future__ import annotations

import csv
import math
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import ValidationError
from legato.trading.orders import OrderSide

__all__ = [
    "BAR_COLUMNS",
    "TRADE_COLUMNS",
    "Bar",
    "Trade",
    "bars_from_trades",
    "default_market_data_dir",
    "is_trades_file",
    "load_bars",
    "load_market_bars",
    "load_trades",
    "replay",
    "symbol_from_filename",
]

BAR_COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
TRADE_COLUMNS = ("timestamp", "id", "side", "price", "amount")


@dataclass(frozen=True, slots=True)
class Bar:
    """One OHLCV bar of `symbol`, opening at `timestamp` (aware UTC); `volume` in base units."""

    symbol: str
    timestamp: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal

    def __post_init__(self) -> None:
        if self.timestamp.utcoffset() is None:
            raise ValidationError("timestamp", self.timestamp, "an aware UTC datetime")
        for field in ("open", "high", "low", "close"):
            value = getattr(self, field)
            if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
                raise ValidationError(field, value, "a finite Decimal > 0", symbol=self.symbol)
        if not isinstance(self.volume, Decimal) or not self.volume.is_finite() or self.volume < 0:
            raise ValidationError("volume", self.volume, "a finite Decimal >= 0")
        if self.high < max(self.open, self.close, self.low):
            raise ValidationError(
                "high", self.high, "at least open, close and low", timestamp=self.timestamp
            )
        if self.low > min(self.open, self.close):
            raise ValidationError(
                "low", self.low, "at most open and close", timestamp=self.timestamp
            )

    @property
    def is_up(self) -> bool:
        """True when the bar closed at or above its open."""
        return self.close >= self.open


@dataclass(frozen=True, slots=True)
class Trade:
    """One public trade: `amount` of `symbol` at `price`; `side` is the aggressor's side."""

    symbol: str
    timestamp: datetime
    trade_id: str
    side: OrderSide
    price: Decimal
    amount: Decimal

    def __post_init__(self) -> None:
        if self.timestamp.utcoffset() is None:
            raise ValidationError("timestamp", self.timestamp, "an aware UTC datetime")
        for field in ("price", "amount"):
            value = getattr(self, field)
            if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
                raise ValidationError(field, value, "a finite Decimal > 0", trade_id=self.trade_id)

    def as_bar(self) -> Bar:
        """Return this trade as a one-price bar, so the matching engine can consume trades."""
        return Bar(
            symbol=self.symbol,
            timestamp=self.timestamp,
            open=self.price,
            high=self.price,
            low=self.price,
            close=self.price,
            volume=self.amount,
        )


def default_market_data_dir() -> Path:
    """Return ../shared/data/market relative to the repository root (the recorded files)."""
    # src/legato/trading/market_data.py: parents[3] is the repository root.
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / "market"


def symbol_from_filename(path: Path) -> str:
    """Return the market in a recorded file's name: binance_BTC-USDT-PERP_5m → BTC-USDT-PERP."""
    parts = path.stem.split("_")
    if len(parts) < 3:
        raise ValidationError(
            "path", str(path), "a file named EXCHANGE_MARKET_KIND..., or pass symbol="
        )
    return parts[1]


def _parse_timestamp(text: str, path: Path, line: int) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            "timestamp", text, "an ISO 8601 UTC timestamp", path=str(path), line=line
        ) from None
    if parsed.utcoffset() is None:
        raise ValidationError(
            "timestamp", text, "a timestamp with a UTC offset (Z)", path=str(path), line=line
        )
    return parsed.astimezone(UTC)


def _parse_decimal(field: str, text: str, path: Path, line: int) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ValidationError(field, text, "a decimal number", path=str(path), line=line) from None


def _rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise ValidationError("path", str(path), "an existing CSV file")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != columns:
            raise ValidationError("header", reader.fieldnames, ",".join(columns), path=str(path))
        yield from enumerate(reader, start=2)


def load_bars(path: Path | str, symbol: str | None = None) -> Iterator[Bar]:
    """Yield the bars of a `timestamp,open,high,low,close,volume` CSV file, in file order.

    `symbol` defaults to the market named in the file name (`symbol_from_filename`).
    A relative `path` without a directory is looked up in `default_market_data_dir()`.
    """
    resolved = _resolve(path)
    name = symbol if symbol is not None else symbol_from_filename(resolved)
    for line, row in _rows(resolved, BAR_COLUMNS):
        yield Bar(
            symbol=name,
            timestamp=_parse_timestamp(row["timestamp"], resolved, line),
            open=_parse_decimal("open", row["open"], resolved, line),
            high=_parse_decimal("high", row["high"], resolved, line),
            low=_parse_decimal("low", row["low"], resolved, line),
            close=_parse_decimal("close", row["close"], resolved, line),
            volume=_parse_decimal("volume", row["volume"], resolved, line),
        )


def load_trades(path: Path | str, symbol: str | None = None) -> Iterator[Trade]:
    """Yield the trades of a `timestamp,id,side,price,amount` CSV file, in file order."""
    resolved = _resolve(path)
    name = symbol if symbol is not None else symbol_from_filename(resolved)
    for line, row in _rows(resolved, TRADE_COLUMNS):
        side_text = row["side"]
        if side_text not in ("buy", "sell"):
            raise ValidationError("side", side_text, "buy or sell", path=str(resolved), line=line)
        yield Trade(
            symbol=name,
            timestamp=_parse_timestamp(row["timestamp"], resolved, line),
            trade_id=row["id"],
            side=OrderSide(side_text),
            price=_parse_decimal("price", row["price"], resolved, line),
            amount=_parse_decimal("amount", row["amount"], resolved, line),
        )


def bars_from_trades(trades: Iterable[Trade], seconds: float) -> Iterator[Bar]:
    """Yield one OHLCV bar per `seconds`-long interval that has trades, in time order.

    Intervals are aligned on the UTC epoch (a one-minute bar opens on the minute) and a bar
    carries its interval's opening time; open and close are its first and last trade's price
    (in file order), volume the sum of the amounts. An interval without trades makes no bar,
    as on the exchange's own recorded bars. Trades must come in time order: ValidationError
    names the first that goes back, and `seconds` must be a number > 0.
    """
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 < seconds < math.inf
    ):
        raise ValidationError("seconds", seconds, "a bar length in seconds > 0")
    current: list[Decimal] | None = None  # open, high, low, close, volume
    opening = 0.0
    symbol = ""
    previous: datetime | None = None
    for trade in trades:
        if previous is not None and trade.timestamp < previous:
            raise ValidationError(
                "timestamp",
                trade.timestamp.isoformat(),
                f"not before the trade before it ({previous.isoformat()})",
                trade_id=trade.trade_id,
            )
        previous = trade.timestamp
        start = math.floor(trade.timestamp.timestamp() / seconds) * seconds
        price = trade.price
        if current is not None and start == opening:
            if price > current[1]:
                current[1] = price
            elif price < current[2]:
                current[2] = price
            current[3] = price
            current[4] += trade.amount
            continue
        if current is not None:
            yield _bar(symbol, opening, current)
        current = [price, price, price, price, trade.amount]
        opening, symbol = start, trade.symbol
    if current is not None:
        yield _bar(symbol, opening, current)


def _bar(symbol: str, opening: float, values: list[Decimal]) -> Bar:
    open_, high, low, close, volume = values
    return Bar(symbol, datetime.fromtimestamp(opening, UTC), open_, high, low, close, volume)


def is_trades_file(path: Path | str) -> bool:
    """True for a CSV of public trades, False for one of bars; ValidationError for neither."""
    resolved = _resolve(path)
    if not resolved.is_file():
        raise ValidationError("path", str(resolved), "an existing CSV file")
    with resolved.open(newline="") as handle:
        header = tuple(next(csv.reader(handle), ()))
    if header in (BAR_COLUMNS, TRADE_COLUMNS):
        return header == TRADE_COLUMNS
    raise ValidationError(
        "header",
        list(header),
        f"bars ({','.join(BAR_COLUMNS)}) or trades ({','.join(TRADE_COLUMNS)})",
        path=str(resolved),
    )


def load_market_bars(
    path: Path | str, symbol: str | None = None, *, trade_bar_seconds: float = 60.0
) -> Iterator[Bar]:
    """The bars of a recorded file of bars, or of a file of trades made into bars.

    A file of trades gives one bar per `trade_bar_seconds` with trades (`bars_from_trades`);
    a file of bars is read as it is (`load_bars`). The header says which it is.
    """
    if is_trades_file(path):
        return bars_from_trades(load_trades(path, symbol), trade_bar_seconds)
    return load_bars(path, symbol)


def _resolve(path: Path | str) -> Path:
    candidate = Path(path)
    if candidate.parent == Path(".") and not candidate.exists():
        return default_market_data_dir() / candidate
    return candidate


async def replay(
    bars: Iterable[Bar], clock: Clock | None = None, speed: float = 1.0
) -> AsyncIterator[Bar]:
    """Yield `bars` as an async stream, sleeping on `clock` for the gaps between timestamps.

    The first bar comes at once; each later one after (its timestamp - the previous one's)
    / `speed` seconds of clock time. On a simulated clock the sleeps cost no real time.
    """
    if speed <= 0:
        raise ValidationError("speed", speed, "a number > 0")
    pacing_clock = clock if clock is not None else RealClock()
    previous: datetime | None = None
    for bar in bars:
        if previous is not None:
            gap = (bar.timestamp - previous).total_seconds() / speed
            if gap > 0:
                await pacing_clock.sleep(gap)
        previous = bar.timestamp
        yield bar
