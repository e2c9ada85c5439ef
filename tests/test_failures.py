"""Failures have the right shape: transient ones are retried (not dead-lettered) with an alert that
resolves, permanent ones are dead-lettered leaving nothing behind, a crashed background job exits
the process so that the supervisor restarts it, and firing alerts outlive a restart.

Real mosquitto, real node processes and DEFAULT retry/backoff/alert settings throughout. Storage is
made unwritable with `chattr +i` (the immutable attribute binds root too, unlike chmod).
"""

from __future__ import annotations

import asyncio
import errno
import json
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clips import Scene, require_shared, write_clip
from conftest import FIXTURES_DIR, VV, Probe, Publisher, free_port, read_lines, wait_until
from failing_node import Fragile
from test_dvr import StreamServer
from test_pipeline import FAST, drop

from bus.alerts import FiringAlerts, Severity
from bus.config import ConfigError, load_settings
from bus.node import RejectedMessage, is_transient

RETRYING = "Message keeps failing, retrying"
OUTAGE_S = 20.0


def video_new(publisher: Publisher, name: str) -> Any:
    data = json.loads((FIXTURES_DIR / "video.new" / "valid-1.json").read_text())
    data["original_name"] = name
    return publisher.event("video.new", data)


def alerts(probe: Probe, title: str, status: str | None = None) -> list[dict[str, Any]]:
    return [
        e["data"]
        for e in probe.events()
        if e["type"].startswith("alert.")
        and e["data"]["title"] == title
        and (status is None or e["data"]["status"] == status)
    ]


def dead_letters(vv: VV) -> list[dict[str, Any]]:
    return [
        line
        for path in sorted((vv.home / "state" / "deadletter").glob("*.jsonl"))
        for line in read_lines(path)
    ]


def notes(vv: VV) -> list[str]:
    with sqlite3.connect(vv.home / "state" / "nodes" / "fragile" / "node.sqlite") as db:
        return sorted(row[0] for row in db.execute("SELECT name FROM notes"))


def answered(probe: Probe) -> set[str]:
    return {e["causationid"] for e in probe.events("scan.done")}


def publish_while_down(vv: VV, probe: Probe, publisher: Publisher, names: list[str]) -> list[Any]:
    """Queue video.new events for a stopped Fragile (its session exists), then start it: the broker
    delivers them in one burst, so they are handled as one batch, one transaction."""
    first = vv.spawn("run", "failing_node:Fragile", log_name="fragile-0")
    probe.wait_health("fragile", "online")
    first.send_signal(signal.SIGTERM)
    assert first.wait(15) == 0
    events = [video_new(publisher, name) for name in names]
    for event in events:
        publisher.publish(event)
    return events


# ----------------------------------------------------------------------------- pure
def test_oserror_is_transient_and_refusals_bugs_and_validation_are_permanent() -> None:
    assert is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert is_transient(PermissionError(errno.EROFS, "Read-only file system"))
    assert is_transient(BlockingIOError(errno.EAGAIN, "locked"))
    assert is_transient(TimeoutError())

    class Forged(RejectedMessage, OSError):  # a refusal stays a refusal whatever else it is
        pass

    assert not is_transient(Forged("forged event"))
    assert not is_transient(RejectedMessage("no"))
    assert not is_transient(ValueError("bad value"))
    assert not is_transient(KeyError("video"))


def test_firing_alerts_fire_once_resolve_once_and_survive_a_restart(tmp_path: Path) -> None:
    sent: list[tuple[str, str, bool, dict[str, Any]]] = []

    async def publish(
        severity: Severity,
        title: str,
        details: str,
        *,
        context: Any = None,
        actions: Any = (),
        resolved: bool = False,
    ) -> dict[str, Any]:
        sent.append((severity, title, resolved, dict(context or {})))
        return {}

    path = tmp_path / "alerts.json"

    async def scenario() -> None:
        first = FiringAlerts(path, publish)
        assert await first.fire("stream:ERROR", "ERROR", "Camera down", "x", context={"stream": "s"})
        assert not await first.fire("stream:ERROR", "ERROR", "Camera down", "again", context={"stream": "s"})
        assert "stream:ERROR" in first and first.firing("stream:") == ["stream:ERROR"]
        after_restart = FiringAlerts(path, publish)
        assert not await after_restart.fire(
            "stream:ERROR", "ERROR", "Camera down", "y", context={"stream": "s"}
        )
        assert await after_restart.resolve("stream:ERROR", "back")
        assert not await after_restart.resolve("stream:ERROR", "back again")
        assert len(FiringAlerts(path, publish)) == 0

    asyncio.run(scenario())
    assert sent == [
        ("ERROR", "Camera down", False, {"stream": "s"}),
        ("ERROR", "Camera down", True, {"stream": "s"}),
    ]


