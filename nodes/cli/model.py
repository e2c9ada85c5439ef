"""`vv model export MODEL --imgsz 320`: turn a YOLO model into ONNX for lean edge boxes;
`vv model quantize MODEL.onnx`: a static int8 copy of it (nodes/ops/model_quantize.py).

The ONNX file then runs through onnxruntime (or OpenCV DNN) without torch or ultralytics on the
device: about 114 MB of RSS instead of about 800 MB. Needs the optional `[yolo]` extra (AGPL).
The work itself: nodes/ops/model_export.py and nodes/ops/model_quantize.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bus.config import ConfigError, load_settings
from bus.inputs import shown
from nodes.ops import model_quantize
from nodes.ops.model_export import export_onnx
from nodes.ops.model_quantize import QuantizeError, calibration_frames, quantize, sample_media
from nodes.scan.detectors.base import DetectorUnavailable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser("export", help="export a YOLO model (.pt, name or .yaml) to ONNX")
    export.add_argument("model", metavar="MODEL", help="yolo11n.pt, a path to weights, or a model .yaml")
    export.add_argument("--imgsz", type=int, default=320, help="fixed square input size (default 320)")
    export.add_argument("--output", type=Path, help="where to write the .onnx (default: beside the model)")
    export.add_argument("--opset", type=int, help="ONNX opset (default: ultralytics' choice)")
    export.add_argument(
        "--batch", type=int, default=1, help="frames per inference, fixed (default 1; 0: dynamic batch)"
    )
    export.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_quantize(actions)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", "export") == "quantize":
        return _quantize(args)
    batch = getattr(args, "batch", 1)
    if batch < 0:
        print(f"vv model export: --batch {batch} must be 0 (dynamic) or positive", file=sys.stderr)
        return 2
    if args.imgsz <= 0 or args.imgsz % 32:
        print(f"vv model export: --imgsz {args.imgsz} must be a positive multiple of 32", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"vv model export: {exc}", file=sys.stderr)
        return 2
    try:
        path = export_onnx(
            args.model,
            home=settings.home,
            imgsz=args.imgsz,
            output=args.output,
            opset=args.opset,
            batch=batch,
        )
    except DetectorUnavailable as exc:
        print(f"vv model export: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # ultralytics reports missing files, bad yaml, export failures in many types
        print(f"vv model export: cannot export {args.model!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {"model": args.model, "onnx": str(path), "imgsz": args.imgsz, "bytes": path.stat().st_size}
            )
        )
    else:
        print(f"exported {args.model} -> {path} (imgsz {args.imgsz}, {path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _add_quantize(actions: Any) -> None:
    """Register `quantize` beside `export` under `vv model` (`actions` is argparse's subparsers)."""
    quantize = actions.add_parser(
        "quantize",
        help="a static int8 (QDQ) copy of an ONNX export",
        description=(model_quantize.__doc__ or "").strip(),
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


def _quantize(args: argparse.Namespace) -> int:
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
