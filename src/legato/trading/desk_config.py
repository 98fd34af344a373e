"""The desk's configuration: symbols, strategies, risk limits, venue, market data and LLM.

`DeskConfig` is frozen and validated on construction; its defaults are the embedded desk of
`legato run` (one BTC perpetual, the offline rule-based panel, the seeded synthetic market,
the paper venue with 100,000 USDT). `desk_config_from_mapping(table)` builds one from the
`[desk]` table of legato.toml and reports *every* problem at once in a `ConfigError`
(unknown keys included: a misspelt option must not be silently ignored).

The TOML layout::

    [desk]
    telemetry_interval = 5.0
    paused_symbols = []         # traded symbols whose decisions are stored, not acted on

    [[desk.instruments]]
    symbol = "BTC-USDT-PERP"
    base_asset = "BTC"
    quote_asset = "USDT"
    tick_size = "0.1"
    lot_size = "0.001"
    min_notional = "5"
    kind = "perpetual"
    max_leverage = "20"

    [[desk.strategies]]
    name = "consensus"
    symbols = ["BTC-USDT-PERP"]
    risk_per_trade = "0.005"
    resolver = "rules"          # or "llm"

    [[desk.strategies]]         # a strategy of yours instead of the agents
    name = "breakout"
    symbols = ["ETH-USDT-PERP"]
    code = "breakout:Breakout"  # MODULE:NAME, a class with on_bar(bar, ctx)
    params = { window = 24 }    # its keyword arguments

    [desk.risk]                 # any RiskLimits field
    max_daily_loss = "0.03"

    [desk.venue]
    starting_balance = "100000"

    [desk.data]
    source = "synthetic"        # or "csv" with path = "binance_BTC-USDT-PERP_5m_2023-01.csv"

    [desk.llm]
    base_url = "http://127.0.0.1:8080/v1"
    model = "local-model"

Decimals may be written as strings (exact) or numbers.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

from legato.kernel.errors import ConfigError, ValidationError
from legato.trading.agents.llm import LLMSettings
from legato.trading.fees import FeeSchedule
from legato.trading.instruments import Instrument, InstrumentKind
from legato.trading.market_data import Bar
from legato.trading.matching import MatchingRules
from legato.trading.risk import RiskLimits

__all__ = [
    "DataSettings",
    "DataSource",
    "DeskConfig",
    "LLMDeskSettings",
    "ResolverKind",
    "StrategyConfig",
    "VenueSettings",
    "default_instrument",
    "desk_config_from_mapping",
    "fitted_instrument",
    "load_desk_config",
    "trading_recorded_market",
]

_BPS = Decimal(10_000)  # basis points in one

_T = TypeVar("_T")
Problem = tuple[str, Any, str]


def default_instrument() -> Instrument:
    """The embedded desk's market: a BTC perpetual, tick 0.1, lot 0.001, up to 20x."""
    return Instrument(
        symbol="BTC-USDT-PERP",
        base_asset="BTC",
        quote_asset="USDT",
        tick_size=Decimal("0.1"),
        lot_size=Decimal("0.001"),
        min_notional=Decimal(5),
        kind=InstrumentKind.PERPETUAL,
        max_leverage=Decimal(20),
    )


class ResolverKind(enum.Enum):
    """Who settles a strategy's conflicts: the rules, or the LLM (rules as its fallback)."""

    RULES = "rules"
    LLM = "llm"


class DataSource(enum.Enum):
    """Where the desk's bars come from."""

    SYNTHETIC = "synthetic"
    CSV = "csv"


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValidationError(name, value, "a number > 0")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(name, value, "a finite number > 0")


def _share(name: str, value: object, *, upper: float = 1.0) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= upper:
        raise ValidationError(name, value, f"a number in [0, {upper:g}]")


def _decimal_in(name: str, value: object, low: Decimal, high: Decimal | None) -> None:
    if (
        not isinstance(value, Decimal)
        or not value.is_finite()
        or not value > low
        or (high is not None and value > high)
    ):
        upper = "" if high is None else f" and <= {high}"
        raise ValidationError(name, value, f"a Decimal > {low}{upper}")


