"""The restart policy (pure, injected clock), the process supervisor, and `vv up` on a real broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import psutil
from conftest import VV, Probe, Publisher, wait_until

from nodes.ops.supervisor import Child, ChildSpec, RestartPolicy, RestartTracker, Supervisor, describe_exit

POLICY = RestartPolicy(max_restarts=3, window_s=100.0, stability_s=50.0, backoff_min_s=1.0, backoff_max_s=8.0)


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------- policy (pure)
def test_restarted_max_times_then_fatal_with_capped_jittered_backoff() -> None:
    clock = FakeClock()
    tracker = RestartTracker(POLICY, clock)
    delays = []
    for attempt in range(3):
        clock.now += 1
        delay = tracker.failure(f"crash {attempt}")
        assert delay is not None
        delays.append(delay)
    assert delays[0] == 1.0  # first restart: the minimum (jitter range is [min, min])
    assert 1.0 <= delays[1] <= 2.0 and 1.0 <= delays[2] <= 4.0  # full jitter under a doubling cap
    clock.now += 1
    assert tracker.failure("crash 3") is None
    assert tracker.fatal is not None and tracker.fatal.reason == "crash 3"
    assert tracker.total == 3
    assert [r.split(" ", 1)[1] for r in tracker.reasons()] == ["crash 0", "crash 1", "crash 2", "crash 3"]
    assert tracker.failure("again") is None  # FATAL stays FATAL


def test_backoff_is_capped() -> None:
    clock = FakeClock()
    policy = RestartPolicy(
        max_restarts=50, window_s=1e9, stability_s=1e9, backoff_min_s=1.0, backoff_max_s=8.0
    )
    tracker = RestartTracker(policy, clock)
    delays = [tracker.failure("crash") for _ in range(40)]
    assert all(d is not None and 1.0 <= d <= 8.0 for d in delays)


def test_stability_window_resets_the_count() -> None:
    clock = FakeClock()
    tracker = RestartTracker(POLICY, clock)
    tracker.failure("a")
    tracker.failure("b")
    tracker.mark_up()
    clock.now += POLICY.stability_s - 1
    assert not tracker.refresh() and len(tracker.restarts) == 2  # not stable yet
    clock.now += 1
    assert tracker.refresh()
    assert tracker.restarts == [] and tracker.total == 2
    # the budget is whole again: three more restarts before FATAL, the first at the minimum delay
    assert tracker.failure("c") == POLICY.backoff_min_s
    assert tracker.failure("d") is not None and tracker.failure("e") is not None
    assert tracker.failure("f") is None


def test_short_runs_do_not_reset_but_the_window_forgets_old_restarts() -> None:
    clock = FakeClock()
    tracker = RestartTracker(POLICY, clock)
    for _ in range(3):
        tracker.mark_up()
        clock.now += 10  # up 10 s each time: < stability
        tracker.failure("crash")
    clock.now += POLICY.window_s  # the first restarts fall out of the window
    tracker.refresh()
    assert len(tracker.restarts) == 1
    assert tracker.failure("late crash") is not None


def test_history_round_trips_including_fatal() -> None:
    clock = FakeClock()
    tracker = RestartTracker(POLICY, clock)
    for _ in range(4):
        tracker.failure("boom")
    restored = RestartTracker(POLICY, clock)
    restored.load(json.loads(json.dumps(tracker.to_dict())))
    assert restored.fatal == tracker.fatal and restored.restarts == tracker.restarts and restored.total == 3
    assert restored.failure("still broken") is None
    broken = RestartTracker(POLICY, clock)
    broken.load({"total": "x", "restarts": [{"time": "bad"}, None], "fatal": 3})
    assert broken.total == 0 and broken.restarts == [] and broken.fatal is None


def test_describe_exit() -> None:
    assert describe_exit(1, 0.84) == "exited with code 1 after 0.8s"
    assert describe_exit(-signal.SIGKILL, 3) == "killed by SIGKILL after 3.0s"


# ----------------------------------------------------------------------------- supervisor (real processes)
def _supervisor(
    tmp_path: Path, specs: list[ChildSpec], events: list[tuple[str, str, str]], **kw: Any
) -> Supervisor:
    async def listener(child: Child, kind: str, message: str) -> None:
        events.append((child.name, kind, message))

    policy = RestartPolicy(
        max_restarts=2, window_s=60, stability_s=60, backoff_min_s=0.01, backoff_max_s=0.05
    )
    options: dict[str, Any] = {"startup_grace_s": 0.2, "stop_timeout_s": 5.0, "log_lines": 5, **kw}
    return Supervisor(specs, policy, history_path=tmp_path / "supervisor.json", listener=listener, **options)


def test_crash_loop_goes_fatal_once_keeps_output_and_persists(tmp_path: Path) -> None:
    events: list[tuple[str, str, str]] = []
    crash = ChildSpec("crash", (sys.executable, "-c", "import sys; print('about to fail'); sys.exit(3)"))

    async def scenario() -> dict[str, Any]:
        sup = _supervisor(tmp_path, [crash], events)
        await sup.start()
        child = sup.children["crash"]
        assert child.task is not None
        await child.task  # ends when the child is FATAL
        return sup.status()["crash"]

    status = asyncio.run(scenario())
    assert status["state"] == "fatal" and status["restarts"] == 2 and status["pid"] is None
    assert [k for _, k, _ in events].count("started") == 3
    fatal = [m for _, k, m in events if k == "fatal"]
    assert len(fatal) == 1
    exits = [m for _, k, m in events if k == "exited"]
    assert exits[0].startswith("exited with code 3") and exits[0].endswith("about to fail")
    saved = json.loads((tmp_path / "supervisor.json").read_text())
    assert saved["crash"]["fatal"]["reason"].startswith("exited with code 3")

    # a later supervisor keeps it down until reset
    events.clear()

    async def again(reset: bool) -> str:
        sup = _supervisor(tmp_path, [crash], events)
        await sup.start(reset=reset)
        state = sup.children["crash"].state
        await sup.stop()
        return state

    assert asyncio.run(again(reset=False)) == "fatal"
    assert [k for _, k, _ in events] == ["skipped"]
    assert asyncio.run(again(reset=True)) in ("starting", "running")


def test_a_fatal_child_is_tried_again_with_a_fresh_budget_after_the_retry_delay(tmp_path: Path) -> None:
    """The mechanism, with a short delay (the default is 900 s): no person is needed once the
    cause (a full disk, a missing mount) is gone."""
    events: list[tuple[str, str, str]] = []
    crash = ChildSpec("crash", (sys.executable, "-c", "import sys; sys.exit(3)"))

    async def scenario() -> None:
        sup = _supervisor(tmp_path, [crash], events, fatal_retry_s=0.3)
        await sup.start()
        while [k for _, k, _ in events].count("fatal") < 2:
            await asyncio.sleep(0.05)
        await sup.stop()
        task = sup.children["crash"].task
        assert task is not None and task.done()  # a stop while waiting out FATAL ends it

    asyncio.run(asyncio.wait_for(scenario(), 60))  # its polls wait on events, within a deadline
    kinds = [k for _, k, _ in events]
    assert kinds.count("started") == 6  # 3 in each budget
    assert any(m.startswith("retrying after FATAL") for _, k, m in events if k == "restarting")


def test_stop_escalates_to_sigkill_and_stale_restart_is_ignored(tmp_path: Path) -> None:
    events: list[tuple[str, str, str]] = []
    stubborn = ChildSpec(
        "stubborn",
        (
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
            "time.sleep(600)",
        ),
    )

    async def scenario() -> tuple[int, str, str, int | None]:
        sup = _supervisor(tmp_path, [stubborn], events, stop_timeout_s=0.3)
        await sup.start()
        child = sup.children["stubborn"]
        while "ready" not in child.lines:  # its output is the readiness signal
            await asyncio.sleep(0.01)
        first = child.pid
        assert first is not None
        stale = await sup.restart("stubborn", "test", pid=first + 1_000_000)
        done = await sup.restart("stubborn", "hung", pid=first)  # SIGTERM ignored: SIGKILL after 0.3 s
        while list(child.lines).count("ready") < 2:  # the second process ignores SIGTERM too
            await asyncio.sleep(0.01)
        second = child.pid
        await sup.stop()
        return first, stale, done, second

    first, stale, done, second = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert stale.startswith("ignored") and done.startswith("restarted")
    assert second is not None and second != first
    assert not psutil.pid_exists(first) and not psutil.pid_exists(second)
    assert not [e for e in events if e[1] == "exited"]  # commanded restarts and stops are not failures
    assert sum("SIGKILL" in m for _, k, m in events if k == "line") == 2


# ----------------------------------------------------------------------------- vv up (real broker)
def _children(probe: Probe, *names: str) -> dict[str, Any]:
    """The supervisor's latest health once it lists every name with a pid."""

    def found() -> dict[str, Any] | None:
        for doc in reversed(probe.health("supervisor")):
            children = doc.get("details", {}).get("children", {})
            if all(children.get(n, {}).get("pid") for n in names):
                return children  # type: ignore[no-any-return]
        return None

    return wait_until(found, 20, f"supervisor health listing {names}")  # type: ignore[no-any-return]


