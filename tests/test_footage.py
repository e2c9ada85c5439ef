"""Real footage: what cameras and DVRs write ends as exactly one LogLine, or quarantined with its
meta file and an alert; never stuck, never a crash.

The inputs are encoded here with ffmpeg from its moving test pattern (no shared assets, nothing
downloaded), and scan runs OpenCV's HOG fallback, so none of this needs ../shared.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from clips import damage, ffmpeg_clip
from conftest import VV, Probe, Publisher, store_video, wait_until
from test_pipeline import FAST, drop
from test_signed_pipeline import loglines, verify

from bus.config import VVPaths
from bus.inputs import shown
from nodes.common.quarantine import UnreadableVideo
from nodes.common.video import Decoded
from nodes.ingest.files import (
    ingest_file,
    is_candidate,
    is_video_name,
    ledger_for,
    probe_video,
)
from nodes.scan.analyze import DamagedVideo, scan_video
from nodes.scan.detectors.base import Detection, Frame
from nodes.scan.objects import CROP_MAX_SIDE
from nodes.scan.settings import ScanSettings
from nodes.summarize.summary import build_summary

H264 = ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "10")  # a DVR's GOP: a keyframe a second
MSMPEG4 = ("-c:v", "msmpeg4v3", "-q:v", "5")  # what old DVRs put in AVI
UHD = (3840, 2160)
SHRED = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # most of the stream overwritten
DAMAGE_BYTES = 16384  # per damaged spot: a few frames' worth at 640x360


@dataclass(frozen=True)
class Footage:
    name: str
    output: tuple[str, ...]
    seconds: float  # distinct per input: the same bytes twice would be one video
    signed: bool = True  # the expected end: a LogLine, else quarantine
    fps: float = 10.0
    size: tuple[int, int] = (640, 360)
    damage_at: tuple[float, ...] = ()

    def make(self, directory: Path) -> Path:
        path = ffmpeg_clip(
            directory / f"clip-{self.seconds}{Path(self.name).suffix.lower()}",
            *self.output,
            seconds=self.seconds,
            fps=self.fps,
            size=self.size,
        )
        return damage(path, list(self.damage_at), DAMAGE_BYTES) if self.damage_at else path


FOOTAGE = [
    Footage("cam1.avi", MSMPEG4, 3.0),
    Footage("cam2.mkv", H264, 2.5),
    Footage("cam3.mov", H264, 2.0),
    Footage("dvr.mp4", H264, 3.5),
    Footage("dvr.ts", (*H264, "-g", "50", "-f", "mpegts"), 2.2),  # one keyframe: a seek cannot land
    Footage("dvr.h264", (*H264, "-f", "h264"), 2.4),
    Footage(
        "CH04 4K.MP4",
        ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"),
        2.0,
        fps=2,
        size=UHD,
    ),
    Footage("scratched.mp4", H264, 4.0, damage_at=(0.5,)),  # two frames refused: signed, saying so
    Footage("shredded.mp4", H264, 4.1, signed=False, damage_at=SHRED),  # the decoder refuses most frames
    Footage("shredded.mkv", H264, 4.2, signed=False, damage_at=SHRED),  # the demuxer gives up
    Footage("front door $HOME; rm -rf `id` 'x' *.mp4", H264, 2.6),
    Footage("камера 2 — entrée 入口.mkv", H264, 2.7),
    Footage(os.fsdecode(b"caf\xe9 latin-1.avi"), MSMPEG4, 2.8),  # a share that is not UTF-8
]


class NoDetector:
    """Finds nothing, instantly: these tests are about decoding, not detection."""

    name = "none"
    model = "none"
    runtime = "none"
    labels: list[str] = []

    def detect(self, frame_bgr: Frame) -> list[Detection]:
        return []


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every input of FOOTAGE, encoded once for the module, by its name."""
    directory = tmp_path_factory.mktemp("footage")
    return {item.name: item.make(directory) for item in FOOTAGE}


# ----------------------------------------------------------------------------- each piece alone
def test_video_names_are_accepted_by_extension_in_any_case() -> None:
    assert all(map(is_video_name, ["a.mp4", "CH01.AVI", "x.Mkv", "seg.ts", "raw.h264", "raw.264", "b.mov"]))
    assert not any(map(is_video_name, ["snap.jpg", "CH01.idx", "notes.txt", "noext", "analytic.json"]))
    assert is_candidate("x.mp4") and not is_candidate(".x.mp4.part")


