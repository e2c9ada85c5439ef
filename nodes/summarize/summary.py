"""Turn an analytic artifact into a scene summary: per-class figures, a timeline, thumbnails, text.

`build_summary` is a pure function of the analytic (unit-tested alone); `describe` is the default,
deterministic text generator and can be swapped (e.g. for an LLM) by passing another callable.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import cv2

from bus.artifacts import write_artifact
from nodes.common.video import FrameReader
from nodes.scan.analyze import VideoError, open_video
from nodes.scan.detectors.base import Frame
from nodes.summarize.tracks import MAX_GAP_S, Track, link_tracks

SUMMARY_VERSION = 1
DWELL_MENTION_S = 5.0  # a stay shorter than this is not worth a clause in the text
THUMBNAIL_MARGIN = 0.1  # context around the box, as a fraction of its size
THUMBNAIL_MAX_SIDE = 640  # a crop of a 4K frame is scaled down to this: a thumbnail is for a glance
JPEG_QUALITY = 85

Describer = Callable[[dict[str, Any]], str]


class ThumbnailRef(TypedDict):
    path: str
    sha256: str
    track: int


_IRREGULAR = {"person": "people", "mouse": "mice", "knife": "knives", "man": "men", "woman": "women"}
_UNCOUNTABLE = {"sheep", "skis", "scissors", "broccoli", "deer", "fish"}


def plural(label: str, count: int) -> str:
    """English plural of a class name (only the last word of 'traffic light' changes)."""
    if count == 1:
        return label
    head, _, last = label.rpartition(" ")
    if last in _UNCOUNTABLE:
        word = last
    elif last in _IRREGULAR:
        word = _IRREGULAR[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        word = last + "es"
    elif re.search(r"[^aeiou]y$", last):
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


def clock(seconds: float) -> str:
    """00:12, or 1:02:03 past an hour."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def describe(summary: dict[str, Any]) -> str:
    """One deterministic sentence: "2 people and 1 car between 00:12 and 00:45; one person stayed 31 s"."""
    tracks = summary["tracks"]
    if not tracks:
        return "No objects detected."
    counts = summary["counts"]
    order = sorted(counts, key=lambda label: (-counts[label], label))
    what = _join([f"{counts[label]} {plural(label, counts[label])}" for label in order])
    start = min(track["first_seen"] for track in tracks)
    end = max(track["last_seen"] for track in tracks)
    when = f"at {clock(start)}" if clock(start) == clock(end) else f"between {clock(start)} and {clock(end)}"
    text = f"{what} {when}"
    longest = max(tracks, key=lambda track: (track["dwell_s"], -track["id"]))
    if longest["dwell_s"] >= DWELL_MENTION_S:
        text += f"; one {longest['label']} stayed {round(longest['dwell_s'])} s"
    return text + "."


def _timeline(tracks: list[Track], max_gap_s: float) -> list[dict[str, Any]]:
    """Merge track lifetimes into activity segments; each lists how many tracks of each class it holds."""
    segments: list[dict[str, Any]] = []
    members: list[Counter[str]] = []
    for track in sorted(tracks, key=lambda tr: (tr.first_t, tr.id)):
        if segments and track.first_t - segments[-1]["end"] <= max_gap_s:
            segments[-1]["end"] = max(segments[-1]["end"], track.last_t)
            members[-1][track.label] += 1
        else:
            segments.append({"start": track.first_t, "end": track.last_t})
            members.append(Counter({track.label: 1}))
    for segment, labels in zip(segments, members, strict=True):
        segment["labels"] = dict(sorted(labels.items()))
    return segments


def _track_json(track: Track) -> dict[str, Any]:
    return {
        "id": track.id,
        "label": track.label,
        "first_seen": round(track.first_t, 3),
        "last_seen": round(track.last_t, 3),
        "dwell_s": round(track.dwell_s, 3),
        "hits": track.hits,
        "best": {
            "t": round(track.best_t, 3),
            "index": track.best_index,
            "box": [round(v, 1) for v in track.best_box],
            "confidence": round(track.best_confidence, 4),
        },
    }


