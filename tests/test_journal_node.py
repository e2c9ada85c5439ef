"""The journal node against a real broker: everything recorded, torn tail survived, status from disk."""

from __future__ import annotations

import json
import signal
import subprocess

from conftest import FIXTURES_DIR, VV, Probe, Publisher, wait_until

from bus.envelope import Event

VIDEO = "0123456789abcdef0123456789abcdef"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES_DIR / name / "valid-1.json").read_text())


def publish_pipeline(publisher: Publisher, stages: list[str], subject: str = VIDEO) -> list[str]:
    ids = []
    for event_type in stages:
        event = publisher.event(event_type, fixture(event_type), subject=subject)
        publisher.publish(event)
        ids.append(event.id)
    return ids


def status_json(vv: VV, video: str) -> dict:
    result = vv.vv("status", video, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_journal_survives_a_torn_write_and_status_reads_it(
    vv: VV, probe: Probe, publisher: Publisher
) -> None:
    journal = vv.spawn("run", "journal")
    probe.wait_health("journal", "online")
    publish_pipeline(publisher, ["video.new", "scan.done"])
    wait_until(
        lambda: (
            vv.vv("status", VIDEO, "--json").returncode == 0 and status_json(vv, VIDEO)["stage"] == "scanned"
        ),
        15,
        "scanned in journal",
    )

    journal.send_signal(signal.SIGKILL)
    journal.wait(10)
    segment = sorted((vv.home / "journal").glob("*.seg"))[-1]
    intact = segment.stat().st_size
    with segment.open("ab") as handle:  # a crash mid-append: a header promising more bytes than written
        handle.write((500).to_bytes(4, "little") + b"\x00\x00\x00\x00" + b"partial record")

    # the journal is the source of truth even with the node down and the tail torn: readers stop before it
    assert status_json(vv, VIDEO)["stage"] == "scanned"

    vv.spawn("run", "journal", log_name="journal-2")
    warning = probe.wait_event(
        "alert.warning", where=lambda e: e["data"]["title"] == "Journal recovered from a torn write"
    )[0]
    assert "truncat" in warning["data"]["message_details"]
    assert segment.stat().st_size >= intact  # torn bytes gone, new records may follow
    publish_pipeline(publisher, ["summary.done", "logline.signed"])
    wait_until(lambda: status_json(vv, VIDEO)["stage"] == "signed", 15, "signed in journal")
    state = status_json(vv, VIDEO)
    assert set(state["stages"]) == {"ingested", "scanned", "summarized", "signed"}

    table = vv.vv("status")
    assert table.returncode == 0 and VIDEO[:12] in table.stdout and "signed" in table.stdout
    assert vv.vv("status", "ffffffff").returncode == 1


def test_failures_and_quarantine_fold_from_journal(vv: VV, probe: Probe, publisher: Publisher) -> None:
    vv.spawn("run", "journal")
    probe.wait_health("journal", "online")
    publish_pipeline(publisher, ["video.new"])
    alert = fixture("alert")
    alert["context"] = {"video": VIDEO}
    publisher.publish(publisher.event("alert.error", alert, subject=VIDEO))
    publish_pipeline(publisher, ["video.quarantined"])
    wait_until(lambda: status_json(vv, VIDEO)["stage"] == "quarantined", 15, "quarantined")
    state = status_json(vv, VIDEO)
    assert [f["title"] for f in state["failures"]] == [alert["title"]]


def test_replay_republishes_with_same_ids_and_tail_shows_them(
    vv: VV, probe: Probe, publisher: Publisher
) -> None:
    vv.spawn("run", "journal")
    probe.wait_health("journal", "online")
    ids = publish_pipeline(publisher, ["video.new", "scan.done", "summary.done"])
    wait_until(
        lambda: (
            vv.vv("status", VIDEO, "--json").returncode == 0
            and status_json(vv, VIDEO)["stage"] == "summarized"
        ),
        15,
        "journaled",
    )

    dry = vv.vv("replay", "--type", "scan.done", "--dry-run")
    assert dry.returncode == 0 and ids[1] in dry.stdout and ids[0] not in dry.stdout

    err = vv.home / "tail.err"
    with err.open("w") as stderr:
        tail = subprocess.Popen(
            [*vv_cmd(vv), "tail", "scan.done", "--json", "--count", "1"],
            env=vv.env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            wait_until(lambda: "live on" in err.read_text(), 10, "tail subscribed")
            result = vv.vv("replay", "--type", "scan.done")
            assert result.returncode == 0 and "re-published 1 event" in result.stdout
            out, _ = tail.communicate(timeout=15)
        finally:
            tail.kill()
    line = json.loads(out.splitlines()[0])
    assert line["topic"] == "vv/edge1/scan/done" and line["payload"]["id"] == ids[1]
    assert vv.vv("replay", "--since", "yesterday").returncode == 2


def vv_cmd(vv: VV) -> list[str]:
    import sys

    return [sys.executable, "-m", "nodes.cli"]


def test_gap_resend_republishes_exactly_the_range_with_the_original_ids(
    vv: VV, probe: Probe, publisher: Publisher
) -> None:
    """The console's `cmd.journal.resend`: by producer seq (alerts) and by chain seq (LogLines), the
    recorded envelopes go out again unchanged on their own topics, under the journal's own credential
    (its grant has logline/signed for this); a type the bridge does not carry is refused."""
    vv.spawn("run", "journal")
    probe.wait_health("journal", "online")
    alerts = [publisher.event("alert.warning", fixture("alert")) for _ in range(6)]
    for event in alerts:
        publisher.publish(event)
    lines = []
    for chain_seq in (10, 11, 12):
        line = publisher.event("logline.signed", {**fixture("logline.signed"), "seq": chain_seq})
        publisher.publish(line)
        lines.append(line)
    resend = {"type": "alert.warning", "by": "seq", "source": "vv://edge1/tester", "epoch": 1}
    publisher.publish(publisher.event("cmd.journal.resend", {"args": {**resend, "first": 3, "last": 5}}))
    chain = {"type": "logline.signed", "by": "chain", "first": 11, "last": 12}
    publisher.publish(publisher.event("cmd.journal.resend", {"args": chain}))
    refused = {"type": "video.new", "by": "chain", "first": 1, "last": 1}
    publisher.publish(publisher.event("cmd.journal.resend", {"args": refused}))

    error = probe.wait_event("alert.error")[0]["data"]
    assert "re-send refused: video.new is not re-sent" in error["message_details"]
    wait_until(
        lambda: any(h["details"].get("resends", {}).get("answered") == 2 for h in probe.health("journal")),
        15,
        "both re-sends answered",
    )

    def copies(events: list[Event], event_type: str) -> list[int]:
        seen = [e["id"] for e in probe.events(event_type)]
        return [seen.count(event.id) for event in events]

    assert copies(alerts, "alert.warning") == [1, 1, 2, 2, 2, 1]  # exactly seq 3..5, once more each
    assert copies(lines, "logline.signed") == [1, 2, 2]
    again = [e for e in probe.events("alert.warning") if e["id"] == alerts[2].id]
    assert again[0] == again[1]  # the same envelope: id, epoch, seq, time and data
    assert again[1]["seq"] == 3 and again[1]["epoch"] == 1
