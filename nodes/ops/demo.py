"""The pieces of `vv demo` (nodes/cli/demo.py): a sample clip (photos a dependency ships, or drawn with
OpenCV), the model to run, a live view of the bus until a LogLine comes out, and what to say about the
detector that ran."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bus.client import MqttError, stream
from bus.config import Settings
from bus.topics import is_catchup_reply, parse_topic
from nodes.common.shared import shared_dir
from nodes.ops.tail import format_line

NODES = ("journal", "ingest", "scan", "summarize", "sign", "reconciler")
SHARED_MODEL = "models/yolo-fastest-1.1-coco/yolo-fastest-1.1.weights"
YOLO_HINT = (
    "demo: to run a YOLO model instead: online, `pip install 'vv-edge[yolo]'` and scan fetches "
    "yolo11n.pt once; offline, copy a YOLO .onnx (`vv model export yolo11n.pt --imgsz 320` on a machine "
    "with the [yolo] extra) or Darknet .weights (+ .cfg) to the box and set VV_SCAN_MODEL (scan.model) "
    "to its path"
)


def sample_photos() -> list[Path]:
    """Photos shipped inside the ultralytics wheel (the `[yolo]` extra), found without importing it."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return []
    assets = Path(next(iter(spec.submodule_search_locations))) / "assets"
    return [p for p in (assets / "bus.jpg", assets / "zidane.jpg") if p.exists()]


def build_clip(photos: list[Path], out: Path, seconds: float = 3.0, fps: float = 10.0) -> Path:
    """A 640x480 mp4v clip showing each photo in turn, slowly panning so there is motion."""
    size = (640, 480)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    for photo in photos:
        image = cv2.imread(str(photo))
        if image is None:
            raise OSError(f"cannot read {photo}")
        scale = max(size[0] / image.shape[1], size[1] / image.shape[0]) * 1.1
        image = cv2.resize(image, (int(image.shape[1] * scale), int(image.shape[0] * scale)))
        frames = int(seconds * fps)
        for i in range(frames):
            x = int((image.shape[1] - size[0]) * i / max(frames - 1, 1))
            writer.write(np.ascontiguousarray(image[: size[1], x : x + size[0]]))
    writer.release()
    return out


def _walker(frame: np.ndarray[Any, Any], x: float, feet_y: float, height: float, stride: float) -> None:
    """A dark walking figure drawn in place, proportioned so OpenCV's HOG people detector finds it."""
    unit, ink = height / 8, (40, 40, 40)
    swing = np.sin(stride)
    cv2.circle(frame, (int(x), int(feet_y - 7.3 * unit)), int(0.6 * unit), ink, -1, cv2.LINE_AA)
    cv2.ellipse(
        frame, (int(x), int(feet_y - 5 * unit)), (int(0.9 * unit), int(1.8 * unit)), 0, 0, 360, ink, -1
    )
    hip = (int(x), int(feet_y - 3.5 * unit))
    for side in (1, -1):
        foot = (int(x + side * (swing * 1.2 + 0.3) * unit), int(feet_y))
        cv2.line(frame, hip, foot, ink, int(0.9 * unit), cv2.LINE_AA)
        shoulder = (int(x + side * 0.7 * unit), int(feet_y - 6.2 * unit))
        hand = (int(x + side * (0.9 - swing * 0.8) * unit), int(feet_y - 3.6 * unit))
        cv2.line(frame, shoulder, hand, ink, int(0.45 * unit), cv2.LINE_AA)


def synthetic_clip(out: Path, seconds: float = 6.0, fps: float = 10.0) -> Path:
    """A 640x480 mp4v clip drawn with OpenCV alone: two figures walking across a yard (lean installs)."""
    size = (640, 480)
    sky = np.linspace(230, 170, size[1], dtype=np.float32)[:, None, None]
    yard = np.broadcast_to(sky, (size[1], size[0], 3)).astype(np.uint8)
    cv2.rectangle(yard, (0, 400), size, (120, 140, 120), -1)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    frames = int(seconds * fps)
    for i in range(frames):
        frame = yard.copy()
        _walker(frame, 120 + 300 * i / frames, 430, 220, i * 0.6)
        _walker(frame, 560 - 200 * i / frames, 410, 160, i * 0.6 + 1.5)
        writer.write(frame)
    writer.release()
    return out


