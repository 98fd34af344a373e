"""The `legato` command line: entry point, help and version."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

import legato
from legato.cli.app import app
from legato.cli.snapshots import SNAPSHOT_DIR, SnapshotDirectory
from legato.kernel.clock import RealClock
from legato.store import TaskStore, WorkerRecord


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == legato.__version__


def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "version" in result.output


def test_console_script_runs_as_a_real_process() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "legato.cli", "version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == legato.__version__


# ---------------------------------------------------------------- operating commands (in-process)

IMPORT = ["--import", "cli.sample_tasks"]


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """Invoke the app in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A SQLite store in the test's directory (created and migrated on first use)."""
    return f"sqlite:///{tmp_path / 'legato.db'}"


def test_submit_then_task_json_round_trips_through_the_store(store: str) -> None:
    submitted = run("--store", store, "submit", "add", "--args", "[2, 3]", *IMPORT, "--json")
    assert submitted.exit_code == 0, submitted.stderr
    task = json.loads(submitted.stdout)
    assert (task["name"], task["state"], task["args"]) == ("add", "pending", [2, 3])
    shown = run("--store", store, "task", str(task["id"]), "--json")
    assert shown.exit_code == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["id"] == task["id"]
    assert [event["reason"] for event in detail["history"]] == ["submitted"]


def test_tasks_lists_and_filters_by_state_and_queue(store: str) -> None:
    run("--store", store, "submit", "add", "--args", "[1, 1]", *IMPORT)
    run("--store", store, "submit", "slow", *IMPORT)
    every = json.loads(run("--store", store, "--json", "tasks").stdout)
    assert [t["name"] for t in every] == ["add", "slow"]
    slow = json.loads(run("--store", store, "--json", "tasks", "--queue", "slow").stdout)
    assert [t["name"] for t in slow] == ["slow"]
    none = json.loads(run("--store", store, "--json", "tasks", "--state", "dead").stdout)
    assert none == []
    table = run("--store", store, "tasks")
    assert table.exit_code == 0
    assert "pending" in table.stdout


def test_the_same_idempotency_key_returns_the_same_task(store: str) -> None:
    first = run("--store", store, "--json", "submit", "add", "--args", "[1, 2]",
                "--idempotency-key", "k1", *IMPORT)  # fmt: skip
    again = run("--store", store, "--json", "submit", "add", "--args", "[1, 2]",
                "--idempotency-key", "k1", *IMPORT)  # fmt: skip
    assert json.loads(first.stdout)["id"] == json.loads(again.stdout)["id"]


def test_cancel_then_retry_a_task(store: str) -> None:
    task_id = json.loads(run("--store", store, "--json", "submit", "slow", *IMPORT).stdout)["id"]
    cancelled = run("--store", store, "--json", "cancel", str(task_id))
    assert cancelled.exit_code == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["state"] == "cancelled"
    again = run("--store", store, "cancel", str(task_id))
    assert again.exit_code == 1
    assert "already cancelled" in again.stderr
    retried = run("--store", store, "--json", "retry", str(task_id))
    assert json.loads(retried.stdout)["state"] == "pending"
    conflict = run("--store", store, "retry", str(task_id))
    assert conflict.exit_code == 1


def test_an_unknown_task_exits_3_with_one_line_on_stderr(store: str) -> None:
    result = run("--store", store, "task", "999")
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr.strip() == "error: no task with id 999"


def test_drain_in_store_mode_flags_the_worker_in_the_store(store: str) -> None:
    unknown = run("--store", store, "drain", "host:1:abc")
    assert unknown.exit_code == 3
    assert unknown.stderr.strip() == "error: no live worker with id host:1:abc"

    async def register() -> None:
        task_store = await TaskStore.open(store)
        now = RealClock().timestamp()
        try:
            await task_store.register_worker(
                WorkerRecord("host:1:abc", "h", 1, ("default",), "{}", 2, "0", "active", now, now)
            )
        finally:
            await task_store.close()

    asyncio.run(register())
    drained = run("--store", store, "--json", "drain", "host:1:abc")
    assert drained.exit_code == 0, drained.stderr
    view = json.loads(drained.stdout)
    assert (view["registered_state"], view["state"], view["draining"]) == (
        "draining",
        "draining",
        True,
    )
    listed = run("--store", store, "--json", "workers")
    assert json.loads(listed.stdout)[0]["draining"] is True


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["submit", "add", "--args", "{not json"], "invalid --args"),
        (["submit", "add", "--args", "[1]"], "invalid args"),
        (["submit", "add", "--kwargs", "[1]"], "invalid --kwargs"),
        (["submit", "nope"], "invalid NAME"),
        (["tasks", "--state", "finished"], "invalid --state"),
        (["dlq", "purge"], "exactly one of them"),
        (["worker", "--queues", " , "], "invalid --queues"),
        (["worker"], "invalid --import"),
    ],
)
def test_bad_input_exits_2_naming_what_was_wrong(store: str, args: list[str], said: str) -> None:
    extra = IMPORT if args[0] == "submit" else []
    result = run("--store", store, *args, *extra)
    assert result.exit_code == 2, result.output
    assert said in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_store_and_url_together_are_a_usage_error(store: str) -> None:
    result = run("--store", store, "--url", "http://127.0.0.1:1", "tasks")
    assert result.exit_code == 2
    assert "not both" in result.stderr


