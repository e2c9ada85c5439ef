"""Build small test videos: from the ../shared/media photos (mp4v through cv2.VideoWriter), or
camera-like ones from ffmpeg's test pattern (any codec and container), and damage them.

A photo clip is a list of scenes; each shows one photo (letterboxed to the clip size) for some
seconds, optionally with a second photo sliding across it so the motion gate has something to see.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

Image = npt.NDArray[np.uint8]


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
