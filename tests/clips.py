"""Build small test videos: from the ../shared/media photos (mp4v through cv2.VideoWriter), or
camera-like ones from ffmpeg's test pattern (any codec and container), and damage them.

A photo clip is a list of scenes; each shows one photo (letterboxed to the clip size) for some
seconds, optionally with a second photo sliding across it so the motion gate has something to see.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

Image = npt.NDArray[np.uint8]
Box = tuple[float, float, float, float]


def shared_dir() -> Path:
    """VV_SHARED, else the repository's sibling `../shared`."""
    return Path(os.environ.get("VV_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def require_shared(*relative: str) -> Path:
    """The shared directory, or skip the test naming what is missing."""
    root = shared_dir()
    for name in relative:
        if not (root / name).exists():
            pytest.skip(f"{root / name} is absent (set VV_SHARED to the shared assets directory)")
    return root


def photo(name: str, size: tuple[int, int]) -> Image:
    """`media/<name>.jpg` scaled to fit `size` (width, height), centred on gray."""
    path = require_shared(f"media/{name}.jpg") / "media" / f"{name}.jpg"
    image = cv2.imread(str(path))
    assert image is not None, f"cannot read {path}"
    width, height = size
    ratio = min(width / image.shape[1], height / image.shape[0])
    scaled = cv2.resize(image, (round(image.shape[1] * ratio), round(image.shape[0] * ratio)))
    canvas = np.full((height, width, 3), 114, dtype=np.uint8)
    top, left = (height - scaled.shape[0]) // 2, (width - scaled.shape[1]) // 2
    canvas[top : top + scaled.shape[0], left : left + scaled.shape[1]] = scaled
    return canvas


@dataclass(frozen=True)
class Scene:
    photo: str  # a media/*.jpg stem, or "" for a plain gray frame
    seconds: float
    slide: str = ""  # a photo that slides across the scene (motion), shown at a third of the size


def write_clip(
    path: Path, scenes: list[Scene], *, fps: float = 10.0, size: tuple[int, int] = (320, 240)
) -> Path:
    """Write the scenes as one mp4v clip; returns `path`."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    assert writer.isOpened(), "OpenCV cannot write mp4v"
    width, height = size
    try:
        for scene in scenes:
            base = photo(scene.photo, size) if scene.photo else np.full((height, width, 3), 114, np.uint8)
            sprite = photo(scene.slide, (width // 3, height // 3)) if scene.slide else None
            count = round(scene.seconds * fps)
            for i in range(count):
                frame = base.copy()
                if sprite is not None:
                    x = round((width - sprite.shape[1]) * i / max(count - 1, 1))
                    y = height - sprite.shape[0]
                    frame[y:, x : x + sprite.shape[1]] = sprite
                writer.write(frame)
    finally:
        writer.release()
    return path


def ffmpeg_clip(
    path: Path,
    *output: str,
    seconds: float = 3.0,
    fps: float = 10.0,
    size: tuple[int, int] = (640, 360),
) -> Path:
    """Encode ffmpeg's moving test pattern (no shared assets needed) with `output` options
    (codec, container format) into `path`; skips the test when ffmpeg is absent."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed: cannot encode camera-like clips")
    source = f"testsrc2=size={size[0]}x{size[1]}:rate={fps}:duration={seconds}"
    command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source]
    subprocess.run([*command, *output, str(path)], check=True, timeout=120)
    return path


def damage(path: Path, at: list[float], length: int = 4096, seed: int = 1) -> Path:
    """Overwrite `length` random bytes at each fraction `at` of the file, in place: the middle of
    the stream (frames), never the header, as a failing card or a bad copy does."""
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for fraction in at:
        assert 0.1 <= fraction <= 0.9, "damage the frames, not the header or the index"
        start = int(len(data) * fraction)
        data[start : start + length] = rng.randbytes(length)
    path.write_bytes(bytes(data))
    return path


# Sprites cut from the sample photos (x1, y1, x2, y2 in the photo), with the class the detector sees.
SPRITES = {
    "person": ("person", (172, 80, 280, 388)),
    "dog": ("person", (66, 252, 220, 361)),
    "horse": ("horses", (406, 206, 608, 352)),
}


@dataclass(frozen=True)
class Walker:
    """One labelled object crossing the frame in a straight line at constant speed.

    It enters at `start` and takes `seconds` to go from `x0` to `x1` (fractions of the width, its
    centre); its feet are at `y` (fraction of the height) and it is `height` of the frame tall.
    It vanishes during `hidden` (start, end) in seconds: a gap in what the detector can see.
    """

    kind: str  # a key of SPRITES
    start: float
    seconds: float
    x0: float = -0.1
    x1: float = 1.1
    y: float = 0.8
    height: float = 0.4
    hidden: tuple[float, float] = (0.0, 0.0)

    @property
    def label(self) -> str:
        return self.kind

    def box(self, t: float, size: tuple[int, int], aspect: float) -> tuple[float, float, float, float] | None:
        """Its whole box at `t` (it may reach past the frame's edges), or None when absent or hidden."""
        if not self.start <= t <= self.start + self.seconds or self.hidden[0] <= t < self.hidden[1]:
            return None
        width, height = size
        h = round(self.height * height)
        w = round(h * aspect)
        left = round((self.x0 + (self.x1 - self.x0) * (t - self.start) / self.seconds) * width - w / 2)
        bottom = round(self.y * height)
        return (left, bottom - h, left + w, bottom)


