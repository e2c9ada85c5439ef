"""Process supervision for `vv up`: children started in order, restarted within a budget, stopped cleanly.

`RestartTracker` is the restart policy as pure logic over an injected clock (the monitor uses it
too): capped exponential backoff with full jitter between restarts, a windowed limit after which
the child is FATAL and left alone (a crash loop must page a person, not spin forever), and a
stability window after which a child that stayed up has its count forgotten. History is kept on
disk so that a crash loop is still caught when the supervisor itself is restarted.

`Supervisor` applies the policy to child processes: each runs in its own session (a Ctrl-C in the
terminal reaches only `vv up`, which stops the children in order) and dies with its parent
(PR_SET_PDEATHSIG), so a killed `vv up` never leaves orphans that fight a new one over client ids.

One concern: the restart policy and the processes it governs (a node's status lives in nodes/ops/up.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bus.backoff import Backoff
from bus.fsutil import atomic_write_json
from nodes.monitor.settings import MonitorSettings
from nodes.ops.settings import SupervisorSettings

log = logging.getLogger("vv.supervisor")

ChildState = Literal["stopped", "starting", "running", "backoff", "stopping", "fatal"]
EventKind = Literal["started", "running", "exited", "restarting", "fatal", "skipped", "stopped", "line"]
Clock = Callable[[], float]


# ----------------------------------------------------------------------------- restart policy
@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int  # restarts allowed within window_s; the next failure is FATAL
    window_s: float
    stability_s: float  # up this long: the count is reset
    backoff_min_s: float
    backoff_max_s: float

    @classmethod
    def from_settings(cls, cfg: SupervisorSettings | MonitorSettings, max_restarts: int) -> RestartPolicy:
        """The supervisor and the monitor share the window, stability and backoff keys."""
        return cls(max_restarts, cfg.restart_window_s, cfg.stability_s, cfg.backoff_min_s, cfg.backoff_max_s)


@dataclass(frozen=True)
class RestartRecord:
    time: float  # wall clock (seconds since the epoch), so that history survives a reboot
    reason: str


class RestartTracker:
    """The restart budget of one child (or one node, for the monitor). Pure: time comes from `clock`."""

    def __init__(self, policy: RestartPolicy, clock: Clock = time.time) -> None:
        self.policy = policy
        self.clock = clock
        self.restarts: list[RestartRecord] = []  # within the window, oldest first
        self.total = 0  # every restart ever recorded, for display
        self.fatal: RestartRecord | None = None  # when and why restarting was given up
        self.up_since: float | None = None
        self._backoff = Backoff(policy.backoff_min_s, policy.backoff_max_s)

    def mark_up(self) -> None:
        """The child is up (again); the stability window runs from the first call."""
        if self.up_since is None:
            self.up_since = self.clock()

    def mark_down(self) -> None:
        self.up_since = None

    def refresh(self) -> bool:
        """Forget restarts outside the window; reset the count after a stable run. True if reset."""
        now = self.clock()
        self.restarts = [r for r in self.restarts if now - r.time <= self.policy.window_s]
        if self.up_since is not None and now - self.up_since >= self.policy.stability_s and self.restarts:
            self.restarts.clear()
            self._backoff.reset()
            return True
        return False

    def failure(self, reason: str) -> float | None:
        """Record a failure: the delay before the restart, or None when the budget is spent (FATAL)."""
        self.refresh()
        self.up_since = None
        if self.fatal is not None:
            return None
        now = self.clock()
        if len(self.restarts) >= self.policy.max_restarts:
            self.fatal = RestartRecord(now, reason)
            return None
        self._backoff.attempt = len(self.restarts)
        delay = self._backoff.next_delay()
        self.restarts.append(RestartRecord(now, reason))
        self.total += 1
        return delay

    def reasons(self) -> list[str]:
        """The reasons of the restarts in the window and of the failure that made it FATAL."""
        records = [*self.restarts, *([self.fatal] if self.fatal else [])]
        return [f"{_clock_text(r.time)} {r.reason}" for r in records]

    def reset(self) -> None:
        """An operator's retry: forget FATAL and the count (the total stays, for the record)."""
        self.fatal = None
        self.restarts.clear()
        self._backoff.reset()

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "restarts": [{"time": r.time, "reason": r.reason} for r in self.restarts],
            "fatal": {"time": self.fatal.time, "reason": self.fatal.reason} if self.fatal else None,
        }

    def load(self, doc: Mapping[str, Any]) -> None:
        """Restore what `to_dict` saved; malformed entries are skipped, not fatal."""
        total = doc.get("total")
        self.total = total if isinstance(total, int) else 0
        self.restarts = [r for r in map(_record, doc.get("restarts") or []) if r is not None]
        self.fatal = _record(doc.get("fatal"))


