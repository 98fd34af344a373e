"""`legato run` reloading its config file while it trades: SIGHUP and the HTTP control."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .test_run import _interrupt, _legato_run, _lines

pytestmark = pytest.mark.slow


def _until(process: subprocess.Popen[str], pattern: str) -> re.Match[str]:
    assert process.stdout is not None
    for line in _lines(process.stdout):
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"the process ended without printing {pattern!r}")


def test_sighup_and_the_reload_route_apply_safe_changes_and_refuse_the_rest(
    tmp_path: Path,
) -> None:
    config = tmp_path / "legato.toml"
    config.write_text("[desk.risk]\nmax_open_positions = 5\n")
    with _legato_run(tmp_path, "--speed", "3000", "--port", "0", "--progress", "60") as process:
        base = _until(process, r"dashboard (http://\S+)/").group(1)
        config.write_text("[desk.risk]\nmax_open_positions = 2\n")
        process.send_signal(signal.SIGHUP)
        applied = _until(process, r"config reload (.*)").group(1)
        config.write_text(
            '[desk.risk]\nmax_open_positions = 2\n[desk.venue]\nstarting_balance = "5000"\n'
        )
        process.send_signal(signal.SIGHUP)
        refused = _until(process, r"config reload (.*)").group(1)
        request = urllib.request.Request(
            f"{base}/desk/config/reload",
            method="POST",
            headers={"Authorization": "Bearer run-test-token"},
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=30)
        conflict = answer.value.code, json.load(answer.value)
        with urllib.request.urlopen(f"{base}/metrics", timeout=30) as scrape:
            families = {f.name for f in text_string_to_metric_families(scrape.read().decode())}
        _, errors = _interrupt(process)
    assert process.returncode == 0, errors[-3000:]
    assert applied.startswith("applied: risk.max_open_positions: 5 -> 2")
    assert refused.startswith("refused, nothing changed")
    assert "venue.starting_balance: 100000 -> 5000" in refused
    status, body = conflict
    assert status == 409
    assert [c["field"] for c in body["error"]["details"]["refused"]] == ["venue.starting_balance"]
    assert {"legato_desk_equity", "legato_desk_agent_latency_seconds"} <= families