# ----------------------------------------------------------------------------- handlers
def test_a_refused_handler_leaves_no_rows_and_no_events_and_its_batch_goes_on(
    vv: VV, probe: Probe, publisher: Publisher
) -> None:
    events = publish_while_down(vv, probe, publisher, ["a.mp4", "refused.mp4", "b.mp4"])
    vv.spawn("run", "failing_node:Fragile")
    wait_until(lambda: answered(probe) == {events[0].id, events[2].id}, 15, "a and b answered")
    alert = probe.wait_event("alert.error")[0]["data"]
    assert (
        alert["title"] == "Message refused and dead-lettered"
        and "refused on purpose" in alert["message_details"]
    )
    (dead,) = dead_letters(vv)
    assert "RejectedMessage: refused on purpose" in dead["reason"]
    assert notes(vv) == ["a.mp4", "b.mp4"]  # the refused handler's row was rolled back with its scan.done
    health = probe.wait_health("fragile", "online", after=len(probe.health("fragile")))
    assert (
        health["details"]["received"] == 3
        and health["details"]["outbox_depth"] == 0
        and health["details"]["handled"] == 2
    )
    assert answered(probe) == {events[0].id, events[2].id}


def test_a_transient_failure_is_retried_alerted_and_resolved_across_a_graceful_restart(
    vv: VV, probe: Probe, publisher: Publisher
) -> None:
    events = publish_while_down(vv, probe, publisher, ["a.mp4", "locked.mp4", "b.mp4"])
    (vv.home / "locked").touch()
    node = vv.spawn("run", "failing_node:Fragile")
    # the others of the batch are committed and acknowledged, not held back by the one that fails
    wait_until(lambda: answered(probe) == {events[0].id, events[2].id}, 15, "a and b answered")
    fired = wait_until(lambda: alerts(probe, RETRYING, "firing"), 30, "the retry alert (4th attempt)")[0]
    assert fired["severity"] == "ERROR" and fired["context"] == {
        "topic": "vv/edge1/video/new",
        "node": "fragile",
    }
    assert "BlockingIOError" in fired["message_details"] and "4 attempts" in fired["message_details"]
    retrying = probe.wait_health("fragile", "online", after=len(probe.health("fragile")))
    assert retrying["details"]["retrying"] == 1 and retrying["details"]["dead_letters"] == 0

    # a graceful stop while retrying: exit 0; the message is still the broker's to redeliver
    node.send_signal(signal.SIGTERM)
    assert node.wait(15) == 0
    (vv.home / "locked").unlink()
    vv.spawn("run", "failing_node:Fragile", log_name="fragile-2")  # no lock any more
    wait_until(lambda: events[1].id in answered(probe), 30, "the locked message handled after the restart")
    resolved = wait_until(lambda: alerts(probe, RETRYING, "resolved"), 10, "the retry alert resolved")
    assert [a["alert_id"] for a in resolved] == [fired["alert_id"]]
    assert len(alerts(probe, RETRYING, "firing")) == 1
    assert notes(vv) == ["a.mp4", "b.mp4", "locked.mp4"] and len(probe.events("scan.done")) == 3
    assert dead_letters(vv) == []


# ----------------------------------------------------------------------------- storage
@pytest.fixture
def detector_env() -> dict[str, str]:
    model = "models/yolo-fastest-1.1-coco/yolo-fastest-1.1.weights"
    return {**FAST, "VV_SCAN_MODEL": str(require_shared(model) / model), "VV_SCAN_THREADS": "1"}


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """`chattr -R +i` paths (root cannot write there either); always undone afterwards."""
    changed: list[Path] = []
    yield changed
    for path in changed:
        subprocess.run(["chattr", "-R", "-i", str(path)], check=True)


