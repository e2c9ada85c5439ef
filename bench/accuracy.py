"""Tracking accuracy on labelled clips built from the sample photos: count error, ID switches, false tracks.

Each clip (tests/clips.py `Street`) has known objects on known straight paths: people entering and
leaving, crossing each other, passing behind a pillar (an occlusion), vanishing for a second (a gap
in what the detector sees), a stretch with nobody, a dog and a horse. Every clip is scanned once
with motion gating and once without (Darknet Yolo-Fastest, detect_fps 5); each tracker/filter
setting is then replayed on the same detections, so settings differ only in tracking. Prints
figures; asserts nothing.

- count error: reported tracks minus labelled objects, per class (0 is right; +n overcounts), summed
  over the clips; |err| sums the absolute errors of every clip and class (no cancelling out)
- ID switches: times a labelled object's matched track id changes (IoU >= 0.5 with its box)
- false tracks: reported tracks that match no labelled object in most of their detections
- peak: most reported tracks of a class in view at once, minus the labelled peak

Usage: python bench/accuracy.py [--fps 10] [--detect-fps 5]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scipy.optimize import linear_sum_assignment

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("VV_SHARED", str(REPO.parent / "shared"))

from nodes.scan.analyze import scan_video  # noqa: E402
from nodes.scan.detectors import make_detector  # noqa: E402
from nodes.scan.settings import FilterSettings, ScanSettings, TrackSettings  # noqa: E402
from nodes.scan.tracking import iou_matrix, track_frames  # noqa: E402
from nodes.summarize.summary import peak_in_view  # noqa: E402

SIZE = (768, 576)
WEIGHTS = "models/yolo-fastest-1.1-coco/yolo-fastest-1.1.weights"
MATCH_IOU = 0.5


def clips() -> dict[str, Any]:
    """The labelled scenes (tests/clips.py builds and labels them)."""
    from clips import CROSSING, Street, Walker, busy_street  # type: ignore[import-not-found, unused-ignore]

    return {
        "crossing": CROSSING,
        "street 80 s": busy_street(80.0),  # the pipeline benchmark's clip: 15 people
        "mixed": Street(  # a dog following a person, a horse passing the other way, a late walker
            20.0,
            (
                Walker("person", 0.0, 10.0, y=0.85),
                Walker("dog", 1.5, 10.0, y=0.9, height=0.2),
                Walker("horse", 3.0, 12.0, x0=1.1, x1=-0.1, y=0.6, height=0.3),
                Walker("person", 12.0, 7.0, x0=1.1, x1=-0.1, y=0.75, height=0.36),
            ),
        ),
        "standing": Street(  # someone stands still for 14 s (the gate skips most frames) while two pass
            16.0,
            (
                Walker("person", 0.0, 14.0, x0=0.2, x1=0.2, y=0.8),
                Walker("person", 4.0, 4.0, x0=1.1, x1=0.3, y=0.65, height=0.3),
                Walker("person", 10.0, 5.0, x0=0.3, x1=1.1, y=0.95, height=0.45),
            ),
        ),
    }


@dataclass(frozen=True)
class Setting:
    name: str
    track: TrackSettings
    filters: FilterSettings


DEFAULT = Setting("defaults", TrackSettings(), FilterSettings())
UNFILTERED = FilterSettings(
    min_score=0.25, threshold=0.0, min_frames=1, min_s=0.0
)  # 0.25: the detector's floor
SETTINGS = [
    DEFAULT,
    Setting("no filters", DEFAULT.track, UNFILTERED),
    Setting("no filters, max_lost_s 0", replace(DEFAULT.track, max_lost_s=0.0), UNFILTERED),
    Setting("max_lost_s 0.5", replace(DEFAULT.track, max_lost_s=0.5), DEFAULT.filters),
    Setting("max_lost_s 4", replace(DEFAULT.track, max_lost_s=4.0), DEFAULT.filters),
    Setting("match_iou 0.1", replace(DEFAULT.track, match_iou=0.1), DEFAULT.filters),
    Setting("match_iou 0.4", replace(DEFAULT.track, match_iou=0.4), DEFAULT.filters),
    Setting("min_score 0.3", DEFAULT.track, replace(DEFAULT.filters, min_score=0.3)),
    Setting("min_score 0.7", DEFAULT.track, replace(DEFAULT.filters, min_score=0.7)),
    Setting("threshold 0.5", DEFAULT.track, replace(DEFAULT.filters, threshold=0.5)),
    Setting("threshold 0.6", DEFAULT.track, replace(DEFAULT.filters, threshold=0.6)),
    Setting("threshold 0.7 (Frigate)", DEFAULT.track, replace(DEFAULT.filters, threshold=0.7)),
    Setting("threshold 0.8", DEFAULT.track, replace(DEFAULT.filters, threshold=0.8)),
    Setting("min_frames 1, min_s 0", DEFAULT.track, replace(DEFAULT.filters, min_frames=1, min_s=0.0)),
    Setting("min_frames 5, min_s 1", DEFAULT.track, replace(DEFAULT.filters, min_frames=5, min_s=1.0)),
]


@dataclass
class Score:
    count_error: Counter[str]
    id_switches: int
    false_tracks: int
    peak_error: Counter[str]


def evaluate(street: Any, analytic: dict[str, Any], setting: Setting) -> Score:
    """Replay `setting` on the clip's detections and compare with the labels."""
    from clips import street_truth  # type: ignore[import-not-found, unused-ignore]

    frames = copy.deepcopy(analytic["frames"])
    tracks = track_frames(frames, setting.track, setting.filters, SIZE)
    reported = {track["id"]: track for track in tracks if track["reported"]}
    last_id: dict[int, int] = {}
    switches = 0
    matched_hits: Counter[int] = Counter()
    hits: Counter[int] = Counter()
    truth_span: dict[int, list[float]] = {}
    for frame in frames:
        truth = street_truth(street, frame["t"], SIZE)
        for number, _, _ in truth:
            span = truth_span.setdefault(number, [frame["t"], frame["t"]])
            span[1] = frame["t"]
        if not frame["inferred"]:
            continue
        tagged = [d for d in frame["detections"] if d.get("track") in reported]
        hits.update(d["track"] for d in tagged)
        overlap = iou_matrix([box for _, _, box in truth], [tuple(d["box"]) for d in tagged])
        rows, cols = linear_sum_assignment(overlap, maximize=True)  # one detection per object
        for row, col in zip(rows, cols, strict=True):
            number, label, _ = truth[row]
            track_id = tagged[col]["track"]
            if overlap[row, col] < MATCH_IOU or reported[track_id]["label"] != label:
                continue
            matched_hits[track_id] += 1
            if number in last_id and last_id[number] != track_id:
                switches += 1
            last_id[number] = track_id
    labels = Counter(walker.label for walker in street.walkers)
    found = Counter(track["label"] for track in reported.values())
    truth_tracks = defaultdict(list)
    for number, (first, last) in truth_span.items():
        truth_tracks[street.walkers[number].label].append({"first_seen": first, "last_seen": last})
    peak_error: Counter[str] = Counter()
    for label in set(labels) | set(found):
        mine = [t for t in reported.values() if t["label"] == label]
        peak_error[label] = peak_in_view(mine) - peak_in_view(truth_tracks[label])
    return Score(
        count_error=Counter({label: found[label] - labels[label] for label in set(labels) | set(found)}),
        id_switches=switches,
        false_tracks=sum(1 for tid in reported if matched_hits[tid] * 2 < hits[tid]),
        peak_error=peak_error,
    )


