"""Fixtures for whole-system browser tests: a real `legato serve` process and headless Chromium.

The service runs as a subprocess on a free port with a SQLite store and an embedded worker
that imports `e2e.browser_tasks`. Chromium is Debian's (/usr/bin/chromium), driven by
Playwright without downloading a browser. Without that binary the tests are skipped, unless
CI=true: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TESTS_DIR = Path(__file__).resolve().parents[1]
ARTIFACTS = TESTS_DIR.parent / "test-artifacts"
API_TOKEN = "e2e-browser-token"
STARTUP_SECONDS = 30.0
SHUTDOWN_SECONDS = 30.0


def free_port() -> int:
    """A loopback port nothing listens on right now (the service binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(slots=True)
class RunningService:
    """A `legato serve` subprocess: its URL, API token, log file and process."""

    url: str
    token: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, characters: int = 3000) -> str:
        """The end of the service's stderr, for failure messages."""
        return self.log_path.read_text(errors="replace")[-characters:]

    def api(self) -> httpx.Client:
        """An HTTP client for the service's JSON API, carrying the bearer token."""
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10.0
        )

    def submit(self, name: str, **kwargs: Any) -> int:
        """Submit task `name` with keyword arguments through `POST /tasks`; return its id."""
        with self.api() as client:
            response = client.post("/tasks", json={"name": name, "kwargs": kwargs})
        assert response.status_code == 201, response.text
        task_id: int = response.json()["id"]
        return task_id

    def task(self, task_id: int) -> dict[str, Any]:
        """`GET /tasks/{id}`: the task with its state history."""
        with self.api() as client:
            response = client.get(f"/tasks/{task_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_until_ready(self) -> None:
        """Return once /health answers and the change watcher has taken its baseline."""
        deadline_checks = int(STARTUP_SECONDS / 0.1)
        for _ in range(deadline_checks):
            if self._ready():
                return
            # Waiting on the process doubles as the pause between checks: a service that dies
            # during start-up fails the test at once instead of at the deadline.
            try:
                self.process.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                continue
            pytest.fail(
                f"legato serve exited with {self.process.returncode} while starting:\n"
                f"{self.log_tail()}"
            )
        pytest.fail(f"legato serve not ready after {STARTUP_SECONDS} s:\n{self.log_tail()}")

    def _ready(self) -> bool:
        try:
            with httpx.Client(base_url=self.url, timeout=2.0) as client:
                if client.get("/health").status_code != 200:
                    return False
                loops = client.get("/loops").json()
        except httpx.TransportError:
            return False
        # Tasks submitted before the watcher's first pass become its baseline and are never
        # announced as new; the tests need every submission to show up live.
        return any(
            loop["name"] == "service.watch" and loop["last_success_at"] is not None
            for loop in loops
        )

    def stop(self) -> int:
        """Interrupt the service as Ctrl-C would and return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=SHUTDOWN_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"legato serve ignored SIGINT for {SHUTDOWN_SECONDS} s")
        return self.process.returncode


class TaskGate:
    """A loopback socket the gated tasks connect to and wait on: the test says when they end.

    Each attempt of a gated task opens one connection and blocks reading it, so accepting a
    connection proves an attempt has started, and writing to it lets that attempt finish.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))

    @property
    def port(self) -> int:
        """The port to pass to the gated tasks."""
        port: int = self._listener.getsockname()[1]
        return port

    def wait_for_attempt(self, timeout: float = 20.0) -> socket.socket:
        """Block until an attempt of a gated task connects; return its connection."""
        self._listener.settimeout(timeout)
        try:
            connection, _ = self._listener.accept()
        except TimeoutError:
            pytest.fail(f"no gated task attempt connected within {timeout} s")
        return connection

    @staticmethod
    def release(attempt: socket.socket) -> None:
        """Let the attempt behind `attempt` finish."""
        with attempt:
            attempt.sendall(b"go")

    def close(self) -> None:
        """Stop listening; attempts still waiting read end-of-file and finish."""
        self._listener.close()


@pytest.fixture(scope="module")
def chromium() -> Path:
    """The Chromium binary: skip without it, or fail when CI=true."""
    if not CHROMIUM.exists():
        reason = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true: a missing browser fails instead of skipping")
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """`legato serve --embedded-worker` as a real process, stopped with SIGINT afterwards.

    Teardown fails if the service does not exit 0: Ctrl-C must be a clean stop.
    """
    workdir = tmp_path_factory.mktemp("legato-serve")
    port = free_port()
    inherited_path = os.environ.get("PYTHONPATH")
    env = {
        **os.environ,
        "LEGATO_API_TOKEN": API_TOKEN,
        "LEGATO_DATA_DIR": str(workdir),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR), inherited_path])),
    }
    log_path = workdir / "serve.log"
    command = [
        sys.executable, "-m", "legato.cli", "--store", f"sqlite:///{workdir / 'legato.db'}",
        "serve", "--port", str(port), "--embedded-worker", "--import", "e2e.browser_tasks",
    ]  # fmt: skip
    # A file, not a pipe: nobody reads the log while the test runs, and a full pipe would
    # block the service mid-write.
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    running = RunningService(f"http://127.0.0.1:{port}", API_TOKEN, log_path, process)
    try:
        running.wait_until_ready()
        yield running
    finally:
        status = running.stop()
    assert status == 0, f"legato serve exited with {status} after SIGINT:\n{running.log_tail()}"


@pytest.fixture
def gate() -> Iterator[TaskGate]:
    """A fresh gate for this test's gated tasks."""
    task_gate = TaskGate()
    yield task_gate
    task_gate.close()


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Browser]:
    """Headless Chromium driven by Playwright, shared by the module's tests."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Browser, service: RunningService) -> Iterator[BrowserContext]:
    """A fresh browser profile (no saved API token) pointed at the service."""
    browser_context = browser.new_context(
        base_url=service.url, viewport={"width": 1280, "height": 900}
    )
    browser_context.set_default_timeout(15_000)
    yield browser_context
    browser_context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    """A tab in the test's browser profile."""
    return context.new_page()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """test-artifacts/ at the repository root (git-ignored), where screenshots go."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