@dataclass(frozen=True, slots=True)
class StrategyConfig:
    """One strategy: the symbols it trades, its risk budget, and how it decides.

    `risk_per_trade` is the share of equity a trade may lose at its stop (the sizing budget;
    the risk engine's `max_risk_per_trade` still caps it). `min_consensus` is the decision
    agent's threshold (below it a vote is split); `weak_consensus` the level under which an
    agreed vote still counts as a conflict. `stop_atr` and `target_atr` place the stop and
    the target in ATRs. `resolver` settles conflicts. `high_volatility_size` is the share of the
    normal size the rules allow in a high-volatility regime.

    `code` ("MODULE:NAME") names a strategy of the strategy API (`legato.trading.strategy`)
    that trades the symbols instead of the agents: a class, made once per symbol with the
    keyword arguments `params` ((name, text) pairs, each text converted to the type of that
    parameter's default, as `--param` is), or an object for one symbol. The agents' settings
    above do not apply to it (it sizes its own trades); the risk engine's limits do.
    """

    name: str = "consensus"
    symbols: tuple[str, ...] = ("BTC-USDT-PERP",)
    risk_per_trade: Decimal = Decimal("0.005")
    leverage: Decimal = Decimal(1)
    min_consensus: float = 0.5
    weak_consensus: float = 0.6
    stop_atr: Decimal = Decimal(2)
    # 2:1 reward to risk: 3 ATRs would sit exactly on the risk engine's 1.5 minimum, which
    # rounding to the tick grid then undercuts.
    target_atr: Decimal = Decimal(4)
    resolver: ResolverKind = ResolverKind.RULES
    high_volatility_size: Decimal = Decimal("0.5")
    code: str | None = None
    params: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValidationError("name", self.name, "a non-empty strategy name")
        symbols = self.symbols
        if (
            not isinstance(symbols, tuple)
            or not symbols
            or not all(isinstance(symbol, str) and symbol for symbol in symbols)
        ):
            raise ValidationError("symbols", symbols, "a non-empty list of symbols")
        if len(set(symbols)) != len(symbols):
            raise ValidationError("symbols", symbols, "each symbol once")
        _decimal_in("risk_per_trade", self.risk_per_trade, Decimal(0), Decimal("0.1"))
        _decimal_in("leverage", self.leverage, Decimal("0.999"), Decimal(125))
        _share("min_consensus", self.min_consensus)
        _share("weak_consensus", self.weak_consensus)
        _decimal_in("stop_atr", self.stop_atr, Decimal(0), None)
        _decimal_in("target_atr", self.target_atr, Decimal(0), None)
        if not isinstance(self.resolver, ResolverKind):
            raise ValidationError("resolver", self.resolver, "'rules' or 'llm'")
        _decimal_in("high_volatility_size", self.high_volatility_size, Decimal(0), Decimal(1))
        code = self.code
        if code is not None:
            module, colon, name = code.partition(":") if isinstance(code, str) else ("", "", "")
            if not colon or not module.strip() or not name.strip():
                raise ValidationError("code", code, "MODULE:NAME of a strategy of yours")
        params = self.params
        if (
            not isinstance(params, tuple)
            or not all(
                isinstance(pair, tuple)
                and len(pair) == 2
                and isinstance(pair[0], str)
                and pair[0].isidentifier()
                and isinstance(pair[1], str)
                for pair in params
            )
            or len({name for name, _ in params}) != len(params)
        ):
            raise ValidationError("params", params, "keyword arguments by name, each once")
        if params and code is None:
            # Judged with both fields present (see `_section`), and named for the one missing.
            raise ValidationError("code", None, "MODULE:NAME of the strategy params are for")