def _record(doc: Any) -> RestartRecord | None:
    if (
        isinstance(doc, dict)
        and isinstance(doc.get("time"), int | float)
        and isinstance(doc.get("reason"), str)
    ):
        return RestartRecord(float(doc["time"]), doc["reason"])
    return None


def _clock_text(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def load_history(path: Path) -> dict[str, dict[str, Any]]:
    """Per-name tracker documents from a JSON file; a missing or damaged file is an empty history."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("restart history %s unreadable (%s); starting afresh", path, exc)
        return {}
    return {k: v for k, v in doc.items() if isinstance(v, dict)} if isinstance(doc, dict) else {}


# ----------------------------------------------------------------------------- child processes
@dataclass(frozen=True)
class ChildSpec:
    name: str
    command: Sequence[str]
    tier: int = 1  # started in increasing tier order, stopped in decreasing (broker 0, nodes 1)
    ready: Callable[[], bool] | None = None  # polled after start before the next tier starts
    env: Mapping[str, str] | None = None


@dataclass
class Child:
    spec: ChildSpec
    tracker: RestartTracker
    lines: deque[str]
    state: ChildState = "stopped"
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0  # monotonic
    last_exit: str = ""
    requested_restarts: int = 0
    stop_requested: bool = False
    restart_reason: str | None = None  # set while a commanded restart takes the process down
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.returncode is None else None

    def summary(self) -> dict[str, Any]:
        """Per-child figures for the supervisor's health document."""
        self.tracker.refresh()
        running = self.pid is not None
        return {
            "pid": self.pid,
            "state": self.state,
            "restarts": self.tracker.total,
            "restarts_in_window": len(self.tracker.restarts),
            "restarts_requested": self.requested_restarts,
            "uptime_s": round(time.monotonic() - self.started_at, 1) if running else 0.0,
            "last_exit": self.last_exit,
        }


Listener = Callable[[Child, EventKind, str], Awaitable[None]]


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """In the child before exec: SIGTERM when the parent dies (Linux), so no orphan outlives `vv up`."""
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        ctypes.CDLL(libc_name, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def describe_exit(returncode: int, uptime_s: float) -> str:
    """`exited with code 1 after 0.8s` or `killed by SIGKILL after 12.0s`."""
    if returncode < 0:
        try:
            what = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            what = f"killed by signal {-returncode}"
    else:
        what = f"exited with code {returncode}"
    return f"{what} after {uptime_s:.1f}s"


class Supervisor:
    """Starts children, restarts those that exit within a `RestartPolicy`, stops them in order.

    A child that exits on its own is a failure: restarted after a backoff delay, until the windowed
    limit makes it FATAL (not restarted; the listener hears `fatal` once). `restart()` is a
    commanded restart (by an operator or the monitor): it does not spend the budget.
    """

    def __init__(
        self,
        specs: Iterable[ChildSpec],
        policy: RestartPolicy,
        *,
        history_path: Path,
        startup_grace_s: float,
        stop_timeout_s: float,
        log_lines: int,
        listener: Listener | None = None,
        clock: Clock = time.time,
        ready_timeout_s: float = 15.0,
        fatal_retry_s: float = 0.0,
    ) -> None:
        self.history_path = history_path
        self.fatal_retry_s = fatal_retry_s
        self.startup_grace_s = startup_grace_s
        self.stop_timeout_s = stop_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.listener = listener
        self.children: dict[str, Child] = {}
        history = load_history(history_path)
        for spec in specs:
            if spec.name in self.children:
                raise ValueError(f"child {spec.name!r} is listed twice")
            tracker = RestartTracker(policy, clock)
            tracker.load(history.get(spec.name, {}))
            self.children[spec.name] = Child(spec, tracker, deque(maxlen=max(1, log_lines)))
        self._stopping = False

    # ------------------------------------------------------------------ public
    async def start(self, reset: bool = False) -> None:
        """Start every child, tier by tier (waiting for a tier's readiness probes before the next).

        A child left FATAL by an earlier run stays down unless `reset` (an operator's retry).
        """
        if reset:
            for child in self.children.values():
                child.tracker.reset()
            self._save()
        for tier in sorted({c.spec.tier for c in self.children.values()}):
            group = [c for c in self.children.values() if c.spec.tier == tier]
            for child in group:
                if self._stopping:
                    return
                if child.tracker.fatal is not None:
                    child.state = "fatal"
                    since = _clock_text(child.tracker.fatal.time)
                    await self._notify(
                        child, "skipped", f"FATAL since {since} (earlier run); {self.retry_note()}"
                    )
                    if self.fatal_retry_s > 0:
                        self._launch(child, after_fatal=True)
                    continue
                self._launch(child)
            await self._wait_ready(group)

    async def restart(self, name: str, reason: str, pid: int | None = None) -> str:
        """A commanded restart; returns what was done, in words. With `pid`, only that process is
        restarted: a request about a process the supervisor has already replaced is stale."""
        child = self.children.get(name)
        if child is None:
            return f"ignored: {name!r} is not a child of this supervisor"
        if self._stopping or child.stop_requested:
            return "ignored: shutting down"
        if pid is not None and child.pid != pid:
            return f"ignored: {name} is no longer pid {pid} (now {child.pid or 'not running'}, {child.state})"
        child.requested_restarts += 1
        if child.task is None or child.task.done():  # FATAL or stopped (only reachable without pid)
            child.tracker.reset()
            self._save()
            self._launch(child)
            return f"started {name} ({reason})"
        if child.process is not None and child.process.returncode is None:
            child.restart_reason = reason
            await self._notify(child, "restarting", f"restart requested: {reason}")
            await self._terminate(child)
            return f"restarted {name} ({reason})"
        child.wake.set()  # in backoff: restart now
        return f"restarting {name} now ({reason})"

    async def stop(self, names: Iterable[str] | None = None) -> None:
        """Stop children (all, or those named), the highest tier first: SIGTERM, then SIGKILL after
        `stop_timeout_s`. Waits until each is reaped."""
        wanted = set(self.children) if names is None else set(names)
        if names is None:
            self._stopping = True
        for tier in sorted({c.spec.tier for c in self.children.values()}, reverse=True):
            group = [c for c in self.children.values() if c.spec.tier == tier and c.name in wanted]
            for child in group:
                child.stop_requested = True
                child.wake.set()
            await asyncio.gather(*(self._terminate(c) for c in group))
            await asyncio.gather(*(c.task for c in group if c.task is not None), return_exceptions=True)
            for child in group:
                if child.state != "fatal":
                    child.state = "stopped"

    def status(self) -> dict[str, dict[str, Any]]:
        return {name: child.summary() for name, child in self.children.items()}

    def names(self, tier: int | None = None) -> list[str]:
        return [c.name for c in self.children.values() if tier is None or c.spec.tier == tier]

    # ------------------------------------------------------------------ internals
    def _launch(self, child: Child, after_fatal: bool = False) -> None:
        child.stop_requested = False
        child.restart_reason = None
        if not after_fatal:
            child.state = "starting"
        child.task = asyncio.get_running_loop().create_task(
            self._run(child, after_fatal), name=f"child-{child.name}"
        )

    def retry_note(self) -> str:
        if self.fatal_retry_s > 0:
            return f"tried again in {self.fatal_retry_s:g}s (or on cmd.supervisor.restart)"
        return "no longer restarted"

    async def _wait_out_fatal(self, child: Child) -> bool:
        """A FATAL child waits `fatal_retry_s` (or a commanded restart), then gets a fresh budget: the
        cause (a full disk, a missing mount) is often gone by then and no person should be needed.
        False: it stays down (retries off, or stopping)."""
        if self.fatal_retry_s <= 0:
            return False
        child.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(child.wake.wait(), self.fatal_retry_s)
        if child.stop_requested:
            return False
        child.tracker.reset()
        self._save()
        await self._notify(child, "restarting", "retrying after FATAL with a fresh restart budget")
        return True

    async def _run(self, child: Child, after_fatal: bool = False) -> None:
        """One child's life: start, wait for exit, decide (stop, commanded restart, backoff, FATAL)."""
        if after_fatal and not await self._wait_out_fatal(child):
            return
        while True:
            reason = await self._run_once(child)
            if child.stop_requested:
                child.state = "stopped"
                await self._notify(child, "stopped", reason)
                return
            if child.restart_reason is not None:
                child.restart_reason = None
                continue
            delay = child.tracker.failure(reason)
            self._save()
            await self._notify(child, "exited", reason)
            if delay is None:
                child.state = "fatal"
                limit = child.tracker.policy
                budget = f"{limit.max_restarts} restarts within {limit.window_s:g}s"
                await self._notify(child, "fatal", f"restart budget spent ({budget}); {self.retry_note()}")
                if not await self._wait_out_fatal(child):
                    return
                continue
            child.state = "backoff"
            count = len(child.tracker.restarts)
            await self._notify(
                child, "restarting", f"restart {count}/{child.tracker.policy.max_restarts} in {delay:.1f}s"
            )
            child.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.wake.wait(), delay)
            if child.stop_requested:
                child.state = "stopped"
                await self._notify(child, "stopped", "stopped while waiting to restart")
                return

    async def _run_once(self, child: Child) -> str:
        """Start the process and wait for it to end; returns how it ended, in words."""
        child.state = "starting"
        env = {**os.environ, **(child.spec.env or {})}
        try:
            process = await asyncio.create_subprocess_exec(
                *child.spec.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            child.last_exit = f"could not start {child.spec.command[0]}: {exc}"
            return child.last_exit
        child.process = process
        child.started_at = time.monotonic()
        child.tracker.mark_up()
        await self._notify(child, "started", f"pid {process.pid}")
        reader = asyncio.get_running_loop().create_task(self._read(child, process))
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), self.startup_grace_s)
        except TimeoutError:
            if child.state == "starting":
                child.state = "running"
                await self._notify(child, "running", f"up for {self.startup_grace_s:g}s")
        returncode = await process.wait()
        await reader
        uptime = time.monotonic() - child.started_at
        child.last_exit = describe_exit(returncode, uptime)
        last_line = next((line for line in reversed(child.lines) if line.strip()), "")
        if returncode <= 0 or child.stop_requested or child.restart_reason is not None or not last_line:
            return child.last_exit
        return f"{child.last_exit}: {last_line.strip()[:300]}"  # an error exit: its last words say why

    async def _read(self, child: Child, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while True:
            try:
                raw = await process.stdout.readline()
            except ValueError:  # a line longer than the stream limit: keep going with the rest
                continue
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\n")
            child.lines.append(line)
            await self._notify(child, "line", line)

    async def _terminate(self, child: Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        child.state = "stopping"
        self._signal(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), self.stop_timeout_s)
        except TimeoutError:
            log.warning("%s did not stop within %.1fs: SIGKILL", child.name, self.stop_timeout_s)
            await self._notify(child, "line", f"did not stop within {self.stop_timeout_s:g}s: SIGKILL")
            self._signal(process.pid, signal.SIGKILL)
            await process.wait()

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        """Signal the child's process group (its helpers too); it leads its own session."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    async def _wait_ready(self, group: list[Child]) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        for child in group:
            probe = child.spec.ready
            while probe is not None and not probe() and child.pid is not None:
                if time.monotonic() > deadline:
                    await self._notify(child, "line", f"not ready after {self.ready_timeout_s:g}s; going on")
                    break
                await asyncio.sleep(0.05)

    async def _notify(self, child: Child, kind: EventKind, message: str) -> None:
        if kind != "line":
            log.info("%s %s: %s", child.name, kind, message, extra={"child": child.name})
        if self.listener is not None:
            try:
                await self.listener(child, kind, message)
            except Exception:
                log.exception("supervisor listener failed on %s %s", child.name, kind)

    def _save(self) -> None:
        try:
            atomic_write_json(
                self.history_path, {name: c.tracker.to_dict() for name, c in self.children.items()}
            )
        except OSError as exc:
            log.error("restart history not saved to %s: %s", self.history_path, exc)
