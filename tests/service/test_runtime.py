"""The operator runtime: its reaper returns expired leases, and its settings summary."""

from __future__ import annotations

from typing import Any

import pytest

from legato.kernel.errors import ValidationError
from legato.kernel.simulation import SimulatedClock
from legato.orchestrator import Orchestrator
from legato.service import ServiceOptions


async def test_the_service_reaper_returns_an_abandoned_lease_to_the_queue(
    service_app: Any,
    serving: Any,
    orchestrator: Orchestrator,
    auth: dict[str, str],
    clock: SimulatedClock,
    wait_for: Any,
) -> None:
    async with serving(service_app) as client:
        task_id = (await client.post("/tasks", json={"name": "echo"}, headers=auth)).json()["id"]
        # A worker that claims and then dies: nobody heartbeats the lease.
        leases = await orchestrator.store.claim("crashed", ["default"], 1, clock.timestamp(), 2.0)
        assert [lease.task_id for lease in leases] == [task_id]

        async def returned() -> bool:
            state = (await client.get(f"/tasks/{task_id}")).json()["state"]
            return bool(state in ("retrying", "pending"))

        await wait_for(returned, within=10.0)
        stats = (await client.get("/stats")).json()
    assert stats["reaped"] == 1


def test_the_config_summary_leaves_the_token_and_password_out(make_app: Any) -> None:
    app = make_app()
    summary = app.state.runtime.info_config()
    assert summary["service"]["api_token_configured"] is True
    assert "s3cret-token-for-tests" not in repr(summary)


@pytest.mark.parametrize(
    ("field", "value"),
    [("watch_interval", 0), ("lag_threshold", float("nan")), ("max_body_bytes", 0)],
)
def test_bad_service_options_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        ServiceOptions(**{field: value})  # type: ignore[arg-type]
    assert caught.value.field == field