@dataclass(frozen=True, slots=True)
class VenueSettings:
    """The paper venue: starting balance, fees and slippage (basis points), latency.

    `participation` is the largest share of a bar's volume one order may fill (the rest
    fills on later bars).
    """

    starting_balance: Decimal = Decimal(100_000)
    quote_asset: str = "USDT"
    taker_fee_bps: Decimal = Decimal(4)
    maker_fee_bps: Decimal = Decimal(2)
    slippage_bps: Decimal = Decimal(1)
    participation: Decimal = Decimal("0.25")
    latency: float = 0.0

    def __post_init__(self) -> None:
        _decimal_in("starting_balance", self.starting_balance, Decimal(0), None)
        if not isinstance(self.quote_asset, str) or not self.quote_asset.strip():
            raise ValidationError("quote_asset", self.quote_asset, "an asset name")
        for name in ("taker_fee_bps", "maker_fee_bps", "slippage_bps"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite() or not 0 <= value <= 100:
                raise ValidationError(name, value, "basis points in [0, 100]")
        if not isinstance(self.participation, Decimal) or not 0 < self.participation <= 1:
            raise ValidationError("participation", self.participation, "a Decimal in (0, 1]")
        if isinstance(self.latency, bool) or not isinstance(self.latency, int | float):
            raise ValidationError("latency", self.latency, "seconds >= 0")
        if not 0 <= self.latency < math.inf:
            raise ValidationError("latency", self.latency, "seconds >= 0")

    def matching_rules(self) -> MatchingRules:
        """The paper venue's matching rules these settings give: slippage, participation, fees."""
        return MatchingRules(
            slippage_bps=self.slippage_bps,
            participation=self.participation,
            fees=FeeSchedule(
                maker_rate=self.maker_fee_bps / _BPS, taker_rate=self.taker_fee_bps / _BPS
            ),
        )


@dataclass(frozen=True, slots=True)
class DataSettings:
    """The market feed: the seeded synthetic generator, or a recorded CSV replayed.

    `speed` replays a recorded file (or paces synthetic bars) that many times faster than
    the bars' own spacing; `interval_seconds` is the synthetic bar length, and the length of
    the bars a recorded file of public trades is made into; `bars` caps how
    many bars are fed (None: the whole file, or forever for synthetic data).
    """

    source: DataSource = DataSource.SYNTHETIC
    path: str | None = None
    speed: float = 1.0
    seed: int = 7
    interval_seconds: float = 300.0
    start_price: Decimal = Decimal(20_000)
    bars: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, DataSource):
            raise ValidationError("source", self.source, "'synthetic' or 'csv'")
        if self.source is DataSource.CSV and not self.path:
            raise ValidationError("path", self.path, "a CSV file path when source = 'csv'")
        if self.path is not None and (not isinstance(self.path, str) or not self.path):
            raise ValidationError("path", self.path, "a file path")
        _positive("speed", self.speed)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValidationError("seed", self.seed, "an integer")
        _positive("interval_seconds", self.interval_seconds)
        _decimal_in("start_price", self.start_price, Decimal(0), None)
        if self.bars is not None and (
            isinstance(self.bars, bool) or not isinstance(self.bars, int) or self.bars < 1
        ):
            raise ValidationError("bars", self.bars, "an integer >= 1, or absent for all")


@dataclass(frozen=True, slots=True)
class LLMDeskSettings:
    """The OpenAI-compatible endpoint strategies with `resolver = "llm"` ask.

    `timeout` bounds the whole resolution: a slower answer falls back to the rules.
    """

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-mini"
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 10.0

    def __post_init__(self) -> None:
        _positive("timeout", self.timeout)
        # LLMSettings validates the URL and model; raising here keeps the field names ours.
        self.client_settings()

    def client_settings(self) -> LLMSettings:
        """The `LLMSettings` of the client: one attempt per call, within `timeout`."""
        return LLMSettings(
            base_url=self.base_url,
            model=self.model,
            api_key=self.api_key,
            timeout=self.timeout,
            deadline=self.timeout,
        )


