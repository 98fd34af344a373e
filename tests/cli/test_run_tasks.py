"""`legato run` decides every bar as a durable `legato.desk.decide` task an operator can list."""

from __future__ import annotations

import json
import re
import sqlite3
import urllib.request
from pathlib import Path

import pytest

from .test_run import _interrupt, _legato_run, _lines

pytestmark = pytest.mark.slow


def test_the_running_desk_shows_its_decide_tasks_and_a_clean_stop_leaves_none_open(
    tmp_path: Path,
) -> None:
    listed: list[dict[str, object]] = []
    with _legato_run(tmp_path, "--speed", "30000", "--port", "0", "--progress", "0.2") as process:
        assert process.stdout is not None
        base = None
        for line in _lines(process.stdout):
            found = re.search(r"dashboard (http://\S+)/", line)
            if found:
                base = found.group(1)
            bars = re.match(r"\s+(\d+) bars", line)
            if base is not None and bars is not None and int(bars.group(1)) >= 5:
                break
        assert base is not None, "the service address was never printed"
        # While the desk runs, the operator API lists its decisions as tasks.
        request = urllib.request.Request(
            f"{base}/tasks?name=legato.desk.decide&limit=500",
            headers={"Authorization": "Bearer run-test-token"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            listed = json.load(answer)["items"]
        _, errors = _interrupt(process)
    assert process.returncode == 0, errors[-3000:]
    assert listed, "no legato.desk.decide task while the desk ran"
    assert {item["queue"] for item in listed} == {"desk"}
    with sqlite3.connect(tmp_path / "legato.db") as db:
        states = dict(
            db.execute(
                "SELECT state, count(*) FROM legato_tasks WHERE name = 'legato.desk.decide' "
                "GROUP BY state"
            ).fetchall()
        )
    # A clean stop: every bar's task ended, none left running or pending.
    assert set(states) == {"succeeded"}, states
