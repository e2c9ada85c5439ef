"""Scheduled jobs leave a retained health with last_success and period_s for the monitor."""

from __future__ import annotations

import asyncio

from conftest import VV, Probe

from bus.client import MqttError
from bus.jobs import report_job


def test_job_runs_publish_last_success_and_a_failure_keeps_it(vv: VV, probe: Probe) -> None:
    assert asyncio.run(report_job(vv.settings, "cleanup", 86400, True, {"files": 3}))
    first = probe.wait_health("cleanup", "offline")
    assert first["details"]["period_s"] == 86400 and first["details"]["last_result"] == "success"
    assert first["details"]["last_success"] == first["details"]["last_run"]
    assert "reason" not in first  # a graceful end, not a will: the monitor judges it by last_success

    seen = len(probe.health("cleanup"))
    assert asyncio.run(report_job(vv.settings, "cleanup", 86400, False, {"error": "disk"}))
    second = probe.wait_health("cleanup", "offline", after=seen)
    assert second["details"]["last_result"] == "failure"
    assert second["details"]["last_success"] == first["details"]["last_success"]


def test_job_without_a_broker_still_records_its_run(vv: VV) -> None:
    vv.broker.stop()
    try:
        assert not asyncio.run(report_job(vv.settings, "export", 3600, True, {}))
    except MqttError as exc:  # pragma: no cover - report_job must not raise
        raise AssertionError(exc) from exc
    assert (vv.home / "state" / "jobs" / "export.json").exists()
