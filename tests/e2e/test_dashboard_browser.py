"""The dashboard in a real browser against a real `legato serve`: load, live updates, replay.

Headless Chromium (Playwright) drives the pages the operator uses while the tests act
through the JSON API as a client would. Every wait is for something to show up on the page
or on the task gate, never a fixed delay. Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from e2e.browser_tasks import DOOMED, GATED

if TYPE_CHECKING:
    from e2e.conftest import RunningService, TaskGate

pytestmark = pytest.mark.slow

_NOT_RELOADED = "window.__legatoE2eSameDocument === true"
_UTC_CLOCK = re.compile(r"^\d{2}:\d{2}:\d{2}$")


def open_live(page: Page, path: str) -> None:
    """Open `path` and wait until its event stream is connected, then mark the document.

    Events published before the stream connects are not replayed, so nothing is submitted
    before this returns. The mark is gone if the page ever reloads.
    """
    page.goto(path)
    expect(page.locator("#live")).to_have_text("live")
    page.evaluate("window.__legatoE2eSameDocument = true")


def test_the_overview_loads_with_service_health_and_the_embedded_worker(
    page: Page, service: RunningService
) -> None:
    open_live(page, "/")
    expect(page).to_have_title("Overview · Legato")
    service_card = page.locator(".card", has=page.get_by_role("heading", name="Service"))
    expect(service_card.locator(".big")).to_have_text("healthy")
    expect(page.locator("tr[data-worker]")).to_have_count(1)
    expect(page.locator("tr[data-worker] [data-state]")).to_have_text("healthy")


def test_a_task_submitted_through_the_api_turns_succeeded_without_a_reload(
    context: BrowserContext, service: RunningService, gate: TaskGate, artifacts: Path
) -> None:
    overview = context.new_page()
    tasks = context.new_page()
    open_live(overview, "/")
    open_live(tasks, "/ui/tasks")
    succeeded = overview.locator('[data-count="succeeded"]')
    succeeded_before = int(succeeded.inner_text())
    run_time_count = overview.locator("#latency tr", has_text="run time").locator(
        "[data-latency-count]"
    )
    run_times_before = int(run_time_count.inner_text())

    task_id = service.submit(GATED, port=gate.port)
    row = tasks.locator(f'#tasks tr[data-task="{task_id}"]')
    expect(row.locator("[data-state]")).to_have_text("running")
    expect(row).to_contain_text(GATED)
    # The live row is the server's row: it shows where the task runs, and its creation time.
    expect(row.locator("[data-placement]")).to_contain_text("on ")
    created_at = service.task(task_id)["created_at"]
    expect(row.locator("time").first).to_have_attribute("data-ts", str(created_at))
    gate.release(gate.wait_for_attempt())
    expect(row.locator("[data-state]")).to_have_text("succeeded")
    expect(row.locator("[data-placement]")).to_have_text("—")

    expect(overview.locator("#event-log")).to_contain_text(f"task {task_id} {GATED} → succeeded")
    expect(succeeded).to_have_text(str(succeeded_before + 1))
    # The rest of the overview follows too: latency figures, not just the count cards.
    expect(run_time_count).to_have_text(str(run_times_before + 1))
    expect(overview.locator("#event-log time").first).to_have_text(_UTC_CLOCK)
    assert tasks.evaluate(_NOT_RELOADED)
    assert overview.evaluate(_NOT_RELOADED)
    overview.screenshot(path=artifacts / "overview.png", full_page=True)
    tasks.screenshot(path=artifacts / "tasks.png", full_page=True)
    assert service.task(task_id)["result"] == "go"


def test_a_dead_lettered_task_is_replayed_with_a_click(
    page: Page, service: RunningService, gate: TaskGate, artifacts: Path
) -> None:
    # The dead-letter page is open before the task dies: the new dead letter arrives live.
    open_live(page, "/ui/dlq")
    expect(page).to_have_title("Dead letters · Legato")
    task_id = service.submit(DOOMED, port=gate.port)
    gate.release(gate.wait_for_attempt())
    dead_row = page.locator(f'#dlq tr[data-task="{task_id}"]')
    expect(dead_row).to_contain_text("doomed on purpose")
    expect(dead_row.locator("[data-state]")).to_have_text("dead")
    assert page.evaluate(_NOT_RELOADED)
    page.screenshot(path=artifacts / "dlq.png", full_page=True)

    dead_row.get_by_role("button", name="Replay").click()
    # A fresh profile has no API token yet: the click asks for it, and saving it carries the
    # replay out without a second click.
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    page.locator("#token-input").fill(service.token)
    page.locator("#token-save").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#flash")).to_have_text("Replay: done")

    # The replayed task's new attempt connecting to the gate is the proof it runs again.
    attempt = gate.wait_for_attempt()
    try:
        replayed = service.task(task_id)
        expect(dead_row.locator("[data-state]")).not_to_have_text("dead")
    finally:
        gate.release(attempt)
    assert replayed["state"] == "running"
    reasons = [event["reason"] for event in replayed["history"]]
    assert reasons.count("claimed") == 2, reasons
    assert reasons[-2:] == ["replayed", "claimed"], reasons

    # Its history says where the replay came from, though the journal leaves it out.
    page.goto(f"/ui/tasks/{task_id}")
    expect(page).to_have_title(f"Task {task_id} · Legato")
    replay_row = page.locator("table tr", has=page.get_by_role("cell", name="replayed", exact=True))
    expect(replay_row.locator("td").nth(1)).to_have_text("dead")
    page.screenshot(path=artifacts / "task-replayed.png", full_page=True)


PAGES = [
    ("/", "Overview"),
    ("/ui/tasks", "Tasks"),
    ("/ui/dlq", "Dead letters"),
    ("/ui/workflows", "Workflows"),
    ("/ui/workers", "Workers"),
    ("/ui/loops", "Loops"),
    ("/ui/bus", "Bus"),
]


@pytest.mark.parametrize(("path", "section"), PAGES)
def test_every_page_renders_without_script_errors_and_marks_its_section(
    page: Page, service: RunningService, artifacts: Path, path: str, section: str
) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    page.set_viewport_size({"width": 1280, "height": 800})
    open_live(page, path)
    expect(page).to_have_title(f"{section} · Legato")
    current = page.locator('nav a[aria-current="page"]')
    expect(current).to_have_text(section)
    name = "overview" if path == "/" else path.rsplit("/", 1)[-1]
    page.screenshot(path=artifacts / f"page-{name}.png", full_page=True)
    # Keyboard users start at the skip link, which leads to the page's content.
    page.keyboard.press("Tab")
    expect(page.locator("a.skip")).to_be_focused()
    assert errors == []
