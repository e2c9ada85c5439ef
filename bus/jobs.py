"""Scheduled jobs (export, cleanup) report like the heartbeat pattern: a retained health document
whose details carry `period_s` and `last_success`, so the monitor raises an ERROR when a job has
not succeeded for longer than its period, whether it failed or simply stopped being run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from bus.argtypes import positive_float
from bus.client import MqttError
from bus.config import Settings
from bus.envelope import utc_now
from bus.fsutil import atomic_write_json
from bus.node import Node

log = logging.getLogger("vv.jobs")


class JobNode(Node):
    """A short-lived node standing for one run of a job; its final health is the job's record."""

    name = "job"

    def __init__(self, settings: Settings, job: str, details: dict[str, Any]) -> None:
        # Each job is its own producer: its health topic, client id, state and epoch are per job.
        self.name = job  # type: ignore[misc]
        self.job_details = details
        super().__init__(settings)

    def health_details(self) -> dict[str, Any]:
        return self.job_details


async def report_job(
    settings: Settings, job: str, period_s: float, succeeded: bool, summary: dict[str, Any]
) -> bool:
    """Record this run (last_success kept in state/jobs/) and publish the job's retained health.

    Returns False, with a warning, when the broker cannot be reached: the job's own work is done
    and the next run reports again.
    """
    state_path = settings.paths.state / "jobs" / f"{job}.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    now = utc_now()
    state.update(
        {
            "period_s": period_s,
            "last_run": now,
            "last_result": "success" if succeeded else "failure",
            "last_summary": summary,
        }
    )
    if succeeded:
        state["last_success"] = now
    state.setdefault("last_success", None)
    atomic_write_json(state_path, state)
    try:
        async with JobNode(settings, job, state).running(timeout=5.0):
            pass
    except MqttError as exc:
        log.warning("job %s: health not published: %s", job, exc)
        return False
    return True


def add_job_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--job-period",
        type=positive_float,
        metavar="SECONDS",
        help="run as a scheduled job: publish a retained health with last_success and this period, "
        "so the monitor raises an ERROR when a run is missed or fails (e.g. 86400 for a daily timer)",
    )


def report_if_job(
    args: argparse.Namespace, settings: Settings, job: str, succeeded: bool, summary: dict[str, Any]
) -> None:
    """For CLI jobs: report the run when `--job-period` was given; a broker problem only warns."""
    if args.job_period and not asyncio.run(report_job(settings, job, args.job_period, succeeded, summary)):
        print(f"vv {job}: warning: the broker did not take the job's health (see logs)", file=sys.stderr)