@dataclass(frozen=True, slots=True)
class DeskConfig:
    """Everything the desk runs on; frozen, validated, defaults are the embedded desk.

    Intervals are seconds: how often the reconciler, the runtime guards, the protection
    monitor and the telemetry run. `paused_symbols` are traded symbols the desk starts
    paused (their decisions are made and stored, never acted on; default none), as
    `Desk.pause` does at runtime; a config reload pauses the symbols added to it and
    resumes the ones removed.
    """

    instruments: tuple[Instrument, ...] = field(default_factory=lambda: (default_instrument(),))
    strategies: tuple[StrategyConfig, ...] = field(default_factory=lambda: (StrategyConfig(),))
    risk: RiskLimits = field(default_factory=RiskLimits)
    venue: VenueSettings = field(default_factory=VenueSettings)
    data: DataSettings = field(default_factory=DataSettings)
    llm: LLMDeskSettings = field(default_factory=LLMDeskSettings)
    reconcile_interval: float = 30.0
    guard_interval: float = 1.0
    monitor_interval: float = 1.0
    telemetry_interval: float = 5.0
    paused_symbols: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = _cross_problems(self)
        if problems:
            raise ConfigError(problems, source="desk config")

    @property
    def symbols(self) -> tuple[str, ...]:
        """Every traded symbol, in the order the strategies name them."""
        return tuple(symbol for strategy in self.strategies for symbol in strategy.symbols)

    def instrument(self, symbol: str) -> Instrument:
        """The instrument of `symbol`; ValidationError for a symbol the desk does not list."""
        for instrument in self.instruments:
            if instrument.symbol == symbol:
                return instrument
        known = [instrument.symbol for instrument in self.instruments]
        raise ValidationError("symbol", symbol, f"one of {known}")

    def strategy_for(self, symbol: str) -> StrategyConfig:
        """The strategy that trades `symbol`."""
        for strategy in self.strategies:
            if symbol in strategy.symbols:
                return strategy
        raise ValidationError("symbol", symbol, f"one of {list(self.symbols)}")


def _cross_problems(config: DeskConfig) -> list[Problem]:
    problems: list[Problem] = []
    for name in ("reconcile_interval", "guard_interval", "monitor_interval", "telemetry_interval"):
        try:
            _positive(name, getattr(config, name))
        except ValidationError as error:
            problems.append((name, getattr(config, name), _expected(error)))
    if not config.instruments:
        problems.append(("instruments", [], "at least one instrument"))
    if not config.strategies:
        problems.append(("strategies", [], "at least one strategy"))
    listed = [instrument.symbol for instrument in config.instruments]
    if len(set(listed)) != len(listed):
        problems.append(("instruments", listed, "each symbol once"))
    names = [strategy.name for strategy in config.strategies]
    if len(set(names)) != len(names):
        problems.append(("strategies", names, "unique strategy names"))
    seen: dict[str, str] = {}
    for index, strategy in enumerate(config.strategies):
        for symbol in strategy.symbols:
            where = f"strategies[{index}].symbols"
            if symbol not in listed:
                problems.append((where, symbol, f"a symbol of desk.instruments ({listed})"))
                continue
            if symbol in seen:
                problems.append(
                    (where, symbol, f"a symbol no other strategy trades ({seen[symbol]})")
                )
            seen[symbol] = strategy.name
            instrument = next(i for i in config.instruments if i.symbol == symbol)
            if not instrument.is_perpetual:
                problems.append(
                    (where, symbol, "a perpetual instrument (the desk protects with reduce-only)")
                )
            elif strategy.leverage > instrument.max_leverage:
                problems.append(
                    (
                        f"strategies[{index}].leverage",
                        strategy.leverage,
                        f"at most {symbol}'s max_leverage {instrument.max_leverage}",
                    )
                )
        if _instrument_quotes(config, strategy) - {config.venue.quote_asset}:
            problems.append(
                (
                    f"strategies[{index}].symbols",
                    list(strategy.symbols),
                    f"instruments quoted in the venue's quote asset {config.venue.quote_asset}",
                )
            )
    problems.extend(_paused_problems(config))
    if config.data.source is DataSource.CSV and len(config.symbols) != 1:
        problems.append(("data.source", "csv", "exactly one traded symbol with a recorded file"))
    return problems


def _paused_problems(config: DeskConfig) -> list[Problem]:
    paused = config.paused_symbols
    if not isinstance(paused, tuple) or not all(isinstance(symbol, str) for symbol in paused):
        return [("paused_symbols", paused, "a list of traded symbols")]
    traded = list(config.symbols)
    problems: list[Problem] = [
        ("paused_symbols", symbol, f"a symbol the strategies trade ({traded})")
        for symbol in paused
        if symbol not in traded
    ]
    if len(set(paused)) != len(paused):
        problems.append(("paused_symbols", list(paused), "each symbol once"))
    return problems