@dataclass(frozen=True)
class Street:
    """A labelled clip: walkers over a gray street, optionally behind a pillar (an occlusion)."""

    seconds: float
    walkers: tuple[Walker, ...]
    pillar: tuple[float, float] = (0.0, 0.0)  # its left and right edges, fractions of the width


def _sprite(kind: str, height: int) -> Image:
    source, (x1, y1, x2, y2) = SPRITES[kind]
    path = require_shared(f"media/{source}.jpg") / "media" / f"{source}.jpg"
    image = cv2.imread(str(path))
    assert image is not None, f"cannot read {path}"
    cut = image[y1:y2, x1:x2]
    return cv2.resize(cut, (max(1, round(cut.shape[1] * height / cut.shape[0])), height))


def _aspect(kind: str) -> float:
    _, (x1, y1, x2, y2) = SPRITES[kind]
    return (x2 - x1) / (y2 - y1)


def street_truth(street: Street, t: float, size: tuple[int, int]) -> list[tuple[int, str, Box]]:
    """The walkers in view at `t` (number, label, box clipped to the frame): at least half of one
    must show, inside the frame and not behind the pillar."""
    in_view = []
    for number, walker in enumerate(street.walkers):
        box = walker.box(t, size, _aspect(walker.kind))
        if box is None:
            continue
        x1, y1, x2, y2 = box
        left, right = max(x1, 0), min(x2, size[0])
        covered = max(0.0, min(right, street.pillar[1] * size[0]) - max(left, street.pillar[0] * size[0]))
        if right - left - covered >= (x2 - x1) / 2:
            in_view.append((number, walker.label, (float(left), float(y1), float(right), float(y2))))
    return in_view


def write_street(
    path: Path, street: Street, *, fps: float = 10.0, size: tuple[int, int] = (768, 576)
) -> Path:
    """Render `street` as an mp4v clip; `street_truth` gives its labels frame by frame."""
    width, height = size
    background = np.full((height, width, 3), 114, np.uint8)
    background[int(height * 0.55) :] = 90  # the pavement
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    assert writer.isOpened(), "OpenCV cannot write mp4v"
    sprites = {}
    for walker in street.walkers:
        sprite = _sprite(walker.kind, round(walker.height * height))
        sprites[walker] = sprite if walker.x1 >= walker.x0 else sprite[:, ::-1]  # facing its way
    try:
        for i in range(round(street.seconds * fps)):
            frame = background.copy()
            for walker, sprite in sprites.items():
                box = walker.box(i / fps, size, _aspect(walker.kind))
                if box is None:
                    continue
                left, top = int(box[0]), int(box[1])
                x1, x2 = max(left, 0), min(left + sprite.shape[1], width)
                if x2 > x1:
                    frame[top : top + sprite.shape[0], x1:x2] = sprite[:, x1 - left : x2 - left]
            if street.pillar[1] > street.pillar[0]:
                frame[:, round(street.pillar[0] * width) : round(street.pillar[1] * width)] = (60, 70, 80)
            writer.write(frame)
    finally:
        writer.release()
    return path


# Four people: two cross each other, all pass behind the pillar, one vanishes for a second (a gap
# in what the detector sees), nobody in view from 13 s to 15 s; at most three at once (4.8-7.6 s).
CROSSING = Street(
    23.0,
    (
        Walker("person", 0.5, 8.0),
        Walker("person", 1.5, 9.0, x0=1.1, x1=-0.1, y=0.7, height=0.36),
        Walker("person", 4.0, 9.0, y=0.9, height=0.42, hidden=(7.0, 8.0)),
        Walker("person", 15.0, 7.0, x0=1.1, x1=-0.1),
    ),
    pillar=(0.46, 0.53),
)


def busy_street(seconds: float, offset: float = 0.0) -> Street:
    """CROSSING again every 23 s (after its last walker left) for `seconds`, its walkers `offset` s later."""
    shifts = [k * 23.0 + offset for k in range(max(1, math.ceil(seconds / 23.0)))]
    walkers = tuple(
        replace(w, start=w.start + shift, hidden=(w.hidden[0] + shift, w.hidden[1] + shift))
        for shift in shifts
        for w in CROSSING.walkers
        if w.start + shift < seconds
    )
    return Street(seconds, walkers, CROSSING.pillar)