def test_names_become_utf8_text_without_control_characters() -> None:
    assert shown("front door $HOME; `id` 'x' *.mp4") == "front door $HOME; `id` 'x' *.mp4"
    assert shown("камера 入口.mkv") == "камера 入口.mkv"
    assert shown(os.fsdecode(b"caf\xe9.avi")) == "caf\\udce9.avi"
    assert shown("a\nb.mp4") == "a\\nb.mp4"


@pytest.mark.parametrize("item", [f for f in FOOTAGE if f.signed], ids=lambda f: f.name)
def test_probe_and_scan_read_every_frame(item: Footage, footage: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / item.name  # the odd names too: OpenCV opens them through /proc/self/fd
    shutil.copyfile(footage[item.name], path)
    expected = round(item.seconds * item.fps)
    info = probe_video(path)
    assert (info.width, info.height) == item.size
    analytic = scan_video(path, NoDetector(), ScanSettings(detect_fps=2, motion_gating=False))
    video = analytic["video"]
    assert (
        video["frames"] == expected
        and analytic["timing"]["frames_decoded"] == expected - video["frames_damaged"]
    )
    assert info.frames == expected  # a raw .h264 has no count: the probe counts by decoding
    assert (video["frames_damaged"] > 0) == bool(item.damage_at)
    indexes = [frame["index"] for frame in analytic["frames"]]
    assert indexes == sorted(indexes) and indexes[-1] >= expected - video["fps"] / 2 - 1  # to the end


def test_a_shredded_video_is_refused_by_the_rule_with_its_figures(footage: dict[str, Path]) -> None:
    with pytest.raises(DamagedVideo, match=r"only \d+ of 41 frames decode"):
        scan_video(footage["shredded.mp4"], NoDetector(), ScanSettings(detect_fps=2))
    with pytest.raises(UnreadableVideo) as caught:
        probe_video(footage["shredded.mkv"])
    assert caught.value.error_type == "TruncatedVideo" and "of 42 frames decode" in str(caught.value)


def test_the_damage_rule() -> None:
    assert Decoded(expected=40, decoded=36, refused=4).problem() is None  # 90% decodes: signed
    assert Decoded(expected=40, decoded=35, refused=2).damaged == 5
    assert "only 35 of 40" in str(Decoded(expected=40, decoded=35, refused=2).problem())
    assert Decoded(expected=0, decoded=24, refused=0).frames == 24  # a raw stream: what was read
    assert Decoded(expected=40, decoded=0, refused=0).problem() == "no decodable frames"


def test_a_damaged_video_says_so_in_its_summary_text(footage: dict[str, Path]) -> None:
    analytic = scan_video(footage["scratched.mp4"], NoDetector(), ScanSettings(detect_fps=2))
    damaged = analytic["video"]["frames_damaged"]
    text = build_summary(analytic)["text"]
    assert text == f"No objects detected. {damaged} of 40 frames were damaged and could not be decoded."


class GrowingWholeFrame(NoDetector):
    """A person filling the whole frame, surer each time: the last inferred frame is the best."""

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, frame_bgr: Frame) -> list[Detection]:
        self.calls += 1
        height, width = frame_bgr.shape[:2]
        return [
            Detection("person", min(0.99, 0.6 + 0.01 * self.calls), (0.0, 0.0, float(width), float(height)))
        ]