def make_immutable(changed: list[Path], path: Path, on: bool) -> None:
    result = subprocess.run(["chattr", "-R", "+i" if on else "-i", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"chattr +i does not work here ({result.stderr.strip()}): cannot make storage unwritable")
    if on:
        changed.append(path)
    else:
        changed.remove(path)
    probe = path / ".probe"
    try:
        probe.touch()
    except PermissionError:
        assert on
    else:
        probe.unlink()
        assert not on, "chattr +i did not stop root from writing"


def test_storage_unwritable_for_20s_then_the_video_completes_with_one_alert_fired_and_resolved(
    vv: VV,
    probe: Probe,
    detector_env: dict[str, str],
    immutable: list[Path],
    tmp_path: Path,
) -> None:
    env = detector_env
    assert vv.vv("keys", "generate").returncode == 0
    for node in ("journal", "ingest", "summarize", "sign"):
        vv.spawn("run", node, extra_env=env)
    # scan runs once so that its persistent session exists, then waits stopped for the video
    scan = vv.spawn("run", "scan", extra_env=env)
    for node in ("journal", "ingest", "summarize", "sign", "scan"):
        probe.wait_health(node, "online", timeout=30)
    scan.send_signal(signal.SIGTERM)
    assert scan.wait(15) == 0

    drop(vv, write_clip(tmp_path / "yard.mp4", [Scene("person", 1.5), Scene("dog", 1.5)]))
    video = probe.wait_event("video.new", timeout=30)[0]
    storage = vv.home / "storage"
    make_immutable(immutable, storage, True)
    outage_ends = time.monotonic() + OUTAGE_S
    vv.spawn("run", "scan", extra_env=env, log_name="scan-2")

    fired = wait_until(
        lambda: alerts(probe, RETRYING, "firing"), OUTAGE_S, "the retry alert during the outage"
    )
    assert fired[0]["source_component"] == "scan" and fired[0]["context"]["video"] == video["subject"]
    assert "PermissionError" in fired[0]["message_details"]
    time.sleep(max(0.0, outage_ends - time.monotonic()))  # the outage itself, not a synchronisation
    assert not probe.events("scan.done")
    make_immutable(immutable, storage, False)

    signed = probe.wait_event("logline.signed", timeout=60)[0]
    assert signed["subject"] == video["subject"]
    resolved = wait_until(lambda: alerts(probe, RETRYING, "resolved"), 10, "the retry alert resolved")
    assert [a["alert_id"] for a in resolved] == [fired[0]["alert_id"]]
    assert len(alerts(probe, RETRYING, "firing")) == 1
    assert [e["type"] for e in probe.events() if e["type"].startswith("alert.")] == ["alert.error"] * 2
    assert len(list(storage.rglob("*.logline.json"))) == 1
    assert dead_letters(vv) == []
    assert vv.vv("verify", str(storage)).returncode == 0


# ----------------------------------------------------------------------------- background jobs
@pytest.fixture
def server(tmp_path: Path) -> Iterator[StreamServer]:
    srv = StreamServer(
        write_clip(tmp_path / "camera.mp4", [Scene("", 1.0)]), free_port(), tmp_path / "ffmpeg.log"
    )
    yield srv
    srv.stop()


def test_a_crashed_background_exits_non_zero_and_vv_up_restarts_it(vv: VV, probe: Probe) -> None:
    direct = vv.spawn("run", "failing_node:BackgroundCrash", log_name="bgcrash-direct")
    assert direct.wait(30) == 1
    offline = probe.wait_health("bgcrash", "offline")
    assert offline["reason"] == "background crashed: RuntimeError: watcher broke on purpose"
    fired = alerts(probe, "Node failed and exits to be restarted", "firing")
    assert len(fired) == 1 and fired[0]["context"] == {"node": "bgcrash"}
    (vv.home / "bgcrash-crashed").unlink()  # crash once more, now under the supervisor

    up = vv.spawn("up", "--nodes", "failing_node:BackgroundCrash", log_name="up")
    restarted = wait_until(
        lambda: next(
            (
                child
                for doc in reversed(probe.health("supervisor"))
                if (child := doc["details"]["children"].get("bgcrash", {})).get("restarts") == 1
                and child.get("state") == "running"
            ),
            None,
        ),
        60,
        "bgcrash restarted once by the supervisor and running",
    )
    assert restarted["last_exit"].startswith("exited with code 1")
    assert probe.wait_health("bgcrash", "online")["pid"] == restarted["pid"]
    resolved = wait_until(
        lambda: alerts(probe, "Node failed and exits to be restarted", "resolved"), 15, "crash alert resolved"
    )
    assert {a["alert_id"] for a in resolved} == {fired[0]["alert_id"]}
    up.send_signal(signal.SIGTERM)
    assert up.wait(30) == 0


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_dvr_error_raised_before_a_restart_is_resolved_after_it(
    vv: VV,
    probe: Probe,
    server: StreamServer,
) -> None:
    env = {
        "VV_DVR_URL": server.url,
        "VV_DVR_SEGMENT_S": "1",
        "VV_DVR_RETRY_MIN_S": "0.2",
        "VV_DVR_RETRY_MAX_S": "0.5",
        "VV_DVR_ERROR_AFTER_ATTEMPTS": "2",
        "VV_DVR_OPEN_TIMEOUT_S": "5",
        "VV_DVR_READ_TIMEOUT_S": "5",
    }
    dvr = vv.spawn("run", "dvr", extra_env=env)  # the stream is not served yet: down from the start
    error = wait_until(lambda: alerts(probe, "Camera stream down", "firing"), 30, "alert.error")[0]
    dvr.terminate()
    assert dvr.wait(15) == 0
    server.start()
    vv.spawn("run", "dvr", extra_env=env, log_name="dvr-2")
    resolved = wait_until(lambda: alerts(probe, "Camera stream down", "resolved"), 30, "alert.error resolved")
    assert [a["alert_id"] for a in resolved] == [error["alert_id"]]
    assert len(alerts(probe, "Camera stream down", "firing")) == 1  # not raised again by the new process


def test_bad_retry_settings_stop_the_node_naming_the_key(tmp_path: Path) -> None:
    settings = load_settings({"VV_HOME": str(tmp_path), "VV_DEVICE": "edge1", "VV_BUS_RETRY_MIN_S": "0"})
    with pytest.raises(ConfigError, match=r"bus\.retry_min_s"):
        Fragile(settings)
