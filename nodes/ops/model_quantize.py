"""`vv model quantize MODEL.onnx --calibration DIR | --sample-media`: a static int8 (QDQ) copy of a
YOLO ONNX export, calibrated on frames like the ones it will see, for the onnx and openvino backends.

Weights are int8 per channel, activations uint8 from MinMax ranges over the calibration frames. The
detect head's decoding (DFL, box arithmetic, the final concat of pixel boxes and 0-1 scores) stays
fp32: one uint8 scale over both would round every class score away.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bus.inputs import shown
from nodes.common.shared import shared_dir
from nodes.ingest.files import is_video_name
from nodes.scan.detectors.base import FloatArray, Frame
from nodes.scan.detectors.onnx import letterbox, to_blob

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
FRAMES_PER_VIDEO = 8
_MODULE = re.compile(r"^/model\.(\d+)/")


class QuantizeError(Exception):
    """A usage problem (exit 2): the message names the argument to fix."""


def sample_media() -> Path:
    """The shared sample photos (nodes/common/shared.py: $VV_SHARED, else ../shared)."""
    return shared_dir() / "media"


def _video_frames(path: Path) -> Iterator[Frame]:
    """Up to FRAMES_PER_VIDEO frames spread over the video, read in order (no seeking)."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or FRAMES_PER_VIDEO
        step = -(-count // FRAMES_PER_VIDEO)  # ceil: at most FRAMES_PER_VIDEO of them
        index = taken = 0
        while taken < FRAMES_PER_VIDEO and capture.grab():
            if index % step == 0:
                ok, frame = capture.retrieve()
                if ok and frame is not None:
                    taken += 1
                    yield frame
            index += 1
    finally:
        capture.release()


def calibration_frames(directory: Path, limit: int) -> list[Frame]:
    """Photos and sampled video frames under `directory`, in name order, at most `limit`."""
    frames: list[Frame] = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            image = cv2.imread(str(path))
            found: list[Frame] = [] if image is None else [image]
        elif is_video_name(path.name):
            found = list(_video_frames(path))
        else:
            continue
        frames.extend(found[: limit - len(frames)])
        if len(frames) >= limit:
            break
    return frames


def head_decoding(model: Any) -> list[str]:
    """Nodes of the last `/model.N/` module (ultralytics' Detect) outside its conv branches (cv2, cv3)."""
    modules = [int(m.group(1)) for node in model.graph.node if (m := _MODULE.match(node.name))]
    if not modules:
        return []
    head = f"/model.{max(modules)}/"
    return [
        n.name for n in model.graph.node if n.name.startswith(head) and not n.name.startswith(f"{head}cv")
    ]


def quantize(source: Path, output: Path, frames: list[Frame]) -> dict[str, Any]:
    """Write the QDQ model and return what was done; metadata (labels, imgsz) is carried over."""
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError:
        raise QuantizeError("needs onnx and onnxruntime (pip install 'vv-edge[onnx,yolo]')") from None
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a bad file
        raise QuantizeError(f"{shown(str(source))} is not a readable ONNX model: {exc}") from exc
    dims = model.graph.input[0].type.tensor_type.shape.dim
    batch, imgsz = (dims[0].dim_value or 1), dims[2].dim_value or 320
    blob = to_blob([letterbox(frame, imgsz) for frame in frames])
    batches: list[FloatArray] = [
        np.resize(blob[start : start + batch], (batch, *blob.shape[1:]))
        for start in range(0, len(blob), batch)
    ]
    name = model.graph.input[0].name

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime is untyped
        def __init__(self) -> None:
            self._left = iter(batches)

        def get_next(self) -> dict[str, FloatArray] | None:
            return next(({name: b} for b in self._left), None)

    excluded = head_decoding(model)
    output.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(source),
        str(output),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
    )
    quantized = onnx.load(str(output))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(model.metadata_props)
    onnx.save(quantized, str(output))
    return {
        "model": str(source),
        "int8": str(output),
        "calibration_frames": len(frames),
        "fp32_nodes": len(excluded),
    }
