"""`legato backtest`: the report from a recorded file, the same bytes every time, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from legato.cli.app import app
from legato.cli.backtest import STORE_FILE
from legato.cli.strategies import made_strategies
from legato.kernel.errors import ValidationError
from legato.trading.backtest.report_files import REPORT_FILES
from legato.trading.market_data import default_market_data_dir

RECORDED = default_market_data_dir() / "binance_BTC-USDT-PERP_5m_2023-01.csv"
SYMBOL = "BTC-USDT-PERP"
# About 1,200 five-minute bars of the recorded file: enough for the EMA crossover to trade.
SLICE = ["--from", "2023-01-03T00:00", "--to", "2023-01-07T04:00"]


def backtest_file(data: Path, out: Path, *args: str) -> list[str]:
    return ["backtest", "--data", str(data), "--out", str(out), *args]


def backtest(out: Path, *args: str) -> list[str]:
    return backtest_file(RECORDED, out, "--symbol", SYMBOL, *args)


def test_the_ema_backtest_writes_the_same_report_byte_for_byte(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(app, backtest(tmp_path / "a", "--strategy", "ema", *SLICE))
    second = runner.invoke(app, backtest(tmp_path / "b", "--strategy", "ema", *SLICE))
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    for name in REPORT_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # The run's store is temporary: a second run never resumes the first.
    assert not (tmp_path / "a" / STORE_FILE).exists()
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["metrics"]["trades"] > 0
    assert summary["metrics"]["start"].startswith("2023-01-03T00:00")


def test_from_and_to_slice_the_file_by_time(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        backtest(tmp_path, "--strategy", "ema", "--from", "2023-01-04", "--to", "2023-01-05"),
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "equity.csv").read_text().splitlines()
    assert lines[1].startswith("2023-01-04T00:00:00")
    assert lines[-1].startswith("2023-01-05T00:00:00")
    assert len(lines) == 1 + 24 * 12 + 1


def test_a_bad_time_is_refused_with_the_option_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, backtest(tmp_path, "--from", "last tuesday"))
    assert result.exit_code != 0
    assert "--from" in result.output
    assert "ISO 8601" in result.output
    assert not (tmp_path / "summary.json").exists()


def test_the_desk_backtest_runs_as_a_real_process(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "legato.cli",
            "--json",
            *backtest(out, "--to", "2023-01-03T06:00"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert sorted(Path(path).name for path in printed["files"].values()) == sorted(REPORT_FILES)
    assert printed["metrics"]["end"].startswith("2023-01-03T06:00")
    assert all((out / name).stat().st_size > 0 for name in REPORT_FILES)
    # The summary's other parts too, as summary.json has them.
    summary = json.loads((out / "summary.json").read_text())
    assert {key: printed[key] for key in summary} == summary


def test_a_market_the_settings_do_not_list_trades_on_its_own_tick_size(tmp_path: Path) -> None:
    # ETH-BTC trades near 0.1 BTC: the configured BTC perpetual's tick of 0.1 would round
    # every stop onto the price itself, and the crossover's first proposal was refused.
    recorded = default_market_data_dir() / "binance_ETH-BTC_5m_2018-01.csv"
    result = CliRunner().invoke(
        app,
        [
            "backtest",
            *("--data", str(recorded), "--symbol", "ETH-BTC", "--strategy", "ema"),
            *("--out", str(tmp_path), "--to", "2018-01-14T00:00"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "ETH-BTC is not in desk.instruments: tick 0.00000001" in result.output
    assert "BTC to start" in result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["metrics"]["trades"] > 0


def test_a_strategy_error_is_reported_as_itself_not_as_a_task_group(tmp_path: Path) -> None:
    # ETH-BTC configured with a tick of 0.1: the crossover's stop-loss rounds onto 0.1, above
    # the entry, and the proposal is refused while the bars replay. The operator must read
    # that error, not "unhandled errors in a TaskGroup".
    config = tmp_path / "legato.toml"
    config.write_text(
        "[[desk.instruments]]\n"
        'symbol = "ETH-BTC"\nbase_asset = "ETH"\nquote_asset = "BTC"\n'
        'tick_size = "0.1"\nlot_size = "0.001"\nkind = "perpetual"\nmax_leverage = "5"\n'
        '[[desk.strategies]]\nname = "consensus"\nsymbols = ["ETH-BTC"]\n'
        '[desk.venue]\nquote_asset = "BTC"\n'
    )
    recorded = default_market_data_dir() / "binance_ETH-BTC_5m_2018-01.csv"
    result = CliRunner().invoke(
        app,
        [
            *("--config", str(config), "backtest"),
            *("--data", str(recorded), "--symbol", "ETH-BTC", "--strategy", "ema"),
            *("--out", str(tmp_path / "out"), "--to", "2018-01-14T00:00"),
        ],
    )
    assert result.exit_code != 0
    assert "TaskGroup" not in result.output
    assert "stop_loss" in result.output


def test_the_summary_says_what_the_risk_engine_refused(tmp_path: Path) -> None:
    # The crossover loses three times in a row on 3 January; the cooldown refuses its next
    # entries. The report says so, or a user sees trades missing with no reason.
    result = CliRunner().invoke(app, backtest(tmp_path, "--strategy", "ema", *SLICE))
    assert result.exit_code == 0, result.output
    assert "proposals by the risk engine; most: cooldown" in result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["refusals"][0]["code"] == "cooldown"
    assert summary["refusals"][0]["count"] > 0
    assert "## Refused by the risk engine" in (tmp_path / "summary.md").read_text()
    # A liquid market fills every entry in full: nothing to say about it.
    fills = summary["entry_fills"]
    assert fills["entries"] == fills["full"] > 0
    assert "filled less than asked" not in result.output


def test_the_summary_says_when_a_thin_market_filled_entries_in_part(tmp_path: Path) -> None:
    # XRP-ETH with 100,000 ETH to start: the desk asks for tens of millions of XRP, and a
    # one-minute bar fills a few hundred. Without a word, the report's -0.00% reads as a bug.
    recorded = default_market_data_dir() / "binance_XRP-ETH_1m_2019-10.csv"
    result = CliRunner().invoke(
        app,
        backtest_file(recorded, tmp_path, "--to", "2019-10-11T08:00"),
    )
    assert result.exit_code == 0, result.output
    assert "entry orders filled less than asked" in result.output
    assert "desk.venue.participation" in result.output
    fills = json.loads((tmp_path / "summary.json").read_text())["entry_fills"]
    assert fills["partial"] > 0
    assert 0 < fills["median_partial_share"] < 0.001
    assert "## Entries filled less than asked" in (tmp_path / "summary.md").read_text()


def test_the_market_defaults_to_the_one_the_file_name_gives(tmp_path: Path) -> None:
    recorded = default_market_data_dir() / "binance_ETH-BTC_5m_2018-01.csv"
    named = CliRunner().invoke(
        app,
        [
            *("backtest", "--data", str(recorded), "--strategy", "ema"),
            *("--out", str(tmp_path / "a"), "--to", "2018-01-12T00:00"),
        ],
    )
    assert named.exit_code == 0, named.output
    assert "ema on ETH-BTC" in named.output
    unnamed = tmp_path / "bars.csv"
    unnamed.write_bytes(recorded.read_bytes())
    refused = CliRunner().invoke(app, ["backtest", "--data", str(unnamed)])
    assert refused.exit_code != 0
    assert "--symbol" in refused.output
    assert "bars.csv" in refused.output


def test_a_file_of_trades_is_made_into_bars_and_gives_the_bar_files_report(
    tmp_path: Path,
) -> None:
    # The recorded XRP-ETH trades, made into one-minute bars, are the recorded one-minute bars:
    # the same backtest over either file writes the same summary, byte for byte.
    directory = default_market_data_dir()
    window = ("--to", "2019-10-11T06:00")
    trades = CliRunner().invoke(
        app,
        backtest_file(
            directory / "binance_XRP-ETH_trades_2019-10.csv", tmp_path / "trades", *window
        ),
    )
    assert trades.exit_code == 0, trades.output
    assert "holds trades: made 2,469 bars of 60 s (--bar)" in trades.output
    bars = CliRunner().invoke(
        app,
        backtest_file(directory / "binance_XRP-ETH_1m_2019-10.csv", tmp_path / "bars", *window),
    )
    assert bars.exit_code == 0, bars.output
    for name in ("summary.json", "trades.csv", "equity.csv"):
        assert (tmp_path / "trades" / name).read_bytes() == (tmp_path / "bars" / name).read_bytes()


def test_bar_length_applies_to_trades_only_and_must_be_positive(tmp_path: Path) -> None:
    bars = default_market_data_dir() / "binance_XRP-ETH_1m_2019-10.csv"
    trades = default_market_data_dir() / "binance_ETH-USDT-PERP_trades_2023-02.csv"
    runner = CliRunner()
    on_bars = runner.invoke(app, backtest_file(bars, tmp_path / "a", "--bar", "5"))
    assert on_bars.exit_code != 0
    assert "--bar" in on_bars.output
    assert "holds bars already" in on_bars.output
    zero = runner.invoke(app, backtest_file(trades, tmp_path / "b", "--bar", "0"))
    assert zero.exit_code != 0
    assert "a bar length in seconds > 0" in zero.output
    seconds = runner.invoke(
        app, backtest_file(trades, tmp_path / "c", "--bar", "1", "--strategy", "ema")
    )
    assert seconds.exit_code == 0, seconds.output
    assert "made 199 bars of 1 s" in seconds.output
    # One equity point per bar made: the header and 199 rows.
    assert len((tmp_path / "c" / "equity.csv").read_text().splitlines()) == 200


def test_an_out_path_that_is_a_file_is_refused_before_the_run(tmp_path: Path) -> None:
    taken = tmp_path / "report"
    taken.write_text("not a directory")
    result = CliRunner().invoke(app, backtest(taken, *SLICE))
    assert result.exit_code != 0
    assert "invalid --out" in result.output
    assert "a directory for the report" in result.output
    assert taken.read_text() == "not a directory"


def test_a_range_shorter_than_the_warm_up_says_why_nothing_was_decided(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, backtest(tmp_path, "--from", "2023-01-05T00:00", "--to", "2023-01-05T02:00")
    )
    assert result.exit_code == 0, result.output
    assert "warm up over their first 70 bars and this range holds 25" in result.output
    assert json.loads((tmp_path / "summary.json").read_text())["metrics"]["trades"] == 0


MY_EMA = """
from legato.trading.backtest.ema_crossover import EmaCrossover

