"""From a dropped video to a LogLine anyone can verify, through broker crashes and a signer crash."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from clips import Scene, require_shared, write_clip
from conftest import VV, Probe, wait_until
from test_pipeline import drop

from nodes.sign.head import ChainHead, check_head, head_path
from nodes.sign.keys import KeyStore

ALL = ("journal", "ingest", "scan", "summarize", "sign", "reconciler")


@pytest.fixture
def pipeline_env() -> dict[str, str]:
    root = require_shared("models/yolo-fastest-1.1-coco/yolo-fastest-1.1.weights")
    return {
        "VV_SCAN_MODEL": str(root / "models/yolo-fastest-1.1-coco/yolo-fastest-1.1.weights"),
        "VV_SCAN_THREADS": "1",
        "VV_INGEST_SETTLE_S": "0.2",
        "VV_INGEST_POLL_INTERVAL_S": "0.3",
        "VV_RECONCILER_INTERVAL_S": "1",
        "VV_RECONCILER_INGESTED_S": "8",
        "VV_RECONCILER_SCANNED_S": "5",
        "VV_RECONCILER_SUMMARIZED_S": "5",
        "VV_RECONCILER_MAX_ATTEMPTS": "5",
    }


def start(vv: VV, probe: Probe, env: dict[str, str], nodes: tuple[str, ...] = ALL) -> None:
    assert vv.vv("keys", "generate").returncode == 0
    for node in nodes:
        vv.spawn("run", node, extra_env=env)
    for node in nodes:
        probe.wait_health(node, "online", timeout=30)


def loglines(vv: VV) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((vv.home / "storage").rglob("*.logline.json"))]


def verify(vv: VV) -> tuple[int, str]:
    result = vv.vv("verify", str(vv.home / "storage"))
    return result.returncode, result.stdout + result.stderr


def test_dropped_video_ends_as_a_verified_logline(
    vv: VV, probe: Probe, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    start(vv, probe, pipeline_env)
    drop(vv, write_clip(tmp_path / "yard.mp4", [Scene("person", 1.5), Scene("dog", 1.5)]))
    signed = probe.wait_event("logline.signed", timeout=60)[0]["data"]
    assert signed["seq"] == 1 and signed["prev"] == "0" * 64
    (line,) = loglines(vv)
    assert line["summary"]["counts"].get("dog", 0) >= 1
    code, output = verify(vv)
    assert code == 0, output
    sign_health = probe.wait_health("sign", "online", after=len(probe.health("sign")))
    head = sign_health["details"]["chain_head"]  # the signed head document, as in its state file
    assert (head["seq"], head["hash"], head["key_id"]) == (1, signed["hash"], signed["key_id"])
    assert head == json.loads(head_path(vv.home / "state").read_text())
    exported = vv.vv("keys", "export")
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(exported.stdout)
    assert vv.vv("verify", "--keys", str(keys_file), str(vv.home / "storage")).returncode == 0


def test_sign_killed_between_write_and_publish_neither_loses_nor_repeats_a_seq(
    vv: VV, probe: Probe, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    start(vv, probe, pipeline_env, tuple(n for n in ALL if n != "sign"))
    sign = vv.spawn("run", "sign", extra_env={**pipeline_env, "VV_SIGN_FAILPOINT": "after-write"})
    probe.wait_health("sign", "online")
    drop(vv, write_clip(tmp_path / "a.mp4", [Scene("person", 1.0)]))
    assert sign.wait(60) == 137  # it wrote LogLine seq 1 and died before announcing it
    assert [line["seq"] for line in loglines(vv)] == [1]
    vv.spawn("run", "sign", extra_env=pipeline_env, log_name="sign-2")
    first = probe.wait_event("logline.signed", timeout=60)[0]["data"]
    assert first["seq"] == 1  # the redelivered summary.done re-announced the written LogLine
    drop(vv, write_clip(tmp_path / "b.mp4", [Scene("horses", 1.0)]))
    second = probe.wait_event("logline.signed", count=2, timeout=60)[1]["data"]
    assert second["seq"] == 2 and second["prev"] == first["hash"]
    assert sorted(line["seq"] for line in loglines(vv)) == [1, 2]
    code, output = verify(vv)
    assert code == 0, output
    assert "VALID head" in output and "seq 2" in output  # the head file caught up with seq 1, then 2
    assert not [e for e in probe.events("alert.critical") if e["data"]["source_component"] == "sign"]


def test_sign_restarted_after_its_newest_logline_was_removed_continues_at_the_anchored_seq(
    vv: VV, probe: Probe, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    start(vv, probe, pipeline_env, tuple(n for n in ALL if n != "sign"))
    sign = vv.spawn("run", "sign", extra_env=pipeline_env)
    probe.wait_health("sign", "online")
    drop(vv, write_clip(tmp_path / "a.mp4", [Scene("person", 1.0)]))
    probe.wait_event("logline.signed", timeout=60)
    drop(vv, write_clip(tmp_path / "b.mp4", [Scene("dog", 1.0)]))
    second = probe.wait_event("logline.signed", count=2, timeout=60)[1]["data"]
    assert second["seq"] == 2
    sign.terminate()
    assert sign.wait(10) == 0
    Path(second["logline"]["path"]).unlink()  # the newest LogLine removed while sign was down
    code, output = verify(vv)
    assert code == 1
    assert f"chain cut off: head is seq 2 (hash {second['hash']}), newest LogLine is seq 1" in output
    witness = vv.vv("verify", "--head-from-broker", str(vv.home / "storage"))  # sign's last retained word
    assert witness.returncode == 1, witness.stdout + witness.stderr
    assert (
        f"INVALID head retained health vv/{vv.settings.device}/health/sign: chain cut off: head is seq 2"
        in (witness.stdout)
    )

    vv.spawn("run", "sign", extra_env=pipeline_env, log_name="sign-2")
    cut = probe.wait_event("alert.critical", where=lambda e: e["data"]["title"] == "Chain cut off")[0]["data"]
    assert cut["source_component"] == "sign"
    assert cut["message_details"].startswith(
        f"seq 2 missing from storage: the anchored head is seq 2 (hash {second['hash']}), "
        "the newest LogLine on disk is seq 1"
    )
    drop(vv, write_clip(tmp_path / "c.mp4", [Scene("horses", 1.0)]))
    third = probe.wait_event("logline.signed", count=3, timeout=60)[2]["data"]
    assert (third["seq"], third["prev"]) == (3, second["hash"])  # seq 2 is never issued again
    assert sorted(line["seq"] for line in loglines(vv)) == [1, 3]
    code, output = verify(vv)
    assert code == 1 and "seq 2 missing (gap after 1)" in output  # the cut stays visible for good
    assert f"VALID head {head_path(vv.home / 'state')}: {vv.settings.device} seq 3" in output
    health = probe.wait_health("sign", "online", after=len(probe.health("sign")))
    keys = KeyStore(vv.home / "keys").verifiers()
    assert check_head(health["details"]["chain_head"], keys) == ChainHead(
        vv.settings.device, 3, third["hash"]
    )


def test_twenty_videos_through_two_broker_crashes_end_with_one_valid_logline_each(
    vv: VV, probe: Probe, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    start(vv, probe, pipeline_env)
    rng = random.Random(20)
    photos = ["person", "dog", "horses", "giraffe"]
    clips = [
        write_clip(tmp_path / f"v{n:02d}.mp4", [Scene(photos[n % 4], 0.6 + n * 0.05)]) for n in range(20)
    ]
    crash_after = sorted(rng.sample(range(2, 18), 2))
    probe.close()
    for n, clip in enumerate(clips):
        drop(vv, clip)
        if n in crash_after:
            dropped = vv.home / "input" / clip.name
            wait_until(lambda: not dropped.exists(), 20, "file picked up")  # noqa: B023 - used at once
            vv.broker.kill()
            vv.broker.start()
    watcher = vv.probe()
    try:
        wait_until(lambda: len(loglines(vv)) == 20, 240, "20 LogLines")
    finally:
        watcher.close()
    lines = loglines(vv)
    assert sorted(line["seq"] for line in lines) == list(range(1, 21))
    assert len({line["video"]["id"] for line in lines}) == 20
    code, output = verify(vv)
    assert code == 0, output


def test_verify_alert_raises_critical_for_a_tampered_logline(
    vv: VV, probe: Probe, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    start(vv, probe, pipeline_env)
    drop(vv, write_clip(tmp_path / "a.mp4", [Scene("giraffe", 1.0)]))
    probe.wait_event("logline.signed", timeout=60)
    (path,) = (vv.home / "storage").rglob("*.logline.json")
    path.write_bytes(path.read_bytes().replace(b'"seq":1', b'"seq":7'))
    result = vv.vv("verify", "--alert", str(vv.home / "storage"))
    assert result.returncode == 1 and "INVALID" in result.stdout
    alert = probe.wait_event("alert.critical")[0]["data"]
    assert alert["title"] == "LogLine failed verification" and alert["context"]["path"] == str(path)


@pytest.mark.parametrize("case", ["as-is", "no-assets-no-network", "lean-install"])
def test_vv_demo_runs_the_pipeline_and_verifies_its_logline(
    tmp_path: Path, silent_network: dict[str, str], case: str
) -> None:
    """`make demo` as is; on a box with neither ../shared nor a network; and there without the
    [yolo] extra (its sample photos and torch): a verified LogLine well within two minutes, and
    the demo says which detector ran."""
    import os
    import subprocess
    import sys

    from conftest import REPO, SHARED

    env = {k: v for k, v in os.environ.items() if not k.startswith("VV_")}
    if REPO.parent / "shared" != SHARED:  # as `make demo` runs: VV_SHARED only if it is elsewhere
        env["VV_SHARED"] = str(SHARED)
    if case != "as-is":
        env.update(silent_network, VV_SHARED=str(tmp_path / "no-shared"))
    if case == "lean-install":  # an ultralytics that cannot be imported, as if it were not installed
        shadow = tmp_path / "lean" / "ultralytics"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text("raise ImportError('not installed (lean install)')\n")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shadow.parent), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "nodes.cli", "demo", "--home", str(tmp_path / "demo"), "--timeout", "120"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "logline.signed" in result.stdout and "\nVALID " in result.stdout
    assert "everything stopped cleanly" in result.stdout
    if case == "as-is":
        assert "demo: detector: " in result.stdout
        if (SHARED / "models" / "yolo-fastest-1.1-coco").is_dir():  # the shared detector, found by itself
            assert "yolo-fastest" in result.stdout.lower(), result.stdout[-2000:]
        return
    assert "demo: detector: hog (opencv-hog-people), the fallback, because" in result.stdout
    assert "yolo11n.pt" in result.stdout and "set VV_SCAN_MODEL (scan.model)" in result.stdout
    if case == "lean-install":
        assert "ultralytics is not installed" in result.stdout
        assert '"person"' in result.stdout  # the clip drawn with OpenCV shows people HOG finds
