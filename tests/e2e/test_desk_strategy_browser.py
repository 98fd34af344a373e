"""Your strategy on the desk pages, in a real browser against `legato run --strategy`.

The same real process as the desk's own browser test, trading a breakout strategy written
into its working directory instead of the agents: the desk page names the strategy and
shows its protected position, the operator pauses the symbol and closes the position by
hand, and the Decisions page shows what the strategy asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Dialog, Page, expect

from e2e.conftest import API_TOKEN
from e2e.desk_runs import FIRST_POSITION_MS, PRICE, SPEED, RunningDesk, desk_tab, running_desk
from trading.backtest.scripted_strategy import BREAKOUT_MODULE

pytestmark = pytest.mark.slow

CLOSED_MS = 60_000


@pytest.fixture(scope="module")
def strategy_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDesk]:
    """`legato run --strategy breakout:Breakout` as a real process, stopped with SIGINT."""
    workdir = tmp_path_factory.mktemp("legato-run-strategy")
    (workdir / "breakout.py").write_text(BREAKOUT_MODULE)
    args = ("--speed", SPEED, "--strategy", "breakout:Breakout", "--param", "window=24")
    with running_desk(workdir, *args) as running:
        yield running


@pytest.fixture
def desk_page(browser: Browser, strategy_run: RunningDesk) -> Iterator[Page]:
    """A tab in a fresh browser profile (no saved API token) pointed at the run."""
    with desk_tab(browser, strategy_run) as page:
        yield page


def test_your_strategy_trades_on_the_desk_page_and_the_operator_can_close_its_position(
    desk_page: Page, strategy_run: RunningDesk, artifacts: Path
) -> None:
    page = desk_page
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("dialog", lambda dialog: accept(dialog))
    page.goto("/ui/desk")
    expect(page.locator("[data-strategies]")).to_contain_text(
        "BTC-USDT-PERP is traded by your strategy breakout:Breakout"
    )
    row = page.locator("#positions tr[data-position]").first
    expect(row).to_be_visible(timeout=FIRST_POSITION_MS)
    expect(row.locator("[data-stop-loss]")).to_have_text(PRICE)
    expect(row.locator("[data-take-profit]")).to_have_text(PRICE)
    page.screenshot(path=str(artifacts / "desk-strategy-position.png"), full_page=True)

    # Paused first, so the strategy's next breakout is stored but not traded; then closed.
    page.get_by_role("button", name="Pause BTC-USDT-PERP").click()
    expect(page.locator("#token-dialog")).to_be_visible()
    page.locator("#token-input").fill(API_TOKEN)
    page.locator("#token-save").click()
    expect(page.get_by_text("BTC-USDT-PERP paused")).to_be_visible()
    row.get_by_role("button", name="Close").click()
    expect(page.locator("[data-no-positions]")).to_be_visible(timeout=CLOSED_MS)
    assert strategy_run.state()["positions"] == []

    page.goto("/ui/desk/decisions")
    first = page.locator("#decisions tr[data-decision]").last
    expect(first).to_contain_text("BUY")
    expect(first).to_contain_text("asked by breakout:Breakout")
    page.screenshot(path=str(artifacts / "desk-strategy-decisions.png"), full_page=True)
    assert errors == []


def accept(dialog: Dialog) -> None:
    """Confirm the page's 'are you sure' questions, as the operator would."""
    dialog.accept()
