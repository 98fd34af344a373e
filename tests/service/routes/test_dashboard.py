"""Dashboard pages: each renders, shows live data, and says what to do when empty."""

from __future__ import annotations

import re
from typing import Any

import pytest

from legato.kernel.clock import Clock


@pytest.mark.parametrize(
    ("path", "empty_hint"),
    [
        ("/", "No worker is running"),
        ("/ui/tasks", "No tasks match"),
        ("/ui/dlq", "dead-letter queue is empty"),
        ("/ui/workers", "No worker is registered"),
        ("/ui/workflows", "No workflows yet"),
        ("/ui/bus", "No message bus is attached"),
    ],
)
async def test_each_page_renders_an_empty_state_that_says_what_to_do(
    service_app: Any, serving: Any, path: str, empty_hint: str
) -> None:
    async with serving(service_app) as client:
        response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert empty_hint in response.text


async def test_pages_show_tasks_workers_and_loops(
    service_app: Any,
    serving: Any,
    auth: dict[str, str],
    running_worker: Any,
    wait_for: Any,
) -> None:
    async with serving(service_app) as client, running_worker() as worker:
        task = (await client.post("/tasks", json={"name": "boom"}, headers=auth)).json()

        async def dead() -> bool:
            return bool((await client.get(f"/tasks/{task['id']}")).json()["state"] == "dead")

        await wait_for(dead)
        tasks_page = (await client.get("/ui/tasks")).text
        detail = (await client.get(f"/ui/tasks/{task['id']}")).text
        dlq = (await client.get("/ui/dlq")).text
        workers = (await client.get("/ui/workers")).text
        loops = (await client.get("/ui/loops")).text
        overview = (await client.get("/")).text
        missing = await client.get("/ui/tasks/9999")
    assert f'data-task="{task["id"]}"' in tasks_page
    assert "state-dead" in tasks_page
    assert "boom on purpose" in detail
    assert 'data-action="/dlq/replay"' in dlq
    assert worker.worker_id in workers
    assert "service.watch" in loops
    assert 'id="throughput-chart"' in overview
    assert missing.status_code == 404


async def test_static_assets_are_served_without_any_external_reference(
    service_app: Any, serving: Any
) -> None:
    async with serving(service_app) as client:
        css = await client.get("/static/dashboard.css")
        js = await client.get("/static/dashboard.js")
        page = (await client.get("/")).text
    assert css.status_code == 200
    assert js.status_code == 200
    assert "EventSource" in js.text
    for text in (css.text, js.text, page):
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text


def _row_with(html: str, text: str) -> str:
    """The one table row of `html` that contains `text`."""
    rows = [row for row in re.findall(r"<tr\b.*?</tr>", html, flags=re.S) if text in row]
    assert len(rows) == 1, rows
    return rows[0]


async def _dead_task(client: Any, auth: dict[str, str], wait_for: Any) -> int:
    task_id: int = (await client.post("/tasks", json={"name": "boom"}, headers=auth)).json()["id"]

    async def dead() -> bool:
        return bool((await client.get(f"/tasks/{task_id}")).json()["state"] == "dead")

    await wait_for(dead)
    return task_id


async def test_the_overview_fragment_carries_the_live_figures_a_reload_would_show(
    service_app: Any, serving: Any, auth: dict[str, str], running_worker: Any, wait_for: Any
) -> None:
    async with serving(service_app) as client, running_worker():
        task = (await client.post("/tasks", json={"name": "echo"}, headers=auth)).json()

        async def counted() -> bool:
            stats = (await client.get("/stats")).json()
            return bool(stats["run_time"]["count"] == 1)

        await wait_for(lambda: _succeeded(client, task["id"]))
        await wait_for(counted)
        fragment = await client.get("/ui/fragments/overview")
    assert fragment.status_code == 200
    assert "<html" not in fragment.text  # a part to swap in, not a page
    assert re.search(r'data-count="succeeded">\s*1<', fragment.text)
    run_time = _row_with(fragment.text, "run time")
    assert re.search(r"data-latency-count>\s*1<", run_time)
    assert 'id="overview-workers"' in fragment.text
    assert 'id="throughput-chart"' in fragment.text


async def _succeeded(client: Any, task_id: int) -> bool:
    return bool((await client.get(f"/tasks/{task_id}")).json()["state"] == "succeeded")


