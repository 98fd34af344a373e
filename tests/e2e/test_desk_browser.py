"""The desk pages in a real browser against a real `legato run`: a position, then the kill switch.

`legato run --port 0` runs as a subprocess in a temporary directory (its SQLite store there,
the seeded synthetic market replayed fast), and headless Chromium drives the desk page as an
operator would. Every wait is for something to show up on the page; the page itself follows
the desk by its light poll. Screenshots land in test-artifacts/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Dialog, Page, expect

from e2e.conftest import API_TOKEN
from e2e.desk_runs import FIRST_POSITION_MS, PRICE, SPEED, RunningDesk, desk_tab, running_desk

pytestmark = pytest.mark.slow

# The guards close the position at their next pass unless a decision run on the symbol is
# still working on its bracket: the close waits for that run to end first.
CLOSE_AFTER_KILL_MS = 90_000


@pytest.fixture(scope="module")
def desk_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDesk]:
    """`legato run --port 0` as a real process, stopped with SIGINT (must exit 0)."""
    with running_desk(tmp_path_factory.mktemp("legato-run"), "--speed", SPEED) as running:
        yield running


@pytest.fixture
def desk_page(browser: Browser, desk_run: RunningDesk) -> Iterator[Page]:
    """A tab in a fresh browser profile (no saved API token) pointed at the run."""
    with desk_tab(browser, desk_run) as page:
        yield page


def test_the_desk_page_shows_a_position_with_its_protection_then_the_kill_switch_closes_it(
    desk_page: Page, desk_run: RunningDesk, artifacts: Path
) -> None:
    page = desk_page
    page.goto("/ui/desk")
    expect(page).to_have_title("Desk · Legato")
    expect(page.get_by_role("link", name="Desk", exact=True)).to_have_attribute(
        "aria-current", "page"
    )
    expect(page.locator('[data-figure="kill-switch"]')).to_have_text("off")

    # The first position arrives by the page's own poll, with its stop-loss and take-profit.
    row = page.locator("#positions tr[data-position]").first
    expect(row).to_be_visible(timeout=FIRST_POSITION_MS)
    expect(row.locator("[data-stop-loss]")).to_have_text(PRICE)
    expect(row.locator("[data-take-profit]")).to_have_text(PRICE)
    expect(page.locator('.desk-chart.price [data-marker="entry"]').first).to_be_attached()
    page.screenshot(path=str(artifacts / "desk-position.png"), full_page=True)

    # The kill switch: confirm, give the token in the dialog, and the action goes through.
    confirmations: list[str] = []

    def accept(dialog: Dialog) -> None:
        confirmations.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.get_by_role("button", name="Kill switch").click()
    expect(page.locator("#token-dialog")).to_be_visible()
    page.locator("#token-input").fill(API_TOKEN)
    page.locator("#token-save").click()
    expect(page.locator('[data-figure="kill-switch"]')).to_have_text("ON")
    expect(page.get_by_text("Kill switch is on")).to_be_visible()
    assert [m for m in confirmations if "kill switch" in m.lower()]
    # The runtime guards close every position; the page follows.
    expect(page.locator("[data-no-positions]")).to_be_visible(timeout=CLOSE_AFTER_KILL_MS)
    assert desk_run.state()["kill_switch"] is True
    page.screenshot(path=str(artifacts / "desk-kill-switch.png"), full_page=True)

    page.goto("/ui/desk/orders")
    expect(page.locator("#orders tr[data-order]").first).to_be_visible()
    page.screenshot(path=str(artifacts / "desk-orders.png"), full_page=True)
    # New trades are refused: the newest decisions are rejected because of the kill switch.
    page.goto("/ui/desk/decisions")
    expect(page.locator("#decisions tr[data-decision]").first).to_be_visible()
    refused = page.locator('#decisions tr[data-decision] .decision-rejected[title*="kill switch"]')
    expect(refused.first).to_be_attached(timeout=30_000)
    assert desk_run.state()["positions"] == []
    page.screenshot(path=str(artifacts / "desk-decisions.png"), full_page=True)