@pytest.mark.parametrize("name", ["dvr.ts", "dvr.h264", "scratched.mp4", "CH04 4K.MP4"])
def test_thumbnails_come_from_the_scanned_frame_even_where_seeking_fails(
    name: str, footage: dict[str, Path], tmp_path: Path
) -> None:
    """MPEG-TS and raw H.264 do not seek; past damage a seek lands on another frame; a 4K crop is
    scaled down. Each thumbnail is cut by scan from the frame in hand (compared to ffmpeg's own read)."""
    path = footage[name]
    settings = ScanSettings(detect_fps=5, motion_gating=False)  # frames enough to report a track
    analytic = scan_video(path, GrowingWholeFrame(), settings, thumbnails=tmp_path)
    (track,) = [t for t in analytic["tracks"] if "thumbnail" in t]
    last = analytic["frames"][-1]
    thumb = cv2.imread(track["thumbnail"]["crop"]["path"])
    assert thumb is not None and max(thumb.shape[:2]) <= CROP_MAX_SIDE
    # ffmpeg's own frame counter skips refused frames: past damage, the timestamp says which frame
    at_t = f"gte(t\\,{last['t'] - 0.5 / analytic['video']['fps']})"
    frame = frame_at(path, at_t if "scratched" in name else f"eq(n\\,{last['index']})")
    expected = cv2.resize(frame, (thumb.shape[1], thumb.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(thumb.astype(int) - expected.astype(int)).mean() < 6  # JPEG noise; the next frame: 12


def frame_at(path: Path, select: str) -> Any:
    """The first frame ffmpeg itself (not the code under test) selects with `select`."""
    out = path.with_name(f"{path.name}-{abs(hash(select))}.png")
    command = [
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-i",
        str(path),
        "-vf",
        f"select={select}",
    ]
    subprocess.run([*command, "-frames:v", "1", str(out)], check=True)
    image = cv2.imread(str(out))
    assert image is not None
    return image


# ----------------------------------------------------------------------------- the whole pipeline
NODES = ("ingest", "scan", "summarize", "sign")


def up(probe: Probe, node: str) -> bool:
    health = probe.health(node)
    return bool(health) and health[-1]["status"] in {"online", "degraded"}


def test_camera_and_dvr_footage_each_ends_as_one_logline_or_quarantined(
    vv: VV, probe: Probe, footage: dict[str, Path]
) -> None:
    env = {**FAST, "VV_SCAN_MODEL": "", "VV_SCAN_DETECT_FPS": "2", "VV_SCAN_THREADS": "1"}
    assert vv.vv("keys", "generate").returncode == 0
    for node in NODES:
        vv.spawn("run", node, extra_env=env)
    for node in NODES:  # scan says degraded: it runs the HOG fallback
        wait_until(lambda: up(probe, node), 30, f"{node} up")  # noqa: B023 - used at once
    for item in FOOTAGE:
        drop(vv, footage[item.name], item.name)
    sidecar = drop(vv, footage["cam1.avi"], "cam1.idx")  # what a DVR writes beside: not a video name
    signed = [f for f in FOOTAGE if f.signed]
    began = time.monotonic()
    done = probe.wait_event("logline.signed", count=len(signed), timeout=180)
    quarantined = probe.wait_event("video.quarantined", count=len(FOOTAGE) - len(signed), timeout=60)
    elapsed = time.monotonic() - began

    by_name = {e["data"]["original_name"]: e for e in probe.events("video.new")}
    assert set(by_name) == {shown(f.name) for f in signed}
    signed_ids = [e["data"]["video_id"] for e in done]
    assert sorted(signed_ids) == sorted(by_name[shown(f.name)]["subject"] for f in signed)
    lines = loglines(vv)
    assert sorted(line["video"]["id"] for line in lines) == sorted(signed_ids)  # one each, none twice
    code, output = verify(vv)
    assert code == 0, output

    meta_names = {Path(q["data"]["meta_path"]).name for q in quarantined}
    assert meta_names == {"shredded.mp4.meta.json", "shredded.mkv.meta.json"}
    for event in quarantined:
        meta = json.loads(Path(event["data"]["meta_path"]).read_text())
        assert (
            meta["error_type"] in {"TruncatedVideo", "DamagedVideo"}
            and "frames decode" in meta["error_message"]
        )
    titles = [a["data"]["title"] for a in probe.wait_event("alert.error", count=2)]
    assert sorted(titles) == ["Unreadable video quarantined"] * 2
    warned = probe.wait_event(
        "alert.warning", where=lambda a: a["data"]["title"] == "Entry in input/ refused"
    )
    assert len(warned) == 1 and "cam1.idx" in warned[0]["data"]["message_details"]  # routine: no page

    stored = {line["video"]["path"] for line in lines}
    assert {shown(f.name) for f in signed} == stored  # names kept, relative to their directory
    scratched = next(line for line in lines if line["video"]["id"] == by_name["scratched.mp4"]["subject"])
    assert "frames were damaged" in scratched["summary"]["text"]
    assert [p.name for p in (vv.home / "input").iterdir()] == [sidecar.name]  # nothing stuck
    assert all(up(probe, node) for node in NODES)  # no crash on the way, nothing logged as one
    assert not [out.name for out in vv.home.glob("*.out") if "Traceback" in out.read_text(errors="replace")]
    assert all(json.loads(line) for line in (vv.home / "logs" / "app.log").read_text().splitlines())
    uhd = next(e for e in probe.events("scan.done") if e["subject"] == by_name["CH04 4K.MP4"]["subject"])
    print(
        f"\n{len(FOOTAGE)} inputs ended in {elapsed:.1f}s; the 4K clip's scan took {uhd['data']['elapsed_s']}s"
    )


def test_a_damaged_video_that_reaches_scan_is_quarantined_at_the_first_attempt(
    vv: VV, probe: Probe, publisher: Publisher, footage: dict[str, Path]
) -> None:
    """Ingest's probe catches most damage; what it lets through (its seek to the last frame worked),
    scan quarantines at once: the same bytes never decode better on a second try."""
    vv.spawn("run", "scan", extra_env={"VV_SCAN_MODEL": "", "VV_SCAN_THREADS": "1"})
    wait_until(lambda: up(probe, "scan"), 30, "scan up")
    data = store_video(vv, footage["shredded.mp4"].read_bytes(), "shredded.mp4")
    publisher.publish(publisher.event("video.new", data, subject=data["video"]["id"]))
    quarantined = probe.wait_event("video.quarantined", timeout=30)[0]["data"]
    assert quarantined["stage"] == "scan" and len(quarantined["attempts"]) == 1
    assert "DamagedVideo: " in quarantined["attempts"][0]["reason"]
    meta = json.loads(Path(quarantined["meta_path"]).read_text())
    assert meta["error_type"] == "ScanFailed" and "frames decode" in meta["error_message"]
    assert probe.wait_event("alert.error")[0]["data"]["context"]["video"] == data["video"]["id"]


def test_the_longest_legal_names_are_stored_and_quarantined_whole(
    footage: dict[str, Path], tmp_path: Path
) -> None:
    """85 CJK characters make a legal 255-byte name; escaping, `-N` and `.meta.json` must not
    push what ingest writes past NAME_MAX (that was an endless retry, the file stuck in input/)."""
    paths = VVPaths(tmp_path / "home")
    inbox = tmp_path / "in"
    inbox.mkdir()
    good = inbox / ("入" * 83 + ".mp4")  # 253 bytes
    shutil.copyfile(footage["dvr.mp4"], good)
    escaped = inbox / ("\x1b" * 251 + ".mp4")  # 255 bytes, 1,004 once escaped
    shutil.copyfile(footage["cam3.mov"], escaped)
    bad = inbox / ("入" * 83 + ".mkv")
    shutil.copyfile(footage["shredded.mkv"], bad)
    ledger = ledger_for(paths)
    stored = [ingest_file(path, paths, ledger) for path in (good, escaped)]
    assert [outcome.kind for outcome in stored] == ["ingested", "ingested"]
    assert stored[0].data["original_name"] == good.name and Path(stored[0].data["video"]["path"]).is_file()
    assert stored[1].data["original_name"] == "\\x1b" * 251 + ".mp4"
    stored_name = Path(stored[1].data["video"]["path"]).name  # cut to fit, room left for a .part copy
    assert stored_name.startswith("\\x1b") and stored_name.endswith(".mp4") and len(stored_name) <= 255 - 14
    quarantined = ingest_file(bad, paths, ledger)
    assert quarantined.kind == "quarantined" and Path(quarantined.data["quarantine_path"]).is_file()
    assert json.loads(Path(quarantined.data["meta_path"]).read_text())["error_type"] == "TruncatedVideo"


def test_vv_ingest_reports_a_name_that_is_not_utf8(vv: VV, footage: dict[str, Path], tmp_path: Path) -> None:
    """`vv ingest` printed the name as it is: stdout refused it after the file had moved."""
    name = os.fsdecode(b"caf\xe9 latin-1.avi")
    good, bad = tmp_path / name, tmp_path / ("shredded " + name.replace(".avi", ".mkv"))
    shutil.copyfile(footage[name], good)
    shutil.copyfile(footage["shredded.mkv"], bad)
    result = vv.vv("ingest", str(good), str(bad))
    assert result.returncode == 1, result.stderr  # 1: one of them was quarantined
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and "caf\\udce9 latin-1.avi: ingested as" in lines[0]
    assert "caf\\udce9 latin-1.mkv: QUARANTINED (TruncatedVideo" in lines[1]