async def test_task_rows_fragment_renders_rows_with_creation_time_and_placement(
    service_app: Any, serving: Any, auth: dict[str, str], clock: Clock
) -> None:
    async with serving(service_app) as client:
        # No worker serves queue "gpu": the task waits and is reported unschedulable.
        waiting = (await client.post("/tasks", json={"name": "gpu"}, headers=auth)).json()
        changed = (await client.post("/tasks", json={"name": "gpu"}, headers=auth)).json()
        await clock.sleep(5)
        cancelled = (await client.post(f"/tasks/{changed['id']}/cancel", headers=auth)).json()
        ids = f"{waiting['id']},{changed['id']},999"
        fragment = await client.get("/ui/fragments/task-rows", params={"ids": ids})
    assert fragment.status_code == 200
    waiting_row = _row_with(fragment.text, f'data-task="{waiting["id"]}"')
    assert "unschedulable" in waiting_row
    assert "no live worker serves queue" in waiting_row
    cancelled_row = _row_with(fragment.text, f'data-task="{changed["id"]}"')
    assert cancelled["updated_at"] > cancelled["created_at"]
    assert f'data-ts="{cancelled["created_at"]}"' in cancelled_row
    assert f'data-ts="{cancelled["updated_at"]}"' not in cancelled_row
    assert 'data-task="999"' not in fragment.text  # unknown ids are left out


async def test_a_running_task_row_says_which_worker_runs_it(
    service_app: Any, serving: Any, auth: dict[str, str], running_worker: Any, wait_for: Any
) -> None:
    async with serving(service_app) as client, running_worker() as worker:
        task = (
            await client.post("/tasks", json={"name": "nap", "args": [60]}, headers=auth)
        ).json()

        async def running() -> bool:
            return bool((await client.get(f"/tasks/{task['id']}")).json()["state"] == "running")

        await wait_for(running)
        fragment = (await client.get("/ui/fragments/task-rows", params={"ids": task["id"]})).text
        await client.post(f"/tasks/{task['id']}/cancel", headers=auth)
    assert worker.worker_id in _row_with(fragment, "data-placement")


async def test_dead_letter_rows_fragment_renders_only_tasks_that_are_dead(
    service_app: Any, serving: Any, auth: dict[str, str], running_worker: Any, wait_for: Any
) -> None:
    async with serving(service_app) as client, running_worker():
        dead_id = await _dead_task(client, auth, wait_for)
        waiting = (await client.post("/tasks", json={"name": "gpu"}, headers=auth)).json()
        fragment = await client.get(
            "/ui/fragments/dead-letter-rows", params={"ids": f"{dead_id},{waiting['id']}"}
        )
    assert fragment.status_code == 200
    row = _row_with(fragment.text, f'data-task="{dead_id}"')
    assert "boom on purpose" in row
    assert 'data-action="/dlq/replay"' in row
    assert f'data-task="{waiting["id"]}"' not in fragment.text


@pytest.mark.parametrize("ids", ["", "1,x", "-3", "0", "²", ",".join(["1"] * 201)])
async def test_fragment_ids_that_are_not_a_short_list_of_task_ids_are_refused(
    service_app: Any, serving: Any, ids: str
) -> None:
    async with serving(service_app) as client:
        response = await client.get("/ui/fragments/task-rows", params={"ids": ids})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["details"]["field"] == "ids"
    assert "comma-separated" in error["message"]


async def test_a_replayed_task_history_shows_it_came_back_from_dead(
    service_app: Any, serving: Any, auth: dict[str, str], running_worker: Any, wait_for: Any
) -> None:
    async with serving(service_app) as client:
        async with running_worker():
            task_id = await _dead_task(client, auth, wait_for)
        # No worker now: the replayed task stays pending, so its last event is the replay.
        await client.post("/dlq/replay", json={"task_ids": [task_id]}, headers=auth)
        detail = (await client.get(f"/ui/tasks/{task_id}")).text
    replayed = _row_with(detail, "<td>replayed</td>")
    cells = re.findall(r"<td>(.*?)</td>", replayed, flags=re.S)
    assert "state-dead" in cells[1]  # from
    assert "state-pending" in cells[2]  # to


async def test_the_empty_tasks_page_gives_a_complete_curl_command(
    service_app: Any, serving: Any
) -> None:
    async with serving(service_app) as client:
        page = (await client.get("/ui/tasks")).text
    command = re.search(r"<pre>(curl .*?)</pre>", page, flags=re.S)
    assert command is not None
    assert "http://legato/tasks" in command.group(1)
    assert "Content-Type: application/json" in command.group(1)
    assert "Authorization: Bearer" in command.group(1)