def _instrument_quotes(config: DeskConfig, strategy: StrategyConfig) -> set[str]:
    """The quote assets of the instruments `strategy` trades (those the desk lists)."""
    return {i.quote_asset for i in config.instruments if i.symbol in strategy.symbols}


def _expected(error: ValidationError) -> str:
    # ValidationError's message reads "invalid F: got V, expected E"; E is what we list.
    _, _, expected = error.message.partition(", expected ")
    return expected or error.message


# ---------------------------------------------------------------- loading from TOML

Converter = Callable[[Any], Any]


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise TypeError
    try:
        # A TOML float goes through its shortest repr: 0.01 becomes Decimal("0.01").
        return value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise TypeError from None


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError
    return float(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError
    return value


def _to_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _to_strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise TypeError
    return tuple(value)


def _to_params(value: Any) -> tuple[tuple[str, str], ...]:
    # A table of keyword arguments, each value kept as text and converted later to the type
    # of the parameter's default, as `--param NAME=VALUE` is.
    if not isinstance(value, Mapping):
        raise TypeError
    pairs = []
    for name, item in value.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise TypeError
        if isinstance(item, bool):
            text = "true" if item else "false"
        elif isinstance(item, str | int | float | Decimal):
            text = str(item)
        else:
            raise TypeError
        pairs.append((name, text))
    return tuple(pairs)


def _optional(convert: Converter) -> Converter:
    return lambda value: None if value is None else convert(value)


def _enum(kind: type[enum.Enum]) -> Converter:
    def convert(value: Any) -> Any:
        try:
            return kind(value)
        except ValueError:
            raise TypeError from None

    return convert


_DESCRIBE: dict[Converter, str] = {
    _to_decimal: "a decimal number (a string such as '0.01', or a number)",
    _to_float: "a number",
    _to_int: "an integer",
    _to_bool: "true or false",
    _to_str: "a string",
    _to_strings: "a list of strings",
    _to_params: "a table of keyword arguments (strings, numbers or booleans by name)",
}


def _describe(convert: Converter, kind: type[enum.Enum] | None = None) -> str:
    if kind is not None:
        return "one of " + ", ".join(repr(member.value) for member in kind)
    return _DESCRIBE.get(convert, "a valid value")


def _kinds_from_defaults(cls: type[Any]) -> dict[str, tuple[Converter, type[enum.Enum] | None]]:
    kinds: dict[str, tuple[Converter, type[enum.Enum] | None]] = {}
    for item in dataclasses.fields(cls):
        default = item.default
        if isinstance(default, bool):
            kinds[item.name] = (_to_bool, None)
        elif isinstance(default, Decimal):
            kinds[item.name] = (_to_decimal, None)
        elif isinstance(default, float):
            kinds[item.name] = (_to_float, None)
        elif isinstance(default, int):
            kinds[item.name] = (_to_int, None)
        elif isinstance(default, str):
            kinds[item.name] = (_to_str, None)
        elif isinstance(default, enum.Enum):
            kinds[item.name] = (_enum(type(default)), type(default))
        elif isinstance(default, tuple):
            kinds[item.name] = (_to_strings, None)
    return kinds


_INSTRUMENT_KINDS: dict[str, tuple[Converter, type[enum.Enum] | None]] = {
    "symbol": (_to_str, None),
    "base_asset": (_to_str, None),
    "quote_asset": (_to_str, None),
    "tick_size": (_to_decimal, None),
    "lot_size": (_to_decimal, None),
    "min_notional": (_to_decimal, None),
    "kind": (_enum(InstrumentKind), InstrumentKind),
    "max_leverage": (_to_decimal, None),
}
_RISK_KINDS = {
    **_kinds_from_defaults(RiskLimits),
    "max_position_notional": (_optional(_to_decimal), None),
}
_DATA_KINDS = {
    **_kinds_from_defaults(DataSettings),
    "path": (_optional(_to_str), None),
    "bars": (_optional(_to_int), None),
}
_STRATEGY_KINDS = {
    **_kinds_from_defaults(StrategyConfig),
    "code": (_optional(_to_str), None),
    "params": (_to_params, None),
}
_LLM_KINDS = {**_kinds_from_defaults(LLMDeskSettings), "api_key": (_optional(_to_str), None)}
_TOP_LEVEL = ("reconcile_interval", "guard_interval", "monitor_interval", "telemetry_interval")
_SECTIONS = ("instruments", "strategies", "risk", "venue", "data", "llm")
_OPTIONS = (*_TOP_LEVEL, "paused_symbols", *_SECTIONS)


def _section(
    cls: Callable[..., _T],
    where: str,
    raw: object,
    kinds: Mapping[str, tuple[Converter, type[enum.Enum] | None]],
    problems: list[Problem],
) -> _T | None:
    """Build `cls` from `raw`, adding every problem found to `problems` (None if any)."""
    if not isinstance(raw, Mapping):
        problems.append((where, raw, "a table"))
        return None
    values: dict[str, Any] = {}
    before = len(problems)
    for key, value in raw.items():
        if key not in kinds:
            problems.append((f"{where}.{key}", value, f"one of the options {sorted(kinds)}"))
            continue
        convert, kind = kinds[key]
        try:
            values[key] = convert(value)
        except TypeError:
            problems.append((f"{where}.{key}", value, _describe(convert, kind)))
    # Each value alone first, so one bad field does not hide the next one's problem.
    for key, value in values.items():
        if not _singly_checkable(cls, key):
            continue
        try:
            cls(**{key: value})
        except ValidationError as error:
            # A rule between two fields is judged below, with every value present.
            if error.field == key:
                problems.append((f"{where}.{key}", value, _expected(error)))
    if len(problems) > before:
        return None
    try:
        return cls(**values)
    except ValidationError as error:
        problems.append((f"{where}.{error.field}", values.get(error.field), _expected(error)))
    except TypeError:
        missing = sorted(set(_required(cls)) - set(values))
        problems.append((where, sorted(values), f"also the required options {missing}"))
    return None


def _required(cls: Callable[..., Any]) -> list[str]:
    if not dataclasses.is_dataclass(cls):
        return []
    return [
        item.name
        for item in dataclasses.fields(cls)
        if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
    ]


def _singly_checkable(cls: Callable[..., Any], key: str) -> bool:
    # Only when every other field has a default (an instrument's symbol and sizes do not).
    return set(_required(cls)) <= {key}


def _array(
    cls: Callable[..., _T],
    where: str,
    raw: object,
    kinds: Mapping[str, tuple[Converter, type[enum.Enum] | None]],
    problems: list[Problem],
) -> tuple[_T, ...] | None:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        problems.append((where, raw, "an array of tables ([[desk." + where + "]])"))
        return None
    built = [
        _section(cls, f"{where}[{index}]", item, kinds, problems) for index, item in enumerate(raw)
    ]
    if any(item is None for item in built):
        return None
    return tuple(item for item in built if item is not None)


def desk_config_from_mapping(table: Mapping[str, Any]) -> DeskConfig:
    """Build a `DeskConfig` from the `[desk]` table of legato.toml (missing keys: defaults).

    Raises `ConfigError` listing every problem: unknown options, wrong types, values out of
    range, and disagreements between sections (a strategy's symbol with no instrument).
    """
    if not isinstance(table, Mapping):
        raise ConfigError([("desk", table, "a table")], source="desk config")
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "paused_symbols":
            try:
                values[key] = _to_strings(value)
            except TypeError:
                problems.append((key, value, _DESCRIBE[_to_strings]))
        elif key in _TOP_LEVEL:
            try:
                values[key] = _to_float(value)
            except TypeError:
                problems.append((key, value, "a number of seconds"))
        elif key not in _SECTIONS:
            problems.append((key, value, f"one of the options {sorted(_OPTIONS)}"))
    if "instruments" in table:
        values["instruments"] = _array(
            Instrument, "instruments", table["instruments"], _INSTRUMENT_KINDS, problems
        )
    if "strategies" in table:
        values["strategies"] = _array(
            StrategyConfig, "strategies", table["strategies"], _STRATEGY_KINDS, problems
        )
    for key, cls, kinds in (
        ("risk", RiskLimits, _RISK_KINDS),
        ("venue", VenueSettings, _kinds_from_defaults(VenueSettings)),
        ("data", DataSettings, _DATA_KINDS),
        ("llm", LLMDeskSettings, _LLM_KINDS),
    ):
        if key in table:
            values[key] = _section(cls, key, table[key], kinds, problems)
    if problems:
        # Cross-section checks on the parts that did parse add what they can find.
        parsed = {key: value for key, value in values.items() if value is not None}
        try:
            DeskConfig(**parsed)
        except ConfigError as error:
            problems.extend(error.problems)
        raise ConfigError(problems, source="desk config")
    return DeskConfig(**values)


def load_desk_config(path: Path | str) -> DeskConfig:
    """Read the `[desk]` table of the TOML file at `path` (no table: the defaults).

    Raises `ConfigError` for an unreadable file, bad TOML, or any problem in the table.
    """
    source = Path(path)
    try:
        with source.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as error:
        raise ConfigError([("config_file", str(source), f"a readable file ({error})")]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([("config_file", str(source), f"valid TOML ({error})")]) from None
    return desk_config_from_mapping(document.get("desk", {}))


# The finest steps a recording can suggest: a price or size never needs more decimals.
_FINEST_EXPONENT = -12


def _finest_step(values: Iterable[Decimal]) -> Decimal:
    """10 to the power of the most decimals any of `values` is written with (at most 1)."""
    exponent = 0
    for value in values:
        places = value.as_tuple().exponent
        if isinstance(places, int) and places < exponent:
            exponent = places
    return Decimal(1).scaleb(max(exponent, _FINEST_EXPONENT))


def _assets_of(symbol: str) -> tuple[str, str]:
    """Base and quote asset of a market named "BASE-QUOTE", "BASE/QUOTE" or with a PERP suffix."""
    name = symbol.upper().replace("/", "-").replace(":", "-")
    parts = [part for part in name.split("-") if part]
    if parts and parts[-1] == "PERP":
        parts.pop()
    if len(parts) != 2 or parts[0] == parts[1]:
        raise ValidationError(
            "symbol",
            symbol,
            "a market named BASE-QUOTE (ETH-BTC, BTC-USDT-PERP), or one listed in desk.instruments",
        )
    return parts[0], parts[1]


def fitted_instrument(symbol: str, bars: Sequence[Bar], like: Instrument) -> Instrument:
    """An instrument for `symbol`, which no configuration lists, shaped by its recorded `bars`.

    The assets come from the name ("ETH-BTC" is ETH quoted in BTC; a "-PERP" suffix is
    dropped); the tick size is the finest price step the bars are written with, the lot
    size the finest volume step. It trades as `like` does (kind, leverage cap) with no
    minimum notional, which a recording does not tell. Borrowing another market's tick
    size would round an ETH-BTC price of 0.0995 to 0.1 and leave no room for a stop.
    Raises ValidationError for a name that does not split into two assets, or no bars.
    """
    base, quote = _assets_of(symbol)
    if not bars:
        raise ValidationError("bars", [], f"the recorded bars of {symbol}")
    return dataclasses.replace(
        like,
        symbol=symbol,
        base_asset=base,
        quote_asset=quote,
        tick_size=_finest_step(
            price for bar in bars for price in (bar.open, bar.high, bar.low, bar.close)
        ),
        lot_size=_finest_step(bar.volume for bar in bars),
        min_notional=Decimal(0),
    )


def trading_recorded_market(config: DeskConfig, symbol: str, bars: Sequence[Bar]) -> DeskConfig:
    """`config` trading `symbol` alone, the market of one recorded file (`bars`).

    A symbol the config lists keeps its instrument and strategy. Any other is traded by the
    first strategy on an instrument fitted to the recording (`fitted_instrument`), and the
    venue keeps its starting balance in that instrument's quote asset.
    """
    if config.symbols == (symbol,):
        return config
    venue = config.venue
    if symbol in config.symbols:
        strategy = config.strategy_for(symbol)
        instrument = config.instrument(symbol)
    else:
        strategy = config.strategies[0]
        instrument = fitted_instrument(symbol, bars, config.instruments[0])
        venue = dataclasses.replace(venue, quote_asset=instrument.quote_asset)
    return dataclasses.replace(
        config,
        instruments=(instrument,),
        strategies=(dataclasses.replace(strategy, symbols=(symbol,)),),
        venue=venue,
        paused_symbols=tuple(s for s in config.paused_symbols if s == symbol),
    )
