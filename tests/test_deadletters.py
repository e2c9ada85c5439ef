"""A garbage storm is bounded: dead letters by size, age and payload prefix; alerts folded with a count."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from conftest import VV, Probe, Publisher, read_lines, wait_until

from bus.alerts import StormFolder, build_alert
from bus.deadletter import DeadLetters


def put(dead: DeadLetters, payload: bytes, reason: str = "garbage") -> None:
    dead.put(node="n", topic="vv/d/video/new", payload=payload, content_type=None, reason=reason)


def test_a_large_payload_keeps_a_prefix_and_the_hash_of_the_whole(tmp_path: Path) -> None:
    dead = DeadLetters(tmp_path / "n.jsonl", payload_bytes=16)
    put(dead, b"x" * 1000)
    (record,) = dead.read()
    assert base64.b64decode(record["payload_b64"]) == b"x" * 16 and record["truncated"]
    assert record["bytes"] == 1000 and len(record["sha256"]) == 64


def test_the_store_keeps_the_newest_half_when_full(tmp_path: Path) -> None:
    dead = DeadLetters(tmp_path / "n.jsonl", max_bytes=20_000)
    for n in range(400):
        put(dead, f"payload {n}".encode())
    size = (tmp_path / "n.jsonl").stat().st_size
    assert size <= 20_000
    kept = dead.read()
    assert base64.b64decode(kept[-1]["payload_b64"]) == b"payload 399"  # the newest survive
    assert 30 < len(kept) < 400


def test_records_past_the_age_limit_go_at_start(tmp_path: Path) -> None:
    dead = DeadLetters(tmp_path / "n.jsonl", max_age_s=3600)
    put(dead, b"old")
    put(dead, b"new")
    lines = (tmp_path / "n.jsonl").read_text().splitlines()
    old = {**json.loads(lines[0]), "time": "2026-01-01T00:00:00.000Z"}
    (tmp_path / "n.jsonl").write_text(json.dumps(old) + "\n" + lines[1] + "\n")
    assert dead.prune() == 1
    assert [base64.b64decode(r["payload_b64"]) for r in dead.read()] == [b"new"]


def alert(title: str = "Message refused and dead-lettered", topic: str = "t") -> dict[str, object]:
    return build_alert(
        severity="ERROR", title=title, details="d", source="n", device="d", context={"topic": topic}
    )


def test_a_storm_goes_out_as_a_burst_then_one_alert_with_the_count() -> None:
    folder = StormFolder(burst=3, window_s=60)
    sent = [folder.admit(alert(topic=f"t{n}"), now=n * 0.01) for n in range(100)]
    assert sent[:3] == [True] * 3 and not any(sent[3:])
    assert folder.admit(alert(title="Another problem"), now=1.0)  # other titles are not folded
    assert folder.due(now=59) == []
    (folded,) = folder.due(now=61)
    assert folded["count"] == 97 and "97 alerts like this folded" in folded["message_details"]
    assert folder.admit(alert(), now=62)  # a new window


def test_two_thousand_garbage_messages_make_a_few_alerts_and_a_bounded_store(
    vv: VV, probe: Probe, publisher: Publisher
) -> None:
    node = vv.spawn("run", "echo_node:Echo")
    probe.wait_health("echo", "online")
    big = b"\xc1" * 100_000  # msgpack's one never-used byte: garbage, and large
    for _ in range(2000):
        publisher.raw("vv/edge1/video/new", big, "application/msgpack")
    dead_path = vv.home / "state" / "deadletter" / "echo.jsonl"
    wait_until(
        lambda: (
            probe.wait_health("echo", "online", after=len(probe.health("echo")))["details"]["dead_letters"]
            == 2000
        ),
        60,
        "2000 dead letters",
    )
    records = read_lines(dead_path)
    assert len(records) == 2000 and all(r["truncated"] and r["bytes"] == 100_000 for r in records)
    assert dead_path.stat().st_size < 2000 * 6000  # payloads kept as 4 KiB prefixes, not 100 KB
    alerts = probe.events("alert.error")
    assert 1 <= len(alerts) <= 10  # the default burst, not 2000
    node.terminate()  # a graceful stop sends what was folded
    assert node.wait(30) == 0
    folded = probe.wait_event("alert.error", count=len(alerts) + 1)[-1]["data"]
    assert len(alerts) + folded["count"] == 2000
    assert json.dumps(folded).count("alerts like this folded") == 1
