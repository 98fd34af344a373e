"""`--strategy` and `--param` of `legato backtest` and `legato run`: which strategy trades.

`desk` is the agents and the coordinator (the default); `ema` the EMA(12)/EMA(26) crossover
of the strategy API; `MODULE:NAME` a strategy of the user's, a class (made with the
`--param NAME=VALUE` keyword arguments, each converted to the type of the parameter's
default) or an object with `on_bar(bar, ctx)`, imported from the working directory or
PYTHONPATH (`legato.trading.strategy.find_strategy`). Everything is checked before any
work: a bad name or parameter is refused with the option named, and nothing is written.
"""

from __future__ import annotations

from typing import Annotated

import typer

from legato.kernel.errors import ValidationError
from legato.trading.backtest.ema_crossover import EmaCrossover
from legato.trading.strategy import Strategy, find_strategy, make_strategies

__all__ = ["DESK", "EMA", "STRATEGY_CHOICES", "ParamOption", "made_strategies", "parameters"]

DESK, EMA = "desk", "ema"
STRATEGY_CHOICES = (
    "desk (the whole desk), ema (the EMA crossover), or MODULE:NAME for a strategy of yours: "
    "a class (made with the --param keyword arguments) or an object, with on_bar(bar, ctx)"
)

ParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        metavar="NAME=VALUE",
        help="A keyword argument for the strategy's class, converted to the type of the "
        "parameter's default (repeatable), e.g. --strategy ema --param quantity=0.5.",
        show_default=False,
    ),
]
"""The `--param NAME=VALUE` option, the same for every command that takes `--strategy`."""


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
    found = (
        EmaCrossover
        if spec == EMA
        else find_strategy(spec, field="--strategy", expected=STRATEGY_CHOICES)
    )
    return make_strategies(
        found, params, count, spec=spec, field="--strategy", params_field="--param"
    )
