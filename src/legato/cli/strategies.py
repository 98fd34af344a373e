"""`--strategy` and `--param` of `legato backtest` and `legato run`: which strategy trades.

`desk` is the agents and the coordinator (the default); `ema` the EMA(12)/EMA(26) crossover
of the strategy API; `MODULE:NAME` a strategy of the user's, a class (made with the
`--param NAME=VALUE` keyword arguments, each converted to the type of the parameter's
default) or an object with `on_bar(bar, ctx)`, imported from the working directory or
PYTHONPATH (`legato.cli.user_code`). Everything is checked before any work: a bad name or
parameter is refused with the option named, and nothing is written.
"""

from __future__ import annotations

import inspect
from decimal import Decimal, InvalidOperation
from typing import cast

from legato.cli.user_code import import_spec
from legato.kernel.errors import ValidationError
from legato.trading.backtest.ema_crossover import EmaCrossover
from legato.trading.strategy import Strategy, is_strategy

__all__ = ["DESK", "EMA", "STRATEGY_CHOICES", "made_strategies", "parameters"]

DESK, EMA = "desk", "ema"
STRATEGY_CHOICES = (
    "desk (the whole desk), ema (the EMA crossover), or MODULE:NAME for a strategy of yours: "
    "a class (made with the --param keyword arguments) or an object, with on_bar(bar, ctx)"
)


def parameters(texts: list[str] | None, spec: str) -> dict[str, str]:
    """`--param NAME=VALUE`s, by name (each name once); refused with `--strategy desk`."""
    params: dict[str, str] = {}
    for text in texts or ():
        name, equals, value = text.partition("=")
        name = name.strip()
        if not equals or not name.isidentifier():
            raise ValidationError("--param", text, "NAME=VALUE, e.g. quantity=0.5")
        if name in params:
            raise ValidationError("--param", text, f"{name} given once")
        params[name] = value.strip()
    if spec == DESK and params:
        raise ValidationError(
            "--param", texts, "no --param with the desk: its [desk] settings configure it"
        )
    return params


def made_strategies(spec: str, params: dict[str, str], count: int) -> list[Strategy]:
    """`count` strategies `--strategy` names (`spec`, not `desk`), one for each symbol traded.

    A class is made `count` times, with `params`; an object is itself, and serves one
    symbol only (its state would mix two markets').
    """
    found: object
    if spec == EMA:
        return [cast(Strategy, _made(EmaCrossover, spec, params)) for _ in range(count)]
    if ":" not in spec:
        raise ValidationError("--strategy", spec, STRATEGY_CHOICES)
    module, name = import_spec("--strategy", spec, STRATEGY_CHOICES)
    found = getattr(module, name, None)
    if found is None:
        raise ValidationError("--strategy", spec, f"{module.__name__} to define {name!r}")
    if isinstance(found, type):
        made = [_made(found, spec, params) for _ in range(count)]
    elif params:
        raise ValidationError("--param", sorted(params), f"no --param: {name} is not a class")
    elif count > 1:
        raise ValidationError(
            "--strategy",
            spec,
            f"a class, made once for each of the {count} symbols the desk trades ({name} is "
            "one object, whose state would mix their markets)",
        )
    else:
        made = [found]
    if not is_strategy(made[0]):
        raise ValidationError("--strategy", spec, f"{name} to have on_bar(bar, ctx)")
    return cast(list[Strategy], made)


def _made(cls: type, spec: str, params: dict[str, str]) -> object:
    """`cls(**params)`, each value converted to the type of the parameter's default."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None
    arguments = {
        name: _parameter_value(
            name, text, signature.parameters.get(name) if signature is not None else None
        )
        for name, text in params.items()
    }
    try:
        return cls(**arguments)
    except TypeError as error:
        if params:
            raise ValidationError(
                "--param", sorted(params), f"parameters {cls.__name__} takes ({error})"
            ) from error
        raise ValidationError(
            "--strategy", spec, f"a class made with no arguments, or --param ({error})"
        ) from error


def _parameter_value(name: str, text: str, parameter: inspect.Parameter | None) -> object:
    """`text` as the type of the parameter's default (bool, int, float, Decimal or str).

    A parameter without such a default gets true/false, an integer, a decimal or the text,
    whichever reads it first.
    """
    default = parameter.default if parameter is not None else inspect.Parameter.empty
    kind = type(default)
    if kind in (bool, int, float, Decimal, str):
        try:
            return _converted(kind, text)
        except ValueError:
            raise ValidationError(
                f"--param {name}", text, f"a {kind.__name__}, as its default {default!r}"
            ) from None
    for guess in (bool, int, Decimal):
        try:
            return _converted(guess, text)
        except ValueError:
            continue
    return text


def _converted(kind: type, text: str) -> object:
    """`text` as `kind`; ValueError when it does not read as one."""
    if kind is bool:
        if text not in ("true", "false"):
            raise ValueError(text)
        return text == "true"
    if kind is Decimal:
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise ValueError(text) from None
        if not number.is_finite():
            raise ValueError(text)
        return number
    return kind(text)