MONITOR_ENV = {  # the monitor beside: it must not restart what the supervisor already restarted
    "VV_MONITOR_CHECK_INTERVAL_S": "0.1",
    "VV_MONITOR_STARTUP_GRACE_S": "0.6",
    "VV_MONITOR_BACKOFF_MIN_S": "0.05",
    "VV_MONITOR_BACKOFF_MAX_S": "0.1",
}
UP_ENV = {
    "VV_BUS_HEALTH_INTERVAL_S": "0.3",
    "VV_SUPERVISOR_MAX_RESTARTS": "2",
    "VV_SUPERVISOR_BACKOFF_MIN_S": "0.05",
    "VV_SUPERVISOR_BACKOFF_MAX_S": "0.2",
    "VV_SUPERVISOR_STARTUP_GRACE_S": "0.5",
    "VV_SUPERVISOR_STOP_TIMEOUT_S": "5",
}


def test_vv_up_restarts_a_killed_node_stops_a_crash_loop_and_exits_cleanly(vv: VV, probe: Probe) -> None:
    up = vv.spawn(
        "up",
        "--nodes",
        "echo_node:Echo,crashy_node:Crashy,monitor",
        log_name="up",
        extra_env={**UP_ENV, **MONITOR_ENV},
    )
    first = probe.wait_health("echo", "online")
    children = _children(probe, "echo")
    assert children["echo"]["pid"] == first["pid"]

    # SIGKILL: the supervisor restarts it and its health returns online from a new process
    os.kill(first["pid"], signal.SIGKILL)
    again = wait_until(
        lambda: next(
            (d for d in probe.health("echo") if d["status"] == "online" and d["pid"] != first["pid"]), None
        ),
        20,
        "echo online again with a new pid",
    )
    assert psutil.Process(again["pid"]).ppid() == up.pid
    killed = probe.wait_event("alert.error", where=lambda e: e["data"]["title"] == "Node killed by a signal")
    assert (
        killed[0]["data"]["context"]["node"] == "echo" and "SIGKILL" in killed[0]["data"]["message_details"]
    )
    down = [d for d in probe.health("echo") if d["details"].get("reported_by") == "supervisor"]
    assert (
        down and down[0]["status"] == "offline" and "SIGKILL" in down[0]["reason"]
    )  # at once, no will delay
    probe.wait_event(
        "alert.error",
        where=lambda e: e["data"]["title"] == "Node killed by a signal" and e["data"]["status"] == "resolved",
    )

    # crash on every start: restarted exactly max times, then one CRITICAL
    critical = probe.wait_event(
        "alert.critical", where=lambda e: e["data"]["context"].get("node") == "crashy"
    )
    alert = critical[0]["data"]
    assert alert["source_component"] == "supervisor" and "broken on purpose" in alert["message_details"]
    fatal = wait_until(
        lambda: next(
            (
                d["details"]["children"]["crashy"]
                for d in reversed(probe.health("supervisor"))
                if d["details"]["children"]["crashy"]["state"] == "fatal"
            ),
            None,
        ),
        10,
        "crashy FATAL in the supervisor's health",
    )
    assert fatal["restarts"] == 2
    crashy_down = wait_until(
        lambda: [d for d in probe.health("crashy") if d.get("reason", "").startswith("FATAL")],
        10,
        "FATAL health",
    )
    assert crashy_down[-1]["status"] == "offline" and "tried again in 900s" in crashy_down[-1]["reason"]
    children = _children(probe, "echo", "monitor")
    assert children["echo"]["restarts"] == 1 and children["echo"]["pid"] == again["pid"]  # not twice
    pids = [c["pid"] for c in children.values() if c["pid"]]

    # SIGTERM: every child stops, `vv up` exits 0
    up.send_signal(signal.SIGTERM)
    assert up.wait(30) == 0
    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert probe.wait_health("echo", "offline")["pid"] == again["pid"]
    assert len(probe.events("alert.critical")) == 1
    output = (vv.home / "up.out").read_text()
    assert "crashy       FATAL" in output and "all children stopped" in output


