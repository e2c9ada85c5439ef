"""The dvr node against a real local stream: Debian's ffmpeg serving a clip as HTTP MPEG-TS.

The server is stopped and restarted by the test; the node (a real process) must record segments,
raise ERROR then CRITICAL while the stream is down, and resolve both when it returns.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import cv2
import pytest
from clips import Scene, write_clip
from conftest import VV, Probe, free_port, wait_until

from nodes.dvr.stream import redact, segment_name

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


def listening(port: int) -> bool:
    """True once a socket listens on the port (read from /proc: a probe connection would use up
    the single client that `ffmpeg -listen 1` serves)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "0A":
                return True
    return False


class StreamServer:
    """`ffmpeg -re -stream_loop -1 ... -listen 1`: serves one client, so the test restarts it."""

    def __init__(self, clip: Path, port: int, log: Path) -> None:
        self.clip, self.port, self.log = clip, port, log
        self.url = f"http://127.0.0.1:{port}/live.ts"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-re",
            "-stream_loop",
            "-1",
            "-i",
            str(self.clip),
        ]
        command += ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency"]
        command += ["-f", "mpegts", "-listen", "1", self.url]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=log)
        wait_until(lambda: listening(self.port), 10, "ffmpeg to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[StreamServer]:
    clip = write_clip(tmp_path / "camera.mp4", [Scene("person", 1.0, slide="dog")])
    srv = StreamServer(clip, free_port(), tmp_path / "ffmpeg.log")
    yield srv
    srv.stop()


def segments(vv: VV) -> list[Path]:
    inbox = vv.home / "input"
    return sorted(p for p in inbox.glob("cam1-*.mp4")) if inbox.exists() else []


def frames_of(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()


def alerts(probe: Probe, severity: str, status: str) -> list[dict]:
    return [e["data"] for e in probe.events(f"alert.{severity}") if e["data"]["status"] == status]


def test_dvr_records_survives_the_stream_stopping_and_resolves_when_it_returns(
    vv: VV, probe: Probe, server: StreamServer
) -> None:
    server.start()
    dvr = vv.spawn(
        "run",
        "dvr",
        extra_env={
            "VV_DVR_URL": server.url,
            "VV_DVR_SEGMENT_S": "1",
            "VV_DVR_RETRY_MIN_S": "0.2",
            "VV_DVR_RETRY_MAX_S": "0.5",
            "VV_DVR_ERROR_AFTER_ATTEMPTS": "2",
            "VV_DVR_CRITICAL_AFTER_S": "1.5",
            "VV_DVR_OPEN_TIMEOUT_S": "5",
            "VV_DVR_READ_TIMEOUT_S": "5",
        },
    )
    first = wait_until(lambda: len(segments(vv)) >= 2 and segments(vv), 30, "two segments")
    assert re.fullmatch(r"cam1-\d{8}T\d{9}Z\.mp4", first[0].name)
    assert frames_of(first[0]) == 10  # 1 s at the clip's 10 fps, decodable

    server.stop()
    error = wait_until(lambda: alerts(probe, "error", "firing"), 15, "alert.error after 2 failed attempts")[0]
    assert error["title"] == "Camera stream down" and error["context"]["stream"] == server.url
    assert "2 failed attempts" in error["message_details"] and error["suggested_actions"]
    critical = wait_until(lambda: alerts(probe, "critical", "firing"), 15, "alert.critical when down 1.5 s")[
        0
    ]
    down = probe.wait_health("dvr", "degraded")
    assert "stream down since" in down["reason"] and down["details"]["state"] == "down"
    before = len(segments(vv))
    assert not [p for p in (vv.home / "input").iterdir() if p.name.startswith(".")]  # the cut one finalised

    server.start()
    resolved = wait_until(lambda: alerts(probe, "error", "resolved"), 20, "alert.error resolved")[0]
    assert resolved["alert_id"] == error["alert_id"]
    assert (
        wait_until(lambda: alerts(probe, "critical", "resolved"), 5, "critical resolved")[0]["alert_id"]
        == (critical["alert_id"])
    )
    wait_until(lambda: len(segments(vv)) >= before + 2, 20, "segments to resume")
    assert probe.wait_health("dvr", "online")["details"]["failed_attempts"] == 0
    assert len(alerts(probe, "error", "firing")) == 1 and len(alerts(probe, "critical", "firing")) == 1

    dvr.terminate()  # a graceful stop finalises the segment in hand: no temp file is left behind
    assert dvr.wait(15) == 0
    assert not [p for p in (vv.home / "input").iterdir() if p.name.startswith(".")]
    assert all(frames_of(p) > 0 for p in segments(vv))


def test_dvr_without_url_stops_at_start_naming_the_key(vv: VV) -> None:
    result = vv.vv("run", "dvr", timeout=30)
    assert result.returncode == 2 and "dvr.url" in result.stderr


def test_names_and_redaction() -> None:
    when = datetime(2026, 11, 22, 19, 0, 1, 234567, tzinfo=UTC)
    assert segment_name("gate", when) == "gate-20261122T190001234Z.mp4"
    assert redact("rtsp://admin:s3cret@10.0.0.7:554/ch1") == "rtsp://admin:***@10.0.0.7:554/ch1"
    assert redact("http://127.0.0.1:8080/live.ts") == "http://127.0.0.1:8080/live.ts"
