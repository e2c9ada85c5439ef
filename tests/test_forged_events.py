"""Forged events are refused: nothing outside storage is read, moved or written, nothing is signed.

Each case publishes a schema-valid event whose claims about files do not hold, with the admin
credential (what a stolen credential allowed before per-node ACLs), and checks the node refused it
with `alert.critical`, dead-lettered it, and left every file (a decoy outside VV_HOME included)
and the LogLine chain exactly as they were.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from clips import Scene, write_clip
from conftest import VV, Probe, Publisher, read_lines, store_video, wait_until
from test_pipeline import drop

HOG = {"VV_SCAN_MODEL": "", "VV_INGEST_SETTLE_S": "0.2", "VV_INGEST_POLL_INTERVAL_S": "0.3"}
FORGED = "Forged or corrupt event refused"
UNTRACKED = ("state", "logs", "journal")  # node bookkeeping: dead letters, dedupe, outbox


def listing(root: Path) -> dict[str, str]:
    """Every path under `root` (bookkeeping dirs aside) with its content hash or link target."""
    found: dict[str, str] = {}
    for directory, dirs, files in os.walk(root):
        rel_dir = Path(directory).relative_to(root)
        if rel_dir.parts[:1] and rel_dir.parts[0] in UNTRACKED:
            continue
        for name in dirs + files:
            if not rel_dir.parts and name.endswith(".out"):
                continue  # the test's own capture of node output
            path = Path(directory) / name
            if path.is_symlink():
                found[str(rel_dir / name)] = f"-> {os.readlink(path)}"
            elif path.is_file():
                found[str(rel_dir / name)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[str(rel_dir / name)] = "dir"
    return found


@pytest.fixture
def decoy(tmp_path: Path) -> Path:
    """A file outside VV_HOME that a forged event names: it must never move or change."""
    path = tmp_path / "outside" / "passwd"
    path.parent.mkdir()
    path.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 64)
    return path


def start(vv: VV, probe: Probe, *nodes: str) -> None:
    assert vv.vv("keys", "generate").returncode == 0
    for node in nodes:
        vv.spawn("run", node, extra_env=HOG)
    for node in nodes:
        probe.wait_health(node, "degraded" if node == "scan" else "online", timeout=30)


def refuse(vv: VV, probe: Probe, publisher: Publisher, event_type: str, data: dict[str, Any]) -> str:
    """Publish a forged event; wait for its CRITICAL; return the dead letter's reason."""
    before = len(probe.events("alert.critical"))
    publisher.publish(publisher.event(event_type, data, subject=data["video"].get("id")))
    alert = probe.wait_event("alert.critical", count=before + 1, timeout=30)[-1]["data"]
    assert alert["title"] == FORGED, alert
    node = {"video.new": "scan", "scan.done": "summarize", "summary.done": "sign"}[event_type]
    letters = read_lines(vv.home / "state" / "deadletter" / f"{node}.jsonl")
    assert letters and letters[-1]["reason"].startswith("refused claim:")
    return str(letters[-1]["reason"])


def forge_outside(vv: VV, decoy: Path) -> dict[str, Any]:
    """The decoy's true id, hash and size, at its real place outside VV_HOME."""
    data = store_video(vv, decoy.read_bytes(), "passwd")
    Path(data["video"]["path"]).unlink()
    data["video"]["path"] = str(decoy)
    return data


def forge_traversal(vv: VV, decoy: Path) -> dict[str, Any]:
    data = forge_outside(vv, decoy)
    depth = len(vv.settings.paths.storage.parts) - 1
    data["video"]["path"] = str(vv.settings.paths.storage) + "/.." * depth + str(decoy)
    return data


def forge_symlink(vv: VV, decoy: Path) -> dict[str, Any]:
    """A link inside the video's own storage directory pointing at the decoy."""
    data = store_video(vv, decoy.read_bytes(), "clip.mp4")
    link = Path(data["video"]["path"])
    link.unlink()
    link.symlink_to(decoy)
    return data


def forge_wrong_hash(vv: VV, decoy: Path) -> dict[str, Any]:
    """A real stored video, at its right path, with a made-up sha256 and size."""
    data = store_video(vv, b"not what the event claims" * 100, "clip.mp4")
    made_up = hashlib.sha256(b"something else").hexdigest()
    data["video"].update(sha256=data["video"]["id"] + made_up[32:], bytes=123)
    return data