def model_env() -> dict[str, str]:
    """The detector: VV_SCAN_MODEL if set, else the shared Yolo-Fastest beside the repo, else
    ultralytics' yolo11n.pt (needs the internet once; offline, scan falls back to HOG and says so)."""
    if os.environ.get("VV_SCAN_MODEL"):
        return {}
    shared = shared_dir()
    if (shared / SHARED_MODEL).exists():
        return {"VV_SCAN_MODEL": str(shared / SHARED_MODEL)}
    return {"VV_SCAN_MODEL": "yolo11n.pt"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Seen:
    """What the demo took from the bus: the signed LogLine, and which detector the scan ran."""

    logline: str | None = None
    scan: dict[str, Any] | None = None


async def watch(settings: Settings, deadline: float, drop: Callable[[], None], seen: Seen) -> None:
    """Report each node started once it is subscribed (its health online or degraded), then drop
    the sample and print every event until a LogLine is signed (a node's health when it changes)."""
    waiting = set(NODES)
    health: dict[str, tuple[Any, Any]] = {}
    async for topic, document, _ in stream(settings, [f"vv/{settings.device}/#"], f"vv-demo-{os.getpid()}"):
        if time.monotonic() > deadline:
            return
        _, kind = parse_topic(topic)
        if kind.startswith("health.") and isinstance(document, dict):
            node, state = kind.removeprefix("health."), (document.get("status"), document.get("reason"))
            if node in waiting and state[0] in ("online", "degraded"):
                waiting.discard(node)
                print(f"demo: {node} started (subscribed, pid {document.get('pid')})", flush=True)
                if not waiting:
                    drop()
            if state[0] == "online" or health.get(topic) == state:
                continue  # heartbeats and repeats: too chatty for a demo
            health[topic] = state
        elif waiting or is_catchup_reply(kind):
            continue  # before the sample, and the journal's catch-up pages: not the demo's story
        print("  " + format_line(topic, document), flush=True)
        if isinstance(document, dict) and document.get("type") == "scan.done":
            seen.scan = document["data"]
        if isinstance(document, dict) and document.get("type") == "logline.signed":
            seen.logline = str(document["data"]["logline"]["path"])
            return


def describe_detector(scan: dict[str, Any]) -> str:
    """Which detector ran, plainly; after a fallback, why and the way to a YOLO model."""
    ran = f"demo: detector: {scan['backend']} ({scan['model']})"
    if "degraded" not in scan:
        return ran
    return f"{ran}, the fallback, because {scan['degraded']}\n{YOLO_HINT}"


def drive(
    args: argparse.Namespace,
    settings: Settings,
    port: int,
    deadline: float,
    up: subprocess.Popen[bytes],
    seen: Seen,
) -> None:
    """Wait for the broker and every node, drop the sample, print events until its LogLine is signed."""
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        if time.monotonic() > deadline or up.poll() is not None:
            print("demo: the broker did not start", file=sys.stderr)
            return
        time.sleep(0.05)
    settings.paths.input.mkdir(parents=True, exist_ok=True)
    photos = sample_photos()
    sample = settings.home / "sample.mp4"
    source = args.video or (build_clip(photos, sample) if photos else synthetic_clip(sample))

    def drop() -> None:
        staged = settings.paths.input / f".{source.name}.part"
        shutil.copyfile(source, staged)
        os.replace(staged, settings.paths.input / source.name)
        print(f"demo: dropped {source.name} into {settings.paths.input}; live events:", flush=True)

    try:
        asyncio.run(watch(settings, deadline, drop, seen))  # as the read-only device user
    except MqttError as exc:
        print(f"demo: broker: {exc}", file=sys.stderr)