def test_an_import_that_does_not_exist_is_a_usage_error(store: str) -> None:
    result = run("--store", store, "submit", "add", "--import", "no_such_module_here")
    assert result.exit_code == 2
    assert "ModuleNotFoundError" in result.stderr


def test_debug_adds_the_traceback(store: str) -> None:
    result = run("--store", store, "--debug", "task", "999")
    assert result.exit_code == 3
    assert "Traceback" in result.stderr
    assert result.stderr.strip().endswith("error: no task with id 999")


def test_dlq_and_workflows_answer_empty_in_json(store: str) -> None:
    assert json.loads(run("--store", store, "--json", "dlq", "list").stdout) == []
    assert json.loads(run("--store", store, "--json", "workflows").stdout) == []
    assert json.loads(run("--store", store, "--json", "workers").stdout) == []
    replay = run("--store", store, "--json", "dlq", "replay", "41")
    assert replay.exit_code == 1
    assert json.loads(replay.stdout) == {"replayed": [], "skipped": [41]}


def test_global_store_is_the_default_of_db_upgrade(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'other.db'}"
    result = run("--store", store, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert "other.db" in result.stdout


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_an_unreachable_service_exits_4(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    result = run("--url", url, "--retries", "0", "tasks", env={"LEGATO_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 4
    assert "unreachable" in result.stderr


def test_workers_shows_the_disk_snapshot_when_the_service_is_down(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    saved = [{"id": "host:7:abc", "queues": ["default"], "concurrency": 4, "state": "healthy",
              "reason": "heartbeats on time", "heartbeat_age_seconds": 1.0}]  # fmt: skip
    SnapshotDirectory(tmp_path / SNAPSHOT_DIR, url).save("workers", saved, 1_700_000_000.0)
    env = {"LEGATO_DATA_DIR": str(tmp_path)}
    table = run("--url", url, "--retries", "0", "workers", env=env)
    assert table.exit_code == 0, table.stderr
    assert "service unreachable; showing snapshot from 2023-11-14T22:13:20+00:00" in table.stderr
    assert "host:7:abc" in table.stdout
    as_json = run("--url", url, "--retries", "0", "--json", "workers", env=env)
    assert json.loads(as_json.stdout) == saved
    assert "showing snapshot" in as_json.stderr


# ---------------------------------------------------------------- real processes

TASK_MODULE = """
from legato.orchestrator import Orchestrator

app = Orchestrator()


@app.task(name="multiply")
def multiply(a: int, b: int) -> int:
    return a * b
"""


def run_legato(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m legato.cli ARGS` as a real process in `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "legato.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        cwd=cwd,
    )


@pytest.mark.slow
def test_submit_then_task_json_as_real_processes_and_a_worker_runs_it(tmp_path: Path) -> None:
    (tmp_path / "user_tasks.py").write_text(TASK_MODULE)
    store = f"sqlite:///{tmp_path / 'legato.db'}"
    submitted = run_legato(tmp_path, "--store", store, "submit", "multiply", "--args", "[6, 7]",
                       "--import", "user_tasks", "--json")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    task_id = str(json.loads(submitted.stdout)["id"])

    worker = subprocess.Popen(
        [sys.executable, "-m", "legato.cli", "--store", store, "worker", "--queues", "default",
         "--concurrency", "2", "--import", "user_tasks"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        done = run_legato(tmp_path, "--store", store, "task", task_id, "--wait", "45", "--json")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            _, worker_err = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            _, worker_err = worker.communicate()
    assert done.returncode == 0, (done.stderr, worker_err)
    task = json.loads(done.stdout)
    assert task["state"] == "succeeded"
    assert task["result"] == 42
    assert worker.returncode == 0, worker_err
    assert "ready: queues default" in worker_err


@pytest.mark.slow
def test_a_real_process_reports_errors_in_one_line_with_its_exit_code(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'legato.db'}"
    missing = run_legato(tmp_path, "--store", store, "task", "5")
    assert missing.returncode == 3
    assert missing.stderr.strip() == "error: no task with id 5"


@pytest.mark.slow
def test_serve_with_an_embedded_worker_runs_what_submit_sends_it(tmp_path: Path) -> None:
    (tmp_path / "user_tasks.py").write_text(TASK_MODULE)
    port = _closed_port()
    url = f"http://127.0.0.1:{port}"
    store = f"sqlite:///{tmp_path / 'legato.db'}"
    env = {**os.environ, "LEGATO_API_TOKEN": "cli-test-token", "LEGATO_DATA_DIR": str(tmp_path)}
    service = subprocess.Popen(
        [sys.executable, "-m", "legato.cli", "--store", store, "serve", "--port", str(port),
         "--embedded-worker", "--import", "user_tasks"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # The client's own retries (1 s, 2 s, 4 s...) wait for the service to come up.
        submitted = subprocess.run(
            [sys.executable, "-m", "legato.cli", "--url", url, "--retries", "6", "--json",
             "submit", "multiply", "--args", "[3, 5]"],
            cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        task_id = str(json.loads(submitted.stdout)["id"])
        done = subprocess.run(
            [sys.executable, "-m", "legato.cli", "--url", url, "task", task_id, "--wait", "45",
             "--json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
    finally:
        service.send_signal(signal.SIGINT)
        try:
            _, service_err = service.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            _, service_err = service.communicate()
    assert done.returncode == 0, (done.stderr, service_err[-2000:])
    assert json.loads(done.stdout)["result"] == 15
    assert service.returncode == 0, service_err[-2000:]
