"""The monitor node's `[monitor]` settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bus.config import section


@section("monitor")
@dataclass(frozen=True)
class MonitorSettings:
    """The monitor node: liveness, self-healing restarts, resources, stuck videos, storage, jobs."""

    # who restarts a node: vv (`cmd.supervisor.restart` to `vv up`) or systemd (`systemctl restart vv-<node>`)
    supervisor: Literal["vv", "systemd"] = "vv"
    check_interval_s: float = 5.0
    failure_threshold: int = 3  # missed beats before a node is unhealthy (HEALTHCHECK_FAILURE_THRESHOLD)
    startup_grace_s: float = 30.0  # after a restart (or the monitor's start) a node is not judged this long
    max_restart_attempts: int = 5  # within restart_window_s, then FATAL (CONTAINER_MAX_RESTART_ATTEMPTS)
    restart_window_s: float = 600.0
    stability_s: float = 300.0  # a node up this long has its restart count reset
    backoff_min_s: float = 5.0
    backoff_max_s: float = 300.0
    cpu_percent: float = 90.0  # of one core, per node process; 0 turns the check off
    memory_percent: float = 50.0  # resident memory as a share of RAM; 0 turns the check off
    resource_sustain_s: float = 120.0  # above a threshold this long before the WARNING
    journal_check_s: float = 60.0  # how often the journal is folded for stuck videos
    stuck_ingested_s: float = 1800.0  # per stage: longer than this without moving on is stuck; 0: no limit
    stuck_scanned_s: float = 900.0
    stuck_summarized_s: float = 600.0
    storage_probe: str = ""  # directory the write probe goes to; "": VV_HOME/storage
    job_grace: float = 1.5  # a job is overdue when its last success is older than period_s x this
    log_lines: int = 20  # last app.log lines of a node put in its FATAL alert
    # node_exporter's textfile collector: this .prom file (e.g. /var/lib/node_exporter/textfile/vv.prom) is
    # rewritten every check round with node health, queue depths and the scan's real-time factor; "": off
    textfile: str = ""
    # Home Assistant MQTT discovery: retained homeassistant/sensor/vv_<device>/<node>_health/config per node
    homeassistant: bool = False
