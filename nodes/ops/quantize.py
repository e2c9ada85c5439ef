"""`vv model quantize MODEL.onnx --calibration DIR | --sample-media`: a static int8 (QDQ) copy of a
YOLO ONNX export, calibrated on frames like the ones it will see, for the onnx and openvino backends.

Weights are int8 per channel, activations uint8 from MinMax ranges over the calibration frames. The
detect head's decoding (DFL, box arithmetic, the final concat of pixel boxes and 0-1 scores) stays
fp32: one uint8 scale over both would round every class score away.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bus.inputs import shown
from nodes.ingest.node import is_video_name
from nodes.scan.detectors.base import FloatArray, Frame
from nodes.scan.detectors.onnx import letterbox, to_blob

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
FRAMES_PER_VIDEO = 8
_MODULE = re.compile(r"^/model\.(\d+)/")


class QuantizeError(Exception):
    """A usage problem (exit 2): the message names the argument to fix."""


def add_arguments(actions: Any) -> None:
    """Register `quantize` beside `export` under `vv model` (`actions` is argparse's subparsers)."""
    quantize = actions.add_parser(
        "quantize", help="a static int8 (QDQ) copy of an ONNX export", description=(__doc__ or "").strip()
    )
    quantize.add_argument("model", type=Path, metavar="MODEL.onnx", help="an ONNX export (vv model export)")
    source = quantize.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--calibration",
        type=Path,
        metavar="DIR",
        help="photos and videos to calibrate on (e.g. VV_HOME/storage)",
    )
    source.add_argument(
        "--sample-media", action="store_true", help="the shared sample photos ($VV_SHARED/media)"
    )
    quantize.add_argument("--frames", type=int, default=64, help="most calibration frames (default 64)")
    quantize.add_argument(
        "--output", type=Path, help="where to write it (default: MODEL-int8.onnx beside it)"
    )
    quantize.add_argument("--json", action="store_true", help="print the result as JSON")


def sample_media() -> Path:
    """$VV_SHARED/media, else the shared directory beside a source checkout (as `vv demo` finds it)."""
    shared = Path(os.environ.get("VV_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    return shared / "media"


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


def run(args: argparse.Namespace) -> int:
    try:
        if not args.model.is_file():
            raise QuantizeError(f"MODEL {shown(str(args.model))} is not a file")
        if args.frames <= 0:
            raise QuantizeError(f"--frames {args.frames} must be positive")
        directory = sample_media() if args.sample_media else args.calibration
        if not directory.is_dir():
            option = "--sample-media (set VV_SHARED)" if args.sample_media else "--calibration"
            raise QuantizeError(f"{option}: {shown(str(directory))} is not a directory")
        frames = calibration_frames(directory, args.frames)
        if not frames:
            raise QuantizeError(f"no photos or videos to calibrate on under {shown(str(directory))}")
        output = args.output or args.model.with_name(f"{args.model.stem}-int8.onnx")
        result = quantize(args.model, output, frames)
    except QuantizeError as exc:
        print(f"vv model quantize: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # onnxruntime's quantizer fails in many untyped ways on graphs it cannot take
        print(
            f"vv model quantize: cannot quantize {shown(str(args.model))}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        size = Path(result["int8"]).stat().st_size / 1e6
        print(
            f"quantized {result['model']} -> {result['int8']} (int8 QDQ, {len(frames)} calibration frames, {size:.1f} MB)"
        )
    return 0
