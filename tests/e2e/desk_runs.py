"""A real `legato run` for the desk's browser tests: started, watched and stopped by SIGINT.

`running_desk(workdir, *args)` runs `legato run --port 0 ARGS` in `workdir` (its SQLite
store there), waits for it to print its dashboard URL, and at the end stops it with SIGINT,
which must end it with status 0 within the shutdown bound.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page

from e2e.conftest import API_TOKEN, SHUTDOWN_SECONDS

STARTUP_SECONDS = 60.0
SPEED = "3000"
"""Ten five-minute bars a second: a desk opens its first position within a minute."""
FIRST_POSITION_MS = 90_000
PRICE = re.compile(r"^\d+(\.\d+)?$")
"""A price as a desk page shows one."""
_DASHBOARD = re.compile(r"dashboard (http://\S+?)/\s")


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


@contextmanager
def desk_tab(browser: Browser, run: RunningDesk) -> Iterator[Page]:
    """A tab in a fresh browser profile (no saved API token) pointed at `run`."""
    context = browser.new_context(base_url=run.url, viewport={"width": 1360, "height": 1100})
    context.set_default_timeout(15_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@contextmanager
def running_desk(workdir: Path, *args: str) -> Iterator[RunningDesk]:
    """`legato run --port 0 ARGS` as a real process in `workdir`, stopped with SIGINT."""
    env = {**os.environ, "LEGATO_API_TOKEN": API_TOKEN, "LEGATO_DATA_DIR": str(workdir)}
    command = [sys.executable, "-m", "legato.cli", "run", "--port", "0", *args]
    log_path = workdir / "run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield RunningDesk(_wait_for_dashboard(log_path, process), log_path, process)
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
