"""Turn an analytic artifact into a scene summary: per-class figures, a timeline and text.

The tracks, their filters and thumbnails were made by scan from the frames it decoded, so this is
cheap and never opens the video. `build_summary` is a pure function of the analytic (unit-tested
alone); `describe` is the default, deterministic text generator and can be swapped (e.g. for an
LLM) by passing another callable.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

SUMMARY_VERSION = 2
DWELL_MENTION_S = 5.0  # a stay shorter than this is not worth a clause in the text
MAX_GAP_S = 2.0  # tracks closer in time than this make one activity segment of the timeline

Describer = Callable[[dict[str, Any]], str]


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


def _count(label: str, count: int, peak: int) -> str:
    """Distinct objects, and the most in view together when that differs: "14 people (up to 5 at once)"."""
    text = f"{count} {plural(label, count)}"
    return f"{text} (up to {peak} at once)" if 1 < peak < count else text


def describe(summary: dict[str, Any]) -> str:
    """One deterministic sentence: "2 people and 1 car between 00:12 and 00:45; one person stayed 31 s"."""
    tracks = summary["tracks"]
    if not tracks:
        return "No objects detected."
    counts = summary["counts"]
    order = sorted(counts, key=lambda label: (-counts[label], label))
    what = _join(
        [_count(label, counts[label], summary["classes"][label]["peak_simultaneous"]) for label in order]
    )
    start = min(track["first_seen"] for track in tracks)
    end = max(track["last_seen"] for track in tracks)
    when = f"at {clock(start)}" if clock(start) == clock(end) else f"between {clock(start)} and {clock(end)}"
    text = f"{what} {when}"
    longest = max(tracks, key=lambda track: (track["dwell_s"], -track["id"]))
    if longest["dwell_s"] >= DWELL_MENTION_S:
        text += f"; one {longest['label']} stayed {round(longest['dwell_s'])} s"
    return text + "."


def peak_in_view(tracks: list[dict[str, Any]]) -> int:
    """Most tracks in view at one instant (one seen last where another is seen first overlaps it)."""
    events = sorted(
        [(track["first_seen"], 0) for track in tracks] + [(track["last_seen"], 1) for track in tracks]
    )
    peak = current = 0
    for _, ends in events:
        current += -1 if ends else 1
        peak = max(peak, current)
    return peak


def _timeline(tracks: list[dict[str, Any]], max_gap_s: float) -> list[dict[str, Any]]:
    """Merge track lifetimes into activity segments; each lists how many tracks of each class it holds."""
    segments: list[dict[str, Any]] = []
    members: list[Counter[str]] = []
    for track in sorted(tracks, key=lambda tr: (tr["first_seen"], tr["id"])):
        if segments and track["first_seen"] - segments[-1]["end"] <= max_gap_s:
            segments[-1]["end"] = max(segments[-1]["end"], track["last_seen"])
            members[-1][track["label"]] += 1
        else:
            segments.append({"start": track["first_seen"], "end": track["last_seen"]})
            members.append(Counter({track["label"]: 1}))
    for segment, labels in zip(segments, members, strict=True):
        segment["labels"] = dict(sorted(labels.items()))
    return segments


_TRACK_FIELDS = (
    "id",
    "label",
    "first_seen",
    "last_seen",
    "dwell_s",
    "hits",
    "frames",
    "median_score",
    "best",
)


def build_summary(
    analytic: dict[str, Any], *, describer: Describer = describe, max_gap_s: float = MAX_GAP_S
) -> dict[str, Any]:
    """The summary artifact for one analytic artifact (see schemas/summary.schema.json): only the
    tracks that passed their class's filters count; the others are tallied under `rejected`."""
    reported = [track for track in analytic["tracks"] if track["reported"]]
    rejected = Counter(track["label"] for track in analytic["tracks"] if not track["reported"])
    classes: dict[str, dict[str, Any]] = {}
    for label in sorted({track["label"] for track in reported}):
        mine = [track for track in reported if track["label"] == label]
        classes[label] = {
            "tracks": len(mine),
            "first_seen": min(track["first_seen"] for track in mine),
            "last_seen": max(track["last_seen"] for track in mine),
            "longest_dwell_s": max(track["dwell_s"] for track in mine),
            "peak_simultaneous": peak_in_view(mine),
        }
    tracks = []
    for track in reported:
        entry = {name: track[name] for name in _TRACK_FIELDS}
        if "thumbnail" in track:
            entry["thumbnail"] = track["thumbnail"]
        tracks.append(entry)
    summary: dict[str, Any] = {
        "summary_version": SUMMARY_VERSION,
        "video": analytic["video"],
        "detector": analytic["detector"],
        "classes": classes,
        "counts": {label: entry["tracks"] for label, entry in classes.items()},
        "rejected": dict(sorted(rejected.items())),
        "timeline": _timeline(reported, max_gap_s),
        "tracks": tracks,
    }
    summary["text"] = describer(summary) + damage_note(analytic["video"])
    return summary


def damage_note(video: dict[str, Any]) -> str:
    """Said after any describer's text: a LogLine of a partly damaged video must not read as whole."""
    damaged = video.get("frames_damaged", 0)
    if not damaged:
        return ""
    return f" {damaged} of {video['frames']} frames were damaged and could not be decoded."


def thumbnails(summary: dict[str, Any]) -> list[dict[str, str]]:
    """Every thumbnail file the summary names (crop, then full frame, per track)."""
    return [
        {"path": ref["path"], "sha256": ref["sha256"]}
        for track in summary["tracks"]
        if "thumbnail" in track
        for ref in (track["thumbnail"]["crop"], track["thumbnail"]["frame"])
    ]