Mine = EmaCrossover
"""

BUY_AND_HOLD = """
from decimal import Decimal


class BuyAndHold:
    def on_bar(self, bar, ctx):
        if ctx.is_flat and not ctx.pending:
            ctx.buy(Decimal("0.5"), stop_loss=bar.close * Decimal("0.9"))


class NeedsArguments:
    def __init__(self, quantity):
        self.quantity = quantity

    def on_bar(self, bar, ctx):
        pass


class Fails:
    def __init__(self):
        self.bars = 0

    def on_bar(self, bar, ctx):
        self.bars += 1
        if self.bars == 3:
            return 1 / 0


not_a_strategy = 42
"""


@pytest.fixture
def user_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, str], None]]:
    """Writes a module of the user's into the working directory, where --strategy looks.

    The import path and the imported modules are put back afterwards: no test sees another's.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    written: list[str] = []

    def write(name: str, code: str) -> None:
        (tmp_path / f"{name}.py").write_text(code)
        written.append(name)

    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_a_strategy_of_your_own_runs_from_its_module_like_the_shipped_one(
    tmp_path: Path, user_module: Callable[[str, str], None]
) -> None:
    # The shipped crossover named through a user's module: the same production path, so the
    # same trades, equity and metrics, byte for byte; only the title names the strategy.
    user_module("my_ema", MY_EMA)
    runner = CliRunner()
    shipped = runner.invoke(app, backtest(tmp_path / "a", "--strategy", "ema", *SLICE))
    mine = runner.invoke(app, backtest(tmp_path / "b", "--strategy", "my_ema:Mine", *SLICE))
    assert shipped.exit_code == 0, shipped.output
    assert mine.exit_code == 0, mine.output
    assert "my_ema:Mine on BTC-USDT-PERP" in mine.output
    for name in ("trades.csv", "equity.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    first = json.loads((tmp_path / "a" / "summary.json").read_text())
    second = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert first["metrics"] == second["metrics"]
    assert first["metrics"]["trades"] > 0


def test_your_strategy_goes_through_the_risk_engine_and_bad_names_are_refused(
    tmp_path: Path, user_module: Callable[[str, str], None]
) -> None:
    user_module("mine", BUY_AND_HOLD)
    runner = CliRunner()
    held = runner.invoke(app, backtest(tmp_path / "ok", "--strategy", "mine:BuyAndHold", *SLICE))
    assert held.exit_code == 0, held.output
    # No take-profit: the risk engine's reward-to-risk rule (at least 1.5) refuses every
    # proposal, as it would the desk's, and the report says so.
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert summary["metrics"]["trades"] == 0
    assert [group["code"] for group in summary["refusals"]] == ["reward_to_risk"]
    # A parameter without a default: the value is read as it looks (here a decimal).
    given = runner.invoke(
        app,
        backtest(
            tmp_path / "given",
            "--strategy",
            "mine:NeedsArguments",
            "--param",
            "quantity=0.5",
            *SLICE,
        ),
    )
    assert given.exit_code == 0, given.output
    failing = runner.invoke(app, backtest(tmp_path / "no", "--strategy", "mine:Fails", *SLICE))
    assert failing.exit_code != 0
    assert (
        "ZeroDivisionError: division by zero (raised by the strategy on the bar of "
        "2023-01-03 00:10:00+00:00)" in failing.output
    )
    for spec, expected in [
        ("nosuchmodule:X", "an importable module"),
        ("mine:Missing", "mine to define 'Missing'"),
        ("mine:not_a_strategy", "not_a_strategy to have on_bar(bar, ctx)"),
        ("mine:NeedsArguments", "a class made with no arguments"),
        ("momentum", "MODULE:NAME"),
    ]:
        out = tmp_path / spec.replace(":", "_")
        refused = runner.invoke(app, backtest(out, "--strategy", spec, *SLICE))
        assert refused.exit_code != 0, spec
        assert "invalid --strategy" in refused.output, refused.output
        assert expected in refused.output, refused.output
        assert not out.exists()  # refused before anything was written


def test_the_getting_started_strategy_runs_as_the_page_says(
    tmp_path: Path, user_module: Callable[[str, str], None]
) -> None:
    # docs/getting-started.md shows a strategy of your own and its figures: both must hold.
    page = (Path(__file__).resolve().parents[2] / "docs" / "getting-started.md").read_text()
    user_module(
        "breakout", page.split("Put this in `breakout.py`:\n\n```python\n", 1)[1].split("```")[0]
    )
    result = CliRunner().invoke(
        app, backtest(tmp_path / "report", "--strategy", "breakout:Breakout")
    )
    assert result.exit_code == 0, result.output
    assert "trades 38  return 0.86%" in result.output
    assert "38 trades (+0.86%), none of them refused" in page
    assert "refused" not in result.output


def test_params_make_the_strategy_converted_to_the_types_of_its_defaults(
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    default = runner.invoke(app, backtest(tmp_path / "a", "--strategy", "ema", *SLICE))
    tuned = runner.invoke(
        app,
        backtest(
            tmp_path / "b",
            *("--strategy", "ema", "--param", "quantity=0.5", "--param", "fast=6", *SLICE),
        ),
    )
    assert default.exit_code == 0, default.output
    assert tuned.exit_code == 0, tuned.output
    quantities = {
        line.split(",")[2] for line in (tmp_path / "b" / "trades.csv").read_text().splitlines()[1:]
    }
    assert quantities == {"0.5"}  # a Decimal, as EmaCrossover's default quantity
    # fast=6 became an int period: a faster EMA crosses more often.
    count = json.loads((tmp_path / "a" / "summary.json").read_text())["metrics"]["trades"]
    faster = json.loads((tmp_path / "b" / "summary.json").read_text())["metrics"]["trades"]
    assert faster > count
    for args, expected in [
        (("--strategy", "ema", "--param", "quantity=lots"), "expected a Decimal"),
        (("--strategy", "ema", "--param", "speed=3"), "parameters EmaCrossover takes"),
        (("--strategy", "ema", "--param", "quantity"), "NAME=VALUE"),
        (("--strategy", "ema", "--param", "fast=5", "--param", "fast=6"), "fast given once"),
        (("--param", "fast=5"), "no --param with the desk"),
    ]:
        out = tmp_path / "refused"
        refused = runner.invoke(app, backtest(out, *args, *SLICE))
        assert refused.exit_code != 0, args
        assert "invalid --param" in refused.output, refused.output
        assert expected in refused.output, refused.output
        assert not out.exists()


def test_a_class_is_made_once_per_symbol_and_an_object_serves_one_symbol_only(
    user_module: Callable[[str, str], None],
) -> None:
    # `legato run --strategy` makes one strategy per symbol the desk trades: a class can be
    # made as often as needed; one object would mix the markets' state, so it is refused.
    user_module("mine", BUY_AND_HOLD + "\nshared = BuyAndHold()\n")
    made = made_strategies("mine:BuyAndHold", {}, 2)
    assert len({id(strategy) for strategy in made}) == 2
    assert made_strategies("mine:shared", {}, 1) == [sys.modules["mine"].shared]
    with pytest.raises(ValidationError) as refused:
        made_strategies("mine:shared", {}, 2)
    assert refused.value.field == "--strategy"
    assert "a class, made once for each of the 2 symbols it trades" in str(refused.value)


MINE_IN_CONFIG = """
[[desk.strategies]]
name = "mine"
symbols = ["BTC-USDT-PERP"]
code = "my_ema:Mine"
params = { quantity = "0.5" }
"""


def test_a_strategy_the_config_names_trades_the_desk_as_the_production_path_trades_it(
    tmp_path: Path, user_module: Callable[[str, str], None]
) -> None:
    # legato.toml names your strategy for the symbol: the desk backtest runs it in the agents'
    # place, as `legato run` would, and it writes the very report of `--strategy` through the
    # production path.
    user_module("my_ema", MY_EMA)
    config = tmp_path / "mine.toml"
    config.write_text(MINE_IN_CONFIG)
    runner = CliRunner()
    desk = runner.invoke(app, backtest(tmp_path / "desk", "--config", str(config), *SLICE))
    production = runner.invoke(
        app,
        backtest(
            tmp_path / "production",
            "--config",
            str(config),
            "--strategy",
            "my_ema:Mine",
            "--param",
            "quantity=0.5",
            *SLICE,
        ),
    )
    assert desk.exit_code == 0, desk.output
    assert production.exit_code == 0, production.output
    assert "my_ema:Mine on BTC-USDT-PERP" in desk.output
    # The whole report, byte for byte: trades, equity, refusals, entry fills, chart and page.
    for name in REPORT_FILES:
        assert (tmp_path / "desk" / name).read_bytes() == (
            tmp_path / "production" / name
        ).read_bytes(), name
    summary = json.loads((tmp_path / "desk" / "summary.json").read_text())
    assert summary["metrics"]["trades"] > 0


def test_a_strategy_the_config_names_badly_is_refused_before_anything_is_written(
    tmp_path: Path, user_module: Callable[[str, str], None]
) -> None:
    user_module("my_ema", MY_EMA)
    config = tmp_path / "mine.toml"
    config.write_text(MINE_IN_CONFIG.replace('"0.5"', '"lots"'))
    out = tmp_path / "report"
    result = CliRunner().invoke(app, backtest(out, "--config", str(config), *SLICE))
    assert result.exit_code != 0
    assert (
        "invalid strategies[mine].params quantity: got 'lots', expected a Decimal" in result.output
    )
    assert not out.exists()