def _signed(counter: Counter[str]) -> str:
    parts = [f"{label} {value:+d}" for label, value in sorted(counter.items()) if value]
    return ", ".join(parts) or "0"


def main() -> int:
    from clips import require_shared, write_street  # type: ignore[import-not-found, unused-ignore]

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--detect-fps", type=float, default=5.0)
    args = parser.parse_args()
    weights = require_shared(WEIGHTS) / WEIGHTS
    settings = ScanSettings(model=str(weights), detect_fps=args.detect_fps)
    detector, reason = make_detector(settings, Path("unused"))
    if reason:
        print(f"no detector: {reason}", file=sys.stderr)
        return 1
    scanned: list[tuple[str, bool, Any, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="vv-bench-accuracy-") as work:
        for name, street in clips().items():
            clip = write_street(Path(work) / f"{name}.mp4", street, fps=args.fps, size=SIZE)
            for gating in (True, False):
                analytic = scan_video(clip, detector, replace(settings, motion_gating=gating))
                scanned.append((name, gating, street, analytic))
    truth = ", ".join(
        f"{name}: "
        + ", ".join(f"{n} {label}" for label, n in sorted(Counter(w.label for w in s.walkers).items()))
        for name, s in clips().items()
    )
    print(
        f"tracking accuracy, {len(clips())} labelled clips {SIZE[0]}x{SIZE[1]} at {args.fps:g} fps ({truth})"
    )
    print(
        f"darknet yolo-fastest, detect_fps {args.detect_fps:g}; each setting replayed on the same detections"
    )
    header = f"{'setting':<30} {'gating':<6} {'count error':<32} {'|err|':>5} {'ID sw':>5} {'false':>5}  {'peak error'}"
    print(header)
    print("-" * len(header))
    for setting in SETTINGS:
        for gating in (True, False):
            total = Score(Counter(), 0, 0, Counter())
            absolute = 0
            for _, gated, street, analytic in scanned:
                if gated != gating:
                    continue
                score = evaluate(street, analytic, setting)
                total.count_error.update(score.count_error)
                absolute += sum(abs(error) for error in score.count_error.values())
                total.id_switches += score.id_switches
                total.false_tracks += score.false_tracks
                total.peak_error.update(score.peak_error)
            print(
                f"{setting.name:<30} {'on' if gating else 'off':<6} {_signed(total.count_error):<32} "
                f"{absolute:>5} {total.id_switches:>5} {total.false_tracks:>5}  {_signed(total.peak_error)}"
            )
    print("\nper clip, defaults:")
    for name, gating, street, analytic in scanned:
        score = evaluate(street, analytic, DEFAULT)
        print(
            f"  {name:<10} gating {'on ' if gating else 'off'}  count error {_signed(score.count_error):<22} "
            f"ID switches {score.id_switches}  false tracks {score.false_tracks}  peak error {_signed(score.peak_error)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
