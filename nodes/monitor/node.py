"""The monitor node: self-healing, and the device's vital signs turned into alerts people can act on.

Two separate probes per node, from its retained health:
- liveness: heartbeats (a node is unhealthy after `monitor.failure_threshold` missed beats) and the
  last will (`offline` with a reason). A node that went offline on its own (graceful stop: offline
  without a reason) was stopped on purpose and is left alone. An unhealthy node is restarted through
  the active supervisor (`vv`: `cmd.supervisor.restart` to `vv up`, carrying the pid seen, so a
  request about a process already replaced is ignored; `systemd`: `systemctl restart vv-<node>`),
  with a startup grace period after each restart, capped exponential backoff with jitter, and a
  windowed limit: after `monitor.max_restart_attempts` restarts within `monitor.restart_window_s`
  the node is FATAL: the monitor stops trying and raises ONE alert.critical with the restart reasons
  and the node's last lines of logs/app.log. A node up for `monitor.stability_s` has its count reset.
  Under `vv up`, a child the supervisor is already restarting (or has given up on) is its business.
- health: the node's own status; `degraded` raises a WARNING with its reason.
Besides: WARNING on sustained high CPU or memory of a node process (psutil, by the pid in its health),
ERROR for a video stuck in a stage past its limit (journal fold), CRITICAL when VV_HOME storage stops
being writable (a probe file created, fsynced and removed each round), and ERROR when a scheduled job
(a health whose details carry `period_s` and `last_success`) has not succeeded within its period.
Every alert is resolved when its condition clears. Restart history and firing alerts persist in
the node's state directory, so a restarted monitor neither forgets a FATAL node nor pages again.

The node applies the judgements of nodes/monitor/checks.py; each probe above is one method here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bus.broker import Grant
from bus.client import MqttError
from bus.config import Settings
from bus.envelope import JSON, Event
from bus.fsutil import atomic_write_json
from bus.node import Node, on, on_health
from bus.version import VERSION
from nodes.journal.fold import format_duration, stuck
from nodes.journal.index import open_videos
from nodes.journal.store import JournalError
from nodes.monitor import homeassistant, textfile
from nodes.monitor.checks import (
    Job,
    Watched,
    graceful_offline,
    is_job,
    job_overdue,
    last_log_lines,
    liveness,
    probe_storage,
    stage_limits,
)
from nodes.monitor.settings import MonitorSettings
from nodes.ops.supervisor import RestartPolicy, RestartTracker, load_history

log = logging.getLogger("vv.monitor")

LIVE = ("online", "degraded")


class MonitorNode(Node):
    name = "monitor"
    produces = ("cmd.supervisor.restart",)  # restarts a hung node through `vv up`

    def __init__(self, settings: Settings, instance: str = "") -> None:
        super().__init__(settings, instance)
        self.cfg = settings.section(MonitorSettings)
        self.policy = RestartPolicy.from_settings(self.cfg, self.cfg.max_restart_attempts)
        self.nodes: dict[str, Watched] = {}
        self.jobs: dict[str, Job] = {}
        self.supervised: dict[str, Any] | None = None  # children in the supervisor's health, if known
        self.storage_dir = Path(self.cfg.storage_probe) if self.cfg.storage_probe else self.paths.storage
        self.state_path = self.state_dir / "monitor.json"
        self.rounds = 0  # check rounds in which nodes were judged (after the monitor's own grace)
        self._history: dict[str, dict[str, Any]] = {}
        self._dirty = False
        self._storage_probe: asyncio.Task[str | None] | None = None
        self._next_journal_check = 0.0
        self._began = time.monotonic()
        self._own = self.node_name
        self.health_docs: dict[str, dict[str, Any]] = {}  # every node's last health, for the textfile
        self.scan_timing: textfile.ScanTiming | None = None
        self.discovered: set[str] = set()  # nodes whose Home Assistant config is published

    @classmethod
    def grant(cls, settings: Settings, node: str) -> Grant:
        """With Home Assistant discovery on, it also writes the device's discovery configs."""
        base = super().grant(settings, node)
        if not settings.section(MonitorSettings).homeassistant:
            return base
        return dataclasses.replace(base, write=(*base.write, homeassistant.discovery_filter(settings.device)))

    # ------------------------------------------------------------------ lifecycle
    async def setup(self) -> None:
        saved = load_history(self.state_path)
        self._history = {k: v for k, v in saved.get("nodes", {}).items() if isinstance(v, dict)}
        self._began = time.monotonic()

    async def background(self) -> None:
        while not await self.sleep(self.cfg.check_interval_s):
            await self.check()

    async def teardown(self) -> None:
        self._save()

    def health_details(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "firing": len(self.alerts),
            "nodes": {
                name: {
                    "state": w.state,
                    "pid": w.pid,
                    "restarts": len(w.tracker.restarts),
                    "problem": w.problem,
                }
                for name, w in self.nodes.items()
            },
            "jobs": sorted(self.jobs),
        }

    # ------------------------------------------------------------------ input
    @on_health
    async def on_node_health(self, node: str, doc: dict[str, Any]) -> None:
        self.health_docs[node] = doc  # its own too, as the broker holds it
        if self.cfg.homeassistant and node not in self.discovered:
            await self._discover(node)
        if node == self._own:
            return
        raw = doc.get("details")
        details: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if node == "supervisor":
            children = details.get("children")
            live = doc["status"] in LIVE and isinstance(children, dict)
            self.supervised = children if live else None
        if is_job(details):
            first = self.jobs[node].first_seen if node in self.jobs else time.monotonic()
            self.jobs[node] = Job(details, first)
            return
        watched = self._watched(node)
        watched.status, watched.reason = doc["status"], str(doc.get("reason") or "")
        watched.graceful = graceful_offline(doc)
        pid = doc.get("pid")
        watched.pid = pid if isinstance(pid, int) else None
        interval = details.get("health_interval_s")
        watched.interval_s = (
            float(interval)
            if isinstance(interval, int | float) and interval > 0
            else self.settings.bus.health_interval_s
        )
        if watched.status in LIVE:
            watched.last_beat = time.monotonic()
        if watched.status == "degraded":
            await self.alerts.fire(
                f"degraded:{node}",
                "WARNING",
                "Node degraded",
                f"{node} reports degraded: {watched.reason or 'no reason given'}",
                context={"node": node},
                actions=[f"Read the reason and logs/app.log (node={node}); the node keeps running"],
            )
        elif watched.status == "online":
            await self.alerts.resolve(f"degraded:{node}", f"{node} is online again")

    async def _discover(self, node: str) -> None:
        """Publish `node`'s retained discovery config once (again after a failed attempt)."""
        device = self.settings.device
        config = homeassistant.sensor_config(device, node, VERSION)
        try:
            await self.publish_document(homeassistant.config_topic(device, node), config, JSON, retain=True)
        except MqttError as exc:
            log.info("Home Assistant config for %s not sent yet: %s", node, exc)
            return
        self.discovered.add(node)

    @on("scan.done")
    async def on_scan_done(self, event: Event) -> None:
        """The scan's real-time factor for the textfile: video seconds per second of scanning."""
        elapsed = event.data.get("elapsed_s")
        if isinstance(elapsed, int | float):
            video = float(event.data["video"]["duration_s"])
            self.scan_timing = textfile.ScanTiming(video, float(elapsed), time.time())

    def _watched(self, node: str) -> Watched:
        watched = self.nodes.get(node)
        if watched is None:
            tracker = RestartTracker(self.policy)
            tracker.load(self._history.get(node, {}))
            watched = self.nodes[node] = Watched(
                node, tracker, interval_s=self.settings.bus.health_interval_s
            )
        return watched

    # ------------------------------------------------------------------ the check round
    async def check(self) -> None:
        """One round of every probe; alerts fire and resolve as conditions change."""
        now = time.monotonic()
        if now >= self._began + self.cfg.startup_grace_s:
            self.rounds += 1
            for watched in list(self.nodes.values()):
                await self._judge(watched, now)
        await self._check_resources(now)
        await self._check_storage()
        await self._check_jobs(now)
        if now >= self._next_journal_check:
            self._next_journal_check = now + self.cfg.journal_check_s
            await self._check_journal()
        self._save()
        if self.cfg.textfile:
            text = textfile.render(self.settings.device, self.health_docs, self.scan_timing)
            textfile.write(Path(self.cfg.textfile), text)

    async def _judge(self, w: Watched, now: float) -> None:
        tracker = w.tracker
        if now < w.grace_until:
            return
        if w.status == "offline" and w.graceful:
            w.state, w.problem, w.restart_at = "stopped", "", None
            tracker.mark_down()
            return
        problem = liveness(w.status, w.reason, now - w.last_beat, w.interval_s, self.cfg.failure_threshold)
        if problem is None:
            await self._alive(w)
            return
        tracker.mark_down()
        w.problem = problem
        if tracker.fatal is not None:
            w.state = "fatal"
            return
        if not self._restartable(w.name):
            w.state = "unmanaged"
            await self.alerts.fire(
                f"down:{w.name}",
                "ERROR",
                "Node down, not restartable",
                f"{w.name} is {problem}; no supervisor of this device can restart it",
                context={"node": w.name},
                actions=[
                    f"Start it again (vv up, or systemctl start vv-{w.name}) and read logs/app.log (node={w.name})"
                ],
            )
            return
        handled = self._supervisor_handles(w)
        if handled:
            w.state, w.problem = "supervised", f"{problem}; supervisor: {handled}"
            return
        if w.restart_at is None:
            delay = tracker.failure(problem)
            self._dirty = True
            if delay is None:
                w.state = "fatal"
                await self._fatal(w)
                return
            w.state, w.restart_at = "unhealthy", now + delay
            await self.alerts.fire(
                f"unhealthy:{w.name}",
                "WARNING",
                "Node unhealthy, restarting",
                f"{w.name} is {problem}; restarting it through {self.cfg.supervisor}",
                context={"node": w.name},
                actions=[
                    f"Nothing yet: the monitor restarts it; read logs/app.log (node={w.name}) if it recurs"
                ],
            )
        if w.restart_at is not None and now >= w.restart_at:
            w.restart_at = None
            w.state = "restarting"
            w.grace_until = now + self.cfg.startup_grace_s
            attempt = f"{len(tracker.restarts)}/{self.policy.max_restarts}"
            await self._restart(w, f"monitor: {problem} (attempt {attempt})")

    async def _alive(self, w: Watched) -> None:
        tracker = w.tracker
        w.state, w.problem, w.restart_at = "up", "", None
        tracker.mark_up()
        if tracker.refresh():
            self._dirty = True
        await self.alerts.resolve(f"unhealthy:{w.name}", f"{w.name} is alive again")
        await self.alerts.resolve(f"down:{w.name}", f"{w.name} is alive again")
        if tracker.fatal is not None:  # someone fixed and restarted it: watch it afresh
            tracker.reset()
            self._dirty = True
        await self.alerts.resolve(
            f"fatal:{w.name}", f"{w.name} is alive again; the monitor watches it afresh"
        )

    def _restartable(self, node: str) -> bool:
        if self.cfg.supervisor == "systemd":
            return True
        if node == "supervisor":
            return False  # `vv up` itself: nothing on the bus can restart it
        return self.supervised is None or node in self.supervised

    def _supervisor_handles(self, w: Watched) -> str:
        """Under `vv up`: what the supervisor is already doing about this node ('' if nothing)."""
        if self.cfg.supervisor != "vv" or self.supervised is None:
            return ""
        child = self.supervised.get(w.name)
        if not isinstance(child, dict):
            return ""
        state, pid = child.get("state"), child.get("pid")
        if state != "running":
            return f"child {state}"
        if pid is not None and w.pid is not None and pid != w.pid:
            return f"already replaced pid {w.pid} by {pid}"
        return ""

    async def _restart(self, w: Watched, reason: str) -> None:
        log.warning("restarting %s: %s", w.name, reason, extra={"target": w.name})
        if self.cfg.supervisor == "vv":
            if w.pid is None:
                # No process seen: nothing of ours to replace. `vv up` restarts what it started, and a
                # restart without a pid is an operator's retry that would also lift a FATAL child.
                log.info("not restarting %s: no pid seen in its health", w.name, extra={"target": w.name})
                return
            args = {"node": w.name, "reason": reason, "pid": w.pid}
            await self.emit("cmd.supervisor.restart", {"args": args})
            return
        unit = f"vv-{w.name}"
        try:
            proc = await asyncio.create_subprocess_exec(
                "systemctl",
                "restart",
                unit,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 120)
        except (OSError, TimeoutError) as exc:
            log.error("systemctl restart %s failed: %s", unit, exc)
            return
        if proc.returncode != 0:
            log.error(
                "systemctl restart %s failed (%s): %s", unit, proc.returncode, out.decode(errors="replace")
            )

    async def _fatal(self, w: Watched) -> None:
        lines = last_log_lines(self.paths.logs / "app.log", w.name, self.cfg.log_lines)
        reasons = "\n".join(f"  - {r}" for r in w.tracker.reasons())
        output = "\n".join(f"  {line}" for line in lines) or "  (none found)"
        restart = "vv up --reset" if self.cfg.supervisor == "vv" else f"systemctl restart vv-{w.name}"
        await self.alerts.fire(
            f"fatal:{w.name}",
            "CRITICAL",
            "Node unhealthy, restarts exhausted",
            f"{w.name} was restarted {len(w.tracker.restarts)} times within {self.policy.window_s:g}s and is "
            f"still {w.problem}; the monitor has stopped restarting it.\nRestart reasons:\n{reasons}\n"
            f"Last lines of logs/app.log:\n{output}",
            context={"node": w.name, "restarts": len(w.tracker.restarts)},
            actions=[
                f"Read the log lines above and logs/app.log (node={w.name})",
                f"Fix the cause, then restart it ({restart}); the monitor resumes once it is back online",
            ],
        )

    async def _check_resources(self, now: float) -> None:
        checks = (("cpu", self.cfg.cpu_percent), ("memory", self.cfg.memory_percent))
        for w in self.nodes.values():
            if w.status not in LIVE or w.pid is None:
                continue
            try:
                if w.process is None or w.process.pid != w.pid:
                    w.process = psutil.Process(w.pid)
                    w.process.cpu_percent(None)  # primes the counter; the next call measures
                    continue
                figures = {"cpu": w.process.cpu_percent(None), "memory": w.process.memory_percent()}
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                w.process = None
                continue
            for kind, threshold in checks:
                key = f"{kind}:{w.name}"
                if threshold <= 0 or figures[kind] <= threshold:
                    w.high_since.pop(kind, None)
                    await self.alerts.resolve(key, f"{w.name} {kind} back to {figures[kind]:.1f}%")
                    continue
                since = w.high_since.setdefault(kind, now)
                if now - since >= self.cfg.resource_sustain_s:
                    await self.alerts.fire(
                        key,
                        "WARNING",
                        f"High {kind} use",
                        f"{w.name} (pid {w.pid}) at {figures[kind]:.1f}% {kind} for "
                        f"{format_duration(now - since)} (threshold {threshold:g}%)",
                        context={"node": w.name, "key": kind, "percent": round(figures[kind], 1)},
                        actions=[
                            f"Check what {w.name} is doing (logs/app.log, its health); restart it if it leaks"
                        ],
                    )

    async def _check_storage(self) -> None:
        """The probe runs in a thread; one that is still hanging from the last round counts as a failure."""
        task = self._storage_probe
        if task is None or task.done():
            task = self._storage_probe = asyncio.get_running_loop().create_task(
                asyncio.to_thread(probe_storage, self.storage_dir)
            )
        done, _ = await asyncio.wait({task}, timeout=max(self.cfg.check_interval_s, 1.0))
        error = task.result() if done else "the write probe did not finish (storage not responding)"
        if error is None:
            await self.alerts.resolve("storage", f"{self.storage_dir} is writable again")
            return
        await self.alerts.fire(
            "storage",
            "CRITICAL",
            "Storage not writable",
            f"cannot write to {self.storage_dir}: {error}",
            context={"path": str(self.storage_dir)},
            actions=[
                "Check the disk: mounted, read-only after errors (dmesg), full, permissions",
                "Videos cannot be stored until this is fixed",
            ],
        )

    async def _check_jobs(self, now: float) -> None:
        wall = datetime.now(UTC)
        for name, job in self.jobs.items():
            overdue = job_overdue(job.details, now - job.first_seen, wall, self.cfg.job_grace)
            if overdue is None:
                await self.alerts.resolve(f"job:{name}", f"{name} succeeded again")
                continue
            await self.alerts.fire(
                f"job:{name}",
                "ERROR",
                "Scheduled job overdue",
                f"{name}: {overdue}",
                context={"job": name},
                actions=[
                    f"Check the job's schedule (timer/cron) and its last run in logs/app.log (node={name})"
                ],
            )

    async def _check_journal(self) -> None:
        limits = stage_limits(self.cfg)
        if not limits:
            return
        try:
            states = await asyncio.to_thread(open_videos, self.paths)
        except FileNotFoundError:
            states = {}
        except (JournalError, OSError) as exc:
            log.warning("journal not readable for the stuck-video check: %s", exc)
            return
        stuck_now = {s.video_id: s for s in stuck(states, limits, datetime.now(UTC))}
        for video_id, state in stuck_now.items():
            since = state.stage_since
            assert state.stage is not None and since is not None
            waited = (datetime.now(UTC) - since).total_seconds()
            await self.alerts.fire(
                f"stuck:{video_id}",
                "ERROR",
                "Video stuck in pipeline",
                f"video {video_id} has been {state.stage} for {format_duration(waited)} "
                f"(limit {format_duration(limits[state.stage])})",
                context={"video": video_id, "stage": state.stage},
                actions=[f"See `vv status {video_id}`; check the node of the next stage and its logs"],
            )
        for key in self.alerts.firing("stuck:"):
            if key.removeprefix("stuck:") not in stuck_now:
                await self.alerts.resolve(key, "the video moved on")

    # ------------------------------------------------------------------ alerts and state
    def _save(self) -> None:
        if not self._dirty:
            return
        history = {**self._history, **{name: w.tracker.to_dict() for name, w in self.nodes.items()}}
        try:
            atomic_write_json(self.state_path, {"nodes": history})
        except OSError as exc:
            log.error("monitor state not saved to %s: %s", self.state_path, exc)
            return
        self._dirty = False