def test_vv_up_starts_its_own_broker_when_none_listens(vv: VV, tmp_path: Path) -> None:
    vv.broker.stop()
    up = vv.spawn("up", "--nodes", "echo_node:Echo", log_name="up", extra_env=UP_ENV)
    probe = wait_until(lambda: _try_probe(vv), 20, "the broker started by vv up")
    try:
        echo = probe.wait_health("echo", "online")
        broker_pid = _children(probe, "broker", "echo")["broker"]["pid"]
    finally:
        probe.close()
    # a node is reported started once it is subscribed (its health online), not when it is forked
    said = f"echo         started     subscribed, pid {echo['pid']}"
    wait_until(lambda: said in (vv.home / "up.out").read_text(), 20, "vv up to report echo started")
    output = (vv.home / "up.out").read_text()
    assert output.index(f"echo         launched    pid {echo['pid']}") < output.index(said)
    up.send_signal(signal.SIGINT)
    assert up.wait(30) == 0
    assert not psutil.pid_exists(broker_pid)


def _try_probe(vv: VV) -> Probe | None:
    try:
        return vv.probe()
    except (OSError, AssertionError):
        return None


def test_vv_up_rejects_an_unknown_node(vv: VV) -> None:
    result = vv.vv("up", "--nodes", "nosuchnode")
    assert result.returncode == 2
    assert "unknown node 'nosuchnode'" in result.stderr
    twice = vv.vv("up", "--nodes", "echo_node:Echo,echo_node:Echo")
    assert twice.returncode == 2 and "listed twice" in twice.stderr


def test_restart_command_without_node_is_refused_not_fatal(
    vv: VV, probe: Probe, publisher: Publisher
) -> None:
    up = vv.spawn("up", "--nodes", "echo_node:Echo", log_name="up", extra_env=UP_ENV)
    _children(probe, "echo")
    publisher.publish(publisher.event("cmd.supervisor.restart", {"args": {"pid": 1}}))
    error = probe.wait_event("alert.error", where=lambda e: e["data"]["source_component"] == "supervisor")
    assert "needs args.node" in error[0]["data"]["message_details"]
    up.send_signal(signal.SIGTERM)
    assert up.wait(30) == 0
