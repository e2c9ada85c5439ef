"""Events are never lost to a consumer that was not listening yet: catch-up from the journal.

End-to-end tests run with the default settings of everything that decides recovery (reconciler
limits, reconnect backoff, health interval, catch-up timeouts): the reconciler would re-announce a
stuck video only after 900 s, so what completes here completed through catch-up and re-send.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from clips import Scene, require_shared, write_clip
from conftest import VV, Probe, wait_until
from test_pipeline import drop
from test_signed_pipeline import loglines, verify

from bus.catchup import GroupClaims
from bus.envelope import Event
from bus.store import NodeStore
from bus.topics import type_matches
from nodes.journal.catchup import ReplayRequest, read_page
from nodes.journal.store import Journal, iter_numbered, iter_records

PIPELINE = ("journal", "ingest", "scan", "summarize", "sign", "reconciler")
DEFAULTS = {  # the vv fixture shortens these for other tests; recovery is tested as shipped
    "VV_BUS_HEALTH_INTERVAL_S": "10",
    "VV_MQTT_RECONNECT_MAX_S": "30",
    "VV_MQTT_WILL_DELAY_S": "5",
}


@pytest.fixture
def env() -> dict[str, str]:
    root = require_shared("models/yolo-fastest-1.1-coco/yolo-fastest-1.1.weights")
    model = root / "models/yolo-fastest-1.1-coco/yolo-fastest-1.1.weights"
    return {**DEFAULTS, "VV_SCAN_MODEL": str(model), "VV_SCAN_THREADS": "1"}


def start(vv: VV, probe: Probe, env: dict[str, str], *nodes: str) -> None:
    for node in nodes:
        vv.spawn("run", node, extra_env=env)
    for node in nodes:
        probe.wait_health(node, "online", timeout=30)


def journal_events(vv: VV, event_type: str | None = None) -> list[dict[str, Any]]:
    records = iter_records(vv.home / "journal") if (vv.home / "journal").is_dir() else iter([])
    events = [r["event"] for r in records if isinstance(r.get("event"), dict)]
    return [e for e in events if event_type is None or e["type"] == event_type]


def latest_health(probe: Probe, node: str) -> dict[str, Any]:
    docs = probe.health(node)
    return docs[-1] if docs else {"details": {}}


def caught_up(probe: Probe, *nodes: str) -> bool:
    states = [latest_health(probe, node)["details"].get("catchup", {}).get("state") for node in nodes]
    return all(state == "caught up" for state in states)


# ----------------------------------------------------------------------------- units
def test_patterns_match_types_as_their_mqtt_filters_would() -> None:
    assert type_matches("video.new", "video.new") and type_matches("alert.error", "alert.*")
    assert type_matches("logline.signed", "#") and type_matches("cmd.ingest.pause", "cmd.#")
    assert not type_matches("video.new", "video.new.x") and not type_matches("alert.error.x", "alert.*")
    assert not type_matches("scan.done", "video.new")


def test_a_group_claims_each_event_once_and_a_worker_keeps_its_own(tmp_path: Path) -> None:
    one, two = GroupClaims(tmp_path / "scan.sqlite"), GroupClaims(tmp_path / "scan.sqlite")
    assert one.take("e1", "scan-a")
    assert not two.take("e1", "scan-b")  # the other worker skips it
    assert one.take("e1", "scan-a")  # a redelivery after scan-a crashed mid-event: still its own
    assert two.take("e2", "scan-b")
    one.close()
    two.close()


def test_outbox_keeps_acknowledged_rows_for_a_re_send_then_forgets_them(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.sqlite")
    with store.transaction():
        rows = [store.add_outbox(f"e{n}", "t", b"p", "application/json", False) for n in range(3)]
    before = time.time()
    store.mark_sent([rows[0].rowid, rows[1].rowid], keep_s=60)
    assert [r.event_id for r in store.pending()] == ["e2"] and store.outbox_depth() == 1
    assert [r.event_id for r in store.sent_since(before - 1)] == ["e0", "e1"]
    store.mark_sent([rows[2].rowid], keep_s=0)  # older acknowledged rows are pruned as it goes
    assert [r.event_id for r in store.sent_since(0)] == ["e2"]
    assert store.mark("journal") is None
    with store.transaction():
        store.set_mark("journal", 42)
    assert store.mark("journal") == 42
    store.close()


def _request(start: int | None, types: list[str], since: str = "2000-01-01T00:00:00Z") -> Event:
    args: dict[str, Any] = {"reply_to": "vv/edge1/catchup/scan", "types": types, "since": since}
    if start is not None:
        args["after"] = start
    return Event(
        type="cmd.journal.replay",
        source="vv://edge1/scan",
        device="edge1",
        epoch=1,
        seq=1,
        data={"args": args},
        datacontenttype="application/json",
    )


def test_the_journal_answers_from_a_position_by_type_in_pages(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j", segment_bytes=4096) as journal:
        for n in range(300):
            event_type = "video.new" if n % 3 == 0 else "scan.done"
            device = "edge2" if n == 150 else "edge1"
            event = {"type": event_type, "device": device, "id": f"e{n}", "data": {"pad": "x" * 40}}
            journal.append({"topic": "t", "received_at": "2026-11-22T19:00:00Z", "event": event})
        end = journal.next_record
    assert sum(1 for _ in iter_numbered(tmp_path / "j", 290)) == 10  # earlier segments are skipped
    assert [n for n, _ in iter_numbered(tmp_path / "j", 150)][:2] == [150, 151]

    request = ReplayRequest.from_event(_request(99, ["video.new"]), "edge1", end)
    pages, position = [], request.start
    while position < request.end:
        events, position = read_page(tmp_path / "j", request, "edge1", position, max_bytes=1 << 20)
        pages.append(events)
    ids = [e["id"] for page in pages for e in page]
    assert ids == [f"e{n}" for n in range(99, 300, 3) if n != 150]  # its type, its device, in order
    assert len(pages) == 2 and len(pages[0]) == 64

    stale = ReplayRequest.from_event(_request(10_000, ["video.new"]), "edge1", end)
    assert stale.start == 0  # a position past the end: another journal; everything within the bound
    recent = ReplayRequest.from_event(_request(None, ["#"], since="2026-11-23T00:00:00Z"), "edge1", end)
    assert read_page(tmp_path / "j", recent, "edge1", 0, 1 << 20) == ([], end)
    with pytest.raises(ValueError, match="not a topic of device"):
        ReplayRequest.from_event(_request(0, ["#"]), "edge9", end)


# ----------------------------------------------------------------------------- end to end
def test_a_video_dropped_before_scan_ever_ran_ends_as_one_logline(
    vv: VV, probe: Probe, env: dict[str, str], tmp_path: Path
) -> None:
    assert vv.vv("keys", "generate").returncode == 0
    start(vv, probe, env, *(n for n in PIPELINE if n != "scan"))
    drop(vv, write_clip(tmp_path / "early.mp4", [Scene("person", 1.0)]))
    wait_until(lambda: journal_events(vv, "video.new"), 30, "the journal to record video.new")
    recorded = time.monotonic()
    time.sleep(10)  # the scenario (scan starts 10 s after the video was announced), not a wait for state
    assert time.monotonic() - recorded >= 10
    vv.spawn("run", "scan", extra_env=env)
    started = time.monotonic()
    wait_until(lambda: len(loglines(vv)) == 1, 30, "the LogLine of the early video")
    print(f"\nLogLine {time.monotonic() - started:.1f}s after scan started")
    probe.wait_event("logline.signed", timeout=15)
    assert len(probe.events("scan.done")) == 1 and len(loglines(vv)) == 1
    wait_until(lambda: caught_up(probe, "scan"), 30, "scan's health to say it caught up")
    health = latest_health(probe, "scan")["details"]
    assert health["catchup"]["replayed"] >= 1 and health["handled"] == 1
    code, output = verify(vv)
    assert code == 0, output


def test_two_workers_started_after_the_video_scan_it_once(
    vv: VV, probe: Probe, env: dict[str, str], tmp_path: Path
) -> None:
    start(vv, probe, env, "journal", "ingest")
    drop(vv, write_clip(tmp_path / "v.mp4", [Scene("dog", 1.0)]))
    wait_until(lambda: journal_events(vv, "video.new"), 30, "the journal to record video.new")
    for instance in ("a", "b"):  # both new sessions: both catch up, both are answered with the video
        vv.spawn("run", "scan", "--instance", instance, extra_env=env, log_name=f"scan-{instance}")
    wait_until(lambda: caught_up(probe, "scan-a", "scan-b"), 60, "both workers to catch up")
    probe.wait_event("scan.done", timeout=30)
    handled = [latest_health(probe, f"scan-{i}")["details"]["handled"] for i in "ab"]
    replayed = [latest_health(probe, f"scan-{i}")["details"]["catchup"]["replayed"] for i in "ab"]
    assert replayed == [1, 1] and sorted(handled) == [0, 1]
    assert len(probe.events("scan.done")) == 1


def test_a_node_waits_for_a_down_journal_and_catches_up_when_it_returns(
    vv: VV, probe: Probe, env: dict[str, str], tmp_path: Path
) -> None:
    journal = vv.spawn("run", "journal", extra_env=env)
    start(vv, probe, env, "ingest")
    probe.wait_health("journal", "online", timeout=30)
    drop(vv, write_clip(tmp_path / "v.mp4", [Scene("horses", 1.0)]))
    wait_until(lambda: journal_events(vv, "video.new"), 30, "the journal to record video.new")
    journal.terminate()
    assert journal.wait(15) == 0
    vv.spawn("run", "scan", extra_env=env)
    waiting = wait_until(
        lambda: latest_health(probe, "scan")["details"].get("catchup", {}).get("unanswered"),
        60,
        "scan's health to say the journal does not answer",
    )
    assert waiting >= 1 and "has not answered" in latest_health(probe, "scan")["details"]["catchup"]["reason"]
    assert not probe.events("scan.done")
    vv.spawn("run", "journal", extra_env=env, log_name="journal-2")
    probe.wait_event("scan.done", timeout=60)  # within the capped retry interval of the journal's return


def _per_video(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["subject"] for e in {e["id"]: e for e in events}.values())


def test_twelve_videos_through_two_broker_kills_end_as_one_logline_each(
    vv: VV, probe: Probe, env: dict[str, str], tmp_path: Path
) -> None:
    assert vv.vv("keys", "generate").returncode == 0
    start(vv, probe, env, *PIPELINE)
    photos = ["person", "dog", "horses", "giraffe"]
    clips = [write_clip(tmp_path / f"v{n:02d}.mp4", [Scene(photos[n % 4], 0.6 + n * 0.1)]) for n in range(12)]
    probe.close()
    returned = 0.0
    for n, clip in enumerate(clips):
        drop(vv, clip)
        if n in (3, 8):  # killed the moment the file is taken: its video.new is being published
            dropped = vv.home / "input" / clip.name
            wait_until(lambda: not dropped.exists(), 20, "file picked up")  # noqa: B023 - used at once
            vv.broker.kill()
            vv.broker.start()
            returned = time.monotonic()
    wait_until(lambda: len(loglines(vv)) == 12, 120, "12 LogLines within 120 s of the broker's return")
    print(f"\n12 LogLines {time.monotonic() - returned:.1f}s after the broker's second return")
    lines = loglines(vv)
    assert sorted(line["seq"] for line in lines) == list(range(1, 13))
    assert len({line["video"]["id"] for line in lines}) == 12
    code, output = verify(vv)
    assert code == 0, output

    # Nothing processed twice: one event per stage per video in the journal, one handling per node.
    wait_until(lambda: len(_per_video(journal_events(vv, "logline.signed"))) == 12, 30, "journal caught up")
    for event_type in ("video.new", "scan.done", "summary.done", "logline.signed"):
        counts = _per_video(journal_events(vv, event_type))
        assert len(counts) == 12 and set(counts.values()) == {1}, (event_type, counts)
    watcher = vv.probe()
    try:

        def stats() -> dict[str, dict[str, Any]]:
            return {node: latest_health(watcher, node)["details"] for node in ("scan", "summarize", "sign")}

        wait_until(lambda: all(s.get("handled") == 12 for s in stats().values()), 30, "node stats")
        final = stats()
        print({node: {k: s[k] for k in ("handled", "duplicates", "catchup")} for node, s in final.items()})
        assert all(s["handled"] == 12 and s["dead_letters"] == 0 for s in final.values())
        attempts = json.loads((vv.home / "state/nodes/scan/attempts.json").read_text())
        assert attempts == {}
    finally:
        watcher.close()
