"""Scheduled jobs leave a retained health with last_success and period_s for the monitor."""

from __future__ import annotations

import asyncio
from pathlib import Path

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


def test_cleanup_and_export_report_as_scheduled_jobs(vv: VV, probe: Probe, tmp_path: Path) -> None:
    import json as _json

    assert vv.vv("keys", "generate").returncode == 0
    (vv.home / "logs").mkdir(parents=True, exist_ok=True)
    (vv.home / "logs" / "app.log").write_text('{"time": "2026-01-02T10:00:00Z", "message": "x"}\n')
    root = tmp_path / "old"
    root.mkdir()
    cleaned = vv.vv("cleanup", "--days", "1", "--dirs", str(root), "--job-period", "86400")
    assert cleaned.returncode == 0, cleaned.stderr
    cleanup = probe.wait_health("cleanup", "offline")["details"]
    assert cleanup["period_s"] == 86400 and cleanup["last_success"]
    exported = vv.vv("export", "--date", "2026-01-02", "--job-period", "86400", "--json")
    assert exported.returncode == 0, exported.stderr
    assert _json.loads(exported.stdout)["status"] in ("written", "empty")
    export = probe.wait_health("export", "offline")["details"]
    assert export["last_result"] == "success" and export["period_s"] == 86400
