"""`vv status` from the video index: a bounded summary, and any video however old."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_journal_fold import event, pipeline
from test_journal_index import record

from nodes.cli import main
from nodes.journal.store import Journal


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VV_HOME", str(tmp_path / "vv"))
    monkeypatch.setenv("VV_DEVICE", "edge-1")
    monkeypatch.delenv("VV_CONFIG", raising=False)
    with Journal.open(tmp_path / "vv" / "journal") as writer:
        for n in range(120):
            for envelope in pipeline(f"{n:032x}", n * 60):
                writer.append(record(envelope, n // 40))  # three days, three segments
        writer.append(record(event("video.new", "f" * 32, 0, {"path": "p"}), 3))
    return tmp_path / "vv"


def test_the_summary_is_bounded_and_counts_every_video(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--limit", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 + 5 + 1  # header, five videos, the footer
    assert out[1].startswith("f" * 32)  # the video still in the pipeline comes first
    assert "showing 5 of 121 videos (ingested 1, signed 120)" in out[-1]
    assert main(["status", "--json", "--limit", "3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["videos"]) == 3 and doc["total"] == 121 and doc["counts"] == {"signed": 120, "ingested": 1}


def test_an_old_video_is_found_after_its_segment_was_removed(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", f"{0:031x}"]) == 1  # a prefix of two videos
    assert "prefix matches several videos" in capsys.readouterr().err
    with Journal.open(home / "journal") as writer:
        writer.remove_segment(1)
    assert main(["status", f"{0:032x}", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stage"] == "signed" and doc["removed_segments"] == ["00000001.seg"]
    assert main(["status", f"{119:032x}"]) == 0
    assert "logline    seq 7" in capsys.readouterr().out
    assert main(["status", "e" * 32]) == 1
    assert "unknown video" in capsys.readouterr().err


def test_status_never_contradicts_the_files(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The journal missed the later events of a video (its disk was full) but the LogLine is on disk:
    status says signed and why; and a signed video whose LogLine is gone says so."""
    stuck = "f" * 32  # only its video.new is in the journal
    logline = home / "storage" / "2026" / "12" / "01" / stuck / f"{stuck}.logline.json"
    logline.parent.mkdir(parents=True)
    logline.write_text("{}")
    assert main(["status", stuck, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stage"] == "signed" and "the journal last heard ingested" in doc["files"]
    assert main(["status", "--limit", "1"]) == 0
    assert "signed" in capsys.readouterr().out.splitlines()[1]
    assert main(["status", f"{5:032x}"]) == 0  # signed in the journal, nothing in storage
    assert "no LogLine on disk" in capsys.readouterr().out
