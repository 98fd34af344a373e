"""The desk pages in a real browser against a real `legato run`: a position, then the kill switch.

`legato run --port 0` runs as a subprocess in a temporary directory (its SQLite store there,
the seeded synthetic market replayed fast), and headless Chromium drives the desk page as an
operator would. Every wait is for something to show up on the page; the page itself follows
the desk by its light poll. Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, expect

from e2e.conftest import API_TOKEN, SHUTDOWN_SECONDS

pytestmark = pytest.mark.slow

# Ten five-minute bars a second: the desk warms its indicators up and opens its first
# position within a minute of real time.
SPEED = "3000"
STARTUP_SECONDS = 60.0
FIRST_POSITION_MS = 90_000
# The guards close the position at their next pass unless a decision run on the symbol is
# still working on its bracket: the close waits for that run to end first.
CLOSE_AFTER_KILL_MS = 90_000
_DASHBOARD = re.compile(r"dashboard (http://\S+?)/\s")
_PRICE = re.compile(r"^\d+(\.\d+)?$")


@dataclass(slots=True)
class RunningDesk:
    """A `legato run` subprocess: its dashboard URL, log file and process."""

    url: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, characters: int = 3000) -> str:
        """The end of the run's output, for failure messages."""
        return self.log_path.read_text(errors="replace")[-characters:]

    def state(self) -> dict[str, object]:
        """`GET /desk`."""
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            body: dict[str, object] = client.get("/desk").json()
        return body


def _wait_for_dashboard(log_path: Path, process: subprocess.Popen[bytes]) -> str:
    # The run prints its dashboard URL once the service listens; waiting on the process
    # doubles as the pause between looks, and a run that dies fails at once.
    for _ in range(int(STARTUP_SECONDS / 0.1)):
        found = _DASHBOARD.search(log_path.read_text(errors="replace"))
        if found:
            return found.group(1)
        try:
            process.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"legato run exited with {process.returncode}:\n{log_path.read_text()}")
    pytest.fail(f"legato run printed no dashboard URL in {STARTUP_SECONDS} s")


@pytest.fixture(scope="module")
def desk_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDesk]:
    """`legato run --port 0` as a real process, stopped with SIGINT (must exit 0)."""
    workdir = tmp_path_factory.mktemp("legato-run")
    env = {**os.environ, "LEGATO_API_TOKEN": API_TOKEN, "LEGATO_DATA_DIR": str(workdir)}
    command = [sys.executable, "-m", "legato.cli", "run", "--port", "0", "--speed", SPEED]
    log_path = workdir / "run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        running = RunningDesk(_wait_for_dashboard(log_path, process), log_path, process)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=SHUTDOWN_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                pytest.fail(f"legato run ignored SIGINT for {SHUTDOWN_SECONDS} s")
    assert process.returncode == 0, (
        f"legato run exited {process.returncode}:\n{log_path.read_text()}"
    )


@pytest.fixture
def desk_page(browser: Browser, desk_run: RunningDesk) -> Iterator[Page]:
    """A tab in a fresh browser profile (no saved API token) pointed at the run."""
    context = browser.new_context(base_url=desk_run.url, viewport={"width": 1360, "height": 1100})
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


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
    expect(row.locator("[data-stop-loss]")).to_have_text(_PRICE)
    expect(row.locator("[data-take-profit]")).to_have_text(_PRICE)
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
