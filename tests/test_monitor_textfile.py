"""The monitor's textfile for node_exporter: the Prometheus text format from health documents, and
the real monitor process writing it (off by default, replaced by rename) with a scan's timing."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import FIXTURES_DIR, VV, Probe, Publisher, wait_until
from test_monitor import MONITOR_ENV

from nodes.monitor.textfile import ScanTiming, render

# a sample line of the text exposition format 0.0.4: name{label="value",...} number
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*\{([a-zA-Z_]+="(?:[^"\\]|\\.)*",?)*\} (-?[0-9.e+]+|NaN)$')


def samples(text: str) -> dict[str, float]:
    """Every sample line by its name and labels; fails on any line that is not the format."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            continue
        assert SAMPLE.match(line), line
        key, _, value = line.rpartition(" ")
        found[key] = float(value)
    return found


def test_render_health_queues_and_realtime_factor() -> None:
    health = {
        "ingest": {
            "status": "degraded",
            "time": "2026-05-01T12:00:00Z",
            "details": {
                "received": 10,
                "handled": 6,
                "duplicates": 1,
                "dead_letters": 1,
                "failures": 0,
                "queued": 7,
                "waiting_open": 2,
            },
        },
        "scan": {"status": "offline", "time": "2026-05-01T12:00:01Z", "details": {}},
    }
    text = render('edge"1', health, ScanTiming(video_s=30.0, elapsed_s=10.0, at=1.0e9))
    got = samples(text)
    assert got['vv_node_status{device="edge\\"1",node="ingest",status="degraded"}'] == 1.0
    assert got['vv_node_status{device="edge\\"1",node="ingest",status="online"}'] == 0.0
    assert got['vv_node_status{device="edge\\"1",node="scan",status="offline"}'] == 1.0
    assert got['vv_node_queue_depth{device="edge\\"1",node="ingest",queue="events"}'] == 2.0  # 10 - 8 settled
    assert got['vv_node_queue_depth{device="edge\\"1",node="ingest",queue="queued"}'] == 7.0
    assert got['vv_node_events_received_total{device="edge\\"1",node="ingest"}'] == 10.0
    assert got['vv_scan_realtime_factor{device="edge\\"1"}'] == 3.0
    assert got['vv_node_health_timestamp_seconds{device="edge\\"1",node="scan"}'] == 1777636801.0
    assert "# TYPE vv_node_events_received_total counter" in text
    assert "vv_scan_realtime_factor" not in render("d", health, None)


def test_the_monitor_writes_the_textfile(vv: VV, probe: Probe, publisher: Publisher, tmp_path: Path) -> None:
    target = tmp_path / "textfile" / "vv.prom"
    target.parent.mkdir()
    vv.spawn("run", "monitor", extra_env={**MONITOR_ENV, "VV_MONITOR_TEXTFILE": str(target)})
    probe.wait_health("monitor", "online")
    wait_until(
        lambda: target.exists() and 'node="monitor",status="online"} 1.0' in target.read_text(),
        15,
        "the monitor's own health in the textfile",
    )
    data = json.loads((FIXTURES_DIR / "scan.done" / "valid-1.json").read_text())  # 10 s of video in 1.5 s
    publisher.publish(publisher.event("scan.done", data, subject=data["video"]["id"]))
    got = wait_until(
        lambda: next((s for k, s in samples(target.read_text()).items() if "realtime_factor" in k), None),
        15,
        "the scan's real-time factor in the textfile",
    )
    assert abs(got - 10.0 / 1.5) < 1e-9
    assert [p.name for p in target.parent.iterdir()] == ["vv.prom"]  # replaced by rename, no leftovers


def test_no_textfile_by_default(vv: VV, probe: Probe) -> None:
    vv.spawn("run", "monitor", extra_env=MONITOR_ENV)
    probe.wait_health("monitor", "online")
    health = probe.wait_health("monitor", "online", after=len(probe.health("monitor")))
    assert health["details"]["rounds"] >= 0
    assert list(vv.home.rglob("*.prom")) == []
