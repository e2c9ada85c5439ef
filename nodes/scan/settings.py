"""Scan's settings: `[scan]` (the detector and its sampling), `[track]` (the tracker) and
`[filters]` (which tracks are reported)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Literal

from bus.config import ConfigError, coerce, section


@section("scan")
@dataclass(frozen=True)
class ScanSettings:
    backend: Literal["auto", "ultralytics", "onnx", "openvino", "darknet", "hog"] = "auto"
    model: str = ""
    model_config: str = ""
    labels: str = ""
    detect_fps: float = 5.0
    imgsz: int = 320
    confidence: float = 0.25
    threads: int = 0  # 0: one per core
    batch: int = 1  # sampled frames per detector call (onnx/openvino: pays off with a batched export)
    motion_gating: bool = True
    motion_threshold: float = 0.002  # fraction of changed pixels that counts as motion
    motion_max_skip_s: float = 5.0  # run the detector at least this often, even on a static scene
    max_processing_s: float = 0.0  # 0: derived from the video's duration
    max_attempts: int = 3
    download_timeout_s: float = 5.0  # wait this long for a named model's download, then fall back


@section("track")
@dataclass(frozen=True)
class TrackSettings:
    """The tracker scan runs on every sampled frame (nodes/scan/tracking.py)."""

    max_lost_s: float = 2.0  # a track missed (occluded, undetected) this long has ended
    match_iou: float = 0.2  # least overlap of a detection with a track's predicted box to continue it
    thumbnails: int = 12  # reported tracks per video that get a crop and a full-frame JPEG


@dataclass(frozen=True)
class ObjectFilter:
    """Frigate's false-positive filters for one class; areas are fractions of the frame."""

    min_score: float = 0.5  # a detection below this never starts a track (it may continue one)
    threshold: float = (
        0.6  # the median score of a track must reach this (Frigate: 0.7; see bench/accuracy.py)
    )
    min_area: float = 0.0  # detections smaller than this share of the frame are ignored
    max_area: float = 1.0  # and larger ones
    min_frames: int = 3  # a track must be in view this many sampled frames to be reported
    min_s: float = 0.5  # and this many seconds


@section("filters")
@dataclass(frozen=True)
class FilterSettings(ObjectFilter):
    """`[filters]` holds the defaults for every class; `[filters.classes.<label>]` overrides some of them."""

    classes: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(ObjectFilter)
        for label, overrides in self.classes.items():
            if not isinstance(overrides, dict):
                raise ConfigError(f"filters.classes.{label}: expected a table of filter settings")
            for key, value in overrides.items():
                if key not in hints:
                    raise ConfigError(f"filters.classes.{label}.{key}: unknown setting")
                overrides[key] = coerce(f"filters.classes.{label}.{key}", hints[key], value)

    def for_label(self, label: str) -> ObjectFilter:
        """The filters of one class: the defaults with its overrides."""
        defaults = {f.name: getattr(self, f.name) for f in dataclasses.fields(ObjectFilter)}
        return ObjectFilter(**{**defaults, **self.classes.get(label, {})})