@pytest.mark.parametrize(
    "forge",
    [forge_outside, forge_traversal, forge_symlink, forge_wrong_hash],
    ids=["absolute-outside", "dotdot-traversal", "symlink-in-storage", "wrong-sha256"],
)
def test_a_forged_video_new_is_refused_and_touches_nothing(
    vv: VV, probe: Probe, publisher: Publisher, decoy: Path, forge: Callable[[VV, Path], dict[str, Any]]
) -> None:
    start(vv, probe, "scan")
    data = forge(vv, decoy)
    before, decoy_before = listing(vv.home), listing(decoy.parent)
    reason = refuse(vv, probe, publisher, "video.new", data)
    assert listing(vv.home) == before and listing(decoy.parent) == decoy_before
    assert not (vv.home / "corrupted").exists() and not probe.events("scan.done")
    attempts = vv.home / "state" / "nodes" / "scan" / "attempts.json"
    assert data["video"]["id"] not in (json.loads(attempts.read_text()) if attempts.exists() else {})
    assert data["video"]["id"] in reason or str(decoy) in reason


def processed(vv: VV, probe: Probe, tmp_path: Path) -> list[dict[str, Any]]:
    """Two real videos through the whole pipeline; their summary.done events."""
    start(vv, probe, "ingest", "scan", "summarize", "sign")
    for name, seconds in (("a.mp4", 1.0), ("b.mp4", 1.5)):
        drop(vv, write_clip(tmp_path / name, [Scene("", seconds)]))
    probe.wait_event("logline.signed", count=2, timeout=90)
    return probe.events("summary.done")  # before any forged one is published


def test_forged_scan_done_and_summary_done_are_refused_and_nothing_is_signed(
    vv: VV, probe: Probe, publisher: Publisher, tmp_path: Path
) -> None:
    first, second = (event["data"] for event in processed(vv, probe, tmp_path))
    before = listing(vv.home)
    assert vv.vv("verify", str(vv.home / "storage")).returncode == 0

    def scan_done(**changes: Any) -> dict[str, Any]:
        data = {key: copy.deepcopy(first[key]) for key in ("video", "analytic", "counts")}
        return {**data, "backend": "hog", "model": "hog", **changes}

    another_analytic = scan_done(analytic=second["analytic"])
    assert "not in the directory of video" in refuse(vv, probe, publisher, "scan.done", another_analytic)
    outside = scan_done(analytic={**first["analytic"], "path": str(tmp_path / "analytic.json")})
    assert "outside storage" in refuse(vv, probe, publisher, "scan.done", outside)

    wrong_summary_hash = copy.deepcopy(first)
    wrong_summary_hash["summary"]["sha256"] = "0" * 64
    assert "sha256" in refuse(vv, probe, publisher, "summary.done", wrong_summary_hash)
    another_summary = copy.deepcopy(first)
    another_summary["summary"] = second["summary"]
    assert "not in the directory of video" in refuse(vv, probe, publisher, "summary.done", another_summary)
    other_text = {**copy.deepcopy(first), "text": "Nothing happened here, move along."}
    assert "text or counts" in refuse(vv, probe, publisher, "summary.done", other_text)
    unsigned = copy.deepcopy(second)
    unsigned["video"]["id"] = first["video"]["id"]
    assert "first 32 hex digits" in refuse(vv, probe, publisher, "summary.done", unsigned)

    assert listing(vv.home) == before
    summarized = [e for e in probe.events("summary.done") if e["source"].endswith("/summarize")]
    assert len(probe.events("logline.signed")) == 2 and len(summarized) == 2
    result = vv.vv("verify", str(vv.home / "storage"))
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: probe.health("sign")[-1]["details"]["chain_head"]["seq"] == 2, 5, "chain head 2")


def test_a_forged_event_in_the_journal_is_recorded_by_the_reconciler_never_moved(
    vv: VV, probe: Probe, publisher: Publisher, decoy: Path
) -> None:
    """The journal records every event, forged ones too: the reconciler must not re-announce or move
    what a forged video.new names, only record it as quarantined (not moved) with a CRITICAL."""
    quick = {"VV_RECONCILER_INTERVAL_S": "0.5", "VV_RECONCILER_INGESTED_S": "1"}
    for node in ("journal", "reconciler"):
        vv.spawn("run", node, extra_env=quick)
        probe.wait_health(node, "online")
    data = forge_outside(vv, decoy)
    before, decoy_before = listing(vv.home), listing(decoy.parent)
    publisher.publish(publisher.event("video.new", data, subject=data["video"]["id"]))
    quarantined = probe.wait_event("video.quarantined", timeout=30)[0]["data"]
    assert quarantined["error_type"] == "RefusedClaim" and quarantined["quarantine_path"] == ""
    alert = probe.wait_event("alert.critical")[0]["data"]
    assert alert["title"] == "Forged or corrupt event in the journal"
    assert not [e for e in probe.events("video.new") if e["source"].endswith("/reconciler")]
    assert listing(vv.home) == before and listing(decoy.parent) == decoy_before
