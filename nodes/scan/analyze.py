"""Scan one video into the analytic artifact: decode, sample at `detect_fps`, gate on motion, detect.

Skipped frames are only `grab()`bed (demuxed and decoded, never converted to BGR), so a 5 fps scan
of a 25 fps video pays the colour conversion and inference for one frame in five. Timing figures
go into the artifact so the orchestration overhead (everything but decode and inference) is visible.
Damaged frames are skipped and counted (`video.frames_damaged`); too many raise DamagedVideo.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2

from nodes.common.video import FrameReader, capture_of
from nodes.scan.detectors.base import Detector, Frame, detect_frames
from nodes.scan.motion import MotionGate
from nodes.scan.objects import ObjectTracker
from nodes.scan.settings import FilterSettings, ScanSettings, TrackSettings

ANALYTIC_VERSION = 2


class VideoError(Exception):
    """The file is not a readable video (cannot open, no frames, truncated): quarantine material."""


class DamagedVideo(VideoError):
    """Too few of its frames decode (see nodes.common.video): the same bytes never decode better."""


class ScanTimeout(Exception):
    """The scan ran past its deadline (`scan.max_processing_s`)."""


@contextlib.contextmanager
def open_video(path: Path) -> Iterator[tuple[cv2.VideoCapture, dict[str, Any]]]:
    """Open with OpenCV's FFmpeg backend and read the container's figures, or raise VideoError.

    `frames` is the container's count, 0 when it has none (a raw H.264 stream): only a full decode
    tells how many frames such a stream holds.
    """
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: file is empty (0 bytes)")
    with capture_of(path) as capture:
        if not capture.isOpened():
            raise VideoError(f"{path}: not a readable video (OpenCV/FFmpeg cannot open it)")
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if not math.isfinite(fps) or fps <= 0 or width <= 0 or height <= 0:
            raise VideoError(
                f"{path}: no video stream with a frame rate and size (fps={fps}, {width}x{height})"
            )
        info = {
            "fps": round(fps, 3),
            "frames": max(frames, 0),
            "duration_s": round(max(frames, 0) / fps, 3),
            "width": width,
            "height": height,
        }
        yield capture, info


def _counts(frames: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per label: most detections in one frame, and how many inferred frames had at least one."""
    counts: dict[str, dict[str, int]] = {}
    for frame in frames:
        per_frame = Counter(d["label"] for d in frame["detections"])
        for label, n in per_frame.items():
            entry = counts.setdefault(label, {"max_simultaneous": 0, "frames": 0})
            entry["max_simultaneous"] = max(entry["max_simultaneous"], n)
            entry["frames"] += 1
    return dict(sorted(counts.items()))


def scan_video(
    path: Path,
    detector: Detector,
    settings: ScanSettings,
    *,
    track: TrackSettings | None = None,
    filters: FilterSettings | None = None,
    thumbnails: Path | None = None,
    progress: Callable[[float], None] | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Run `detector` and the tracker over the sampled frames of `path`, writing the reported tracks'
    thumbnails into the directory `thumbnails` (none without); `deadline` is a time.monotonic() instant."""
    started = time.perf_counter()
    gate = MotionGate(settings.motion_threshold, settings.motion_max_skip_s, enabled=settings.motion_gating)
    sampled: list[dict[str, Any]] = []
    decode_s = motion_s = inference_s = 0.0
    next_sample = 0.0
    reported = 0.0
    pending: list[
        tuple[dict[str, Any], Frame, float]
    ] = []  # inferred frames (record, image, t) awaiting a batch

    with open_video(path) as (capture, info):
        fps = info["fps"]
        step = fps / settings.detect_fps if 0 < settings.detect_fps < fps else 1.0
        objects = ObjectTracker(
            track or TrackSettings(), filters or FilterSettings(), (info["width"], info["height"])
        )

        def flush() -> None:
            """Detect the pending frames in one call, then hand them to the tracker in order."""
            nonlocal inference_s
            if not pending:
                return
            tick = time.perf_counter()
            found = detect_frames(detector, [frame for _, frame, _ in pending])
            inference_s += time.perf_counter() - tick
            for (record, frame, t), detections in zip(pending, found, strict=True):
                record["detections"] = [d.to_json() for d in detections]
                objects.frame(t, record["index"], frame, record["detections"])
            pending.clear()

        reader = FrameReader(capture)
        while True:
            tick = time.perf_counter()
            if not reader.grab():
                decode_s += time.perf_counter() - tick
                break
            index = reader.index
            if index + 1e-6 < next_sample:
                decode_s += time.perf_counter() - tick
                continue
            ok, frame = capture.retrieve()
            decode_s += time.perf_counter() - tick
            if not ok or frame is None:
                raise VideoError(f"{path}: frame {index} cannot be decoded")
            while next_sample <= index + 1e-6:  # past damaged frames, the sampling grid continues
                next_sample += step
            if deadline is not None and time.monotonic() > deadline:
                raise ScanTimeout(
                    f"{path}: scan deadline passed at {index / fps:.1f}s of {info['duration_s']}s"
                )
            t = index / fps
            tick = time.perf_counter()
            decision = gate.step(frame, t)
            motion_s += time.perf_counter() - tick
            record: dict[str, Any] = {
                "t": round(t, 3),
                "index": index,
                "motion": decision.motion,
                "inferred": decision.infer,
                "detections": [],
            }
            sampled.append(record)
            if decision.infer:
                pending.append((record, frame, t))
                if len(pending) >= settings.batch:
                    flush()
            else:
                flush()  # the tracker takes frames in order: a gated frame ends the batch
                objects.frame(t, index, frame, None)
            if progress is not None and info["frames"] and index / info["frames"] - reported >= 0.01:
                reported = min(1.0, index / info["frames"])
                progress(reported)
        flush()
    decoded = reader.result(info["frames"])
    if (problem := decoded.problem()) is not None:
        raise DamagedVideo(f"{path}: {problem}")
    info = {  # a raw stream's container has no count: what was read is its length
        **info,
        "frames": decoded.frames,
        "duration_s": round(decoded.frames / fps, 3),
        "frames_damaged": decoded.damaged,
    }
    tracks = objects.finish(thumbnails)
    if progress is not None:
        progress(1.0)
    return {
        "analytic_version": ANALYTIC_VERSION,
        "video": info,
        "detector": {"backend": detector.name, "model": detector.model, "runtime": detector.runtime},
        "detect_fps": settings.detect_fps,
        "imgsz": settings.imgsz,
        "confidence": settings.confidence,
        "motion_gating": settings.motion_gating,
        "motion_threshold": settings.motion_threshold,
        "frames": sampled,
        "counts": _counts(sampled),
        "tracks": tracks,
        "timing": {
            "decode_s": round(decode_s, 4),
            "motion_s": round(motion_s, 4),
            "inference_s": round(inference_s, 4),
            "total_s": round(time.perf_counter() - started, 4),
            "frames_decoded": decoded.decoded,
            "frames_sampled": len(sampled),
            "frames_inferred": sum(1 for f in sampled if f["inferred"]),
        },
    }