def build_summary(
    analytic: dict[str, Any], *, describer: Describer = describe, max_gap_s: float = MAX_GAP_S
) -> dict[str, Any]:
    """The summary artifact for one analytic artifact (see schemas/summary.schema.json)."""
    tracks = link_tracks(analytic["frames"], max_gap_s=max_gap_s)
    classes: dict[str, dict[str, Any]] = {}
    for track in tracks:
        entry = classes.setdefault(
            track.label,
            {
                "tracks": 0,
                "first_seen": track.first_t,
                "last_seen": track.last_t,
                "longest_dwell_s": 0.0,
                "peak_simultaneous": analytic["counts"].get(track.label, {}).get("max_simultaneous", 1),
            },
        )
        entry["tracks"] += 1
        entry["first_seen"] = min(entry["first_seen"], track.first_t)
        entry["last_seen"] = max(entry["last_seen"], track.last_t)
        entry["longest_dwell_s"] = round(max(entry["longest_dwell_s"], track.dwell_s), 3)
    summary: dict[str, Any] = {
        "summary_version": SUMMARY_VERSION,
        "video": analytic["video"],
        "detector": analytic["detector"],
        "classes": dict(sorted(classes.items())),
        "counts": {label: entry["tracks"] for label, entry in sorted(classes.items())},
        "timeline": _timeline(tracks, max_gap_s),
        "tracks": [_track_json(track) for track in tracks],
    }
    summary["text"] = describer(summary) + damage_note(analytic["video"])
    return summary


def damage_note(video: dict[str, Any]) -> str:
    """Said after any describer's text: a LogLine of a partly damaged video must not read as whole."""
    damaged = video.get("frames_damaged", 0)
    if not damaged:
        return ""
    return f" {damaged} of {video['frames']} frames were damaged and could not be decoded."


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "object"


def write_thumbnails(video_path: Path, summary: dict[str, Any], out_dir: Path) -> list[ThumbnailRef]:
    """A JPEG crop of each track's best frame; tracks whose frame fails are skipped.

    Frames are read in order, as the scan read them, never sought: MPEG-TS and raw H.264 streams
    cannot seek, and past a damaged frame a seek lands elsewhere than the scan's frame index.
    """
    wanted: dict[int, list[dict[str, Any]]] = {}
    for track in summary["tracks"]:
        wanted.setdefault(track["best"]["index"], []).append(track)
    last = max(wanted, default=-1)
    refs: list[ThumbnailRef] = []
    with open_video(video_path) as (capture, info):
        reader = FrameReader(capture)
        while reader.index < last and reader.grab():
            if reader.index not in wanted:
                continue
            ok, frame = capture.retrieve()
            if not ok or frame is None:
                continue
            for track in wanted[reader.index]:
                jpeg = _crop(frame, track["best"]["box"], info)
                if jpeg is None:
                    continue
                ref = write_artifact(out_dir, f"thumb-{track['id']:04d}-{_slug(track['label'])}.jpg", jpeg)
                refs.append({"path": ref["path"], "sha256": ref["sha256"], "track": track["id"]})
    return sorted(refs, key=lambda ref: ref["track"])


def _crop(frame: Frame, box: list[float], info: dict[str, Any]) -> bytes | None:
    """The box with a margin, at most THUMBNAIL_MAX_SIDE on its long side, as JPEG (None if empty)."""
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * THUMBNAIL_MARGIN, (y2 - y1) * THUMBNAIL_MARGIN
    left, top = max(0, int(x1 - mx)), max(0, int(y1 - my))
    right, bottom = min(info["width"], int(x2 + mx + 1)), min(info["height"], int(y2 + my + 1))
    if right <= left or bottom <= top:
        return None
    crop = frame[top:bottom, left:right]
    scale = THUMBNAIL_MAX_SIDE / max(crop.shape[:2])
    if scale < 1.0:
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise VideoError(f"cannot encode a thumbnail of box {box}")
    return bytes(jpeg.tobytes())
