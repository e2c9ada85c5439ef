"""`vv model export MODEL --imgsz 320`: turn a YOLO model into ONNX for lean edge boxes;
`vv model quantize MODEL.onnx`: a static int8 copy of it (nodes/ops/quantize.py).

The ONNX file then runs through onnxruntime (or OpenCV DNN) without torch or ultralytics on the
device: about 114 MB of RSS instead of about 800 MB. Needs the optional `[yolo]` extra (AGPL).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from bus.config import ConfigError, load_settings
from nodes.ops import quantize as model_quantize
from nodes.scan.detectors.base import DetectorUnavailable
from nodes.scan.detectors.ultralytics import import_ultralytics, resolve_weights


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
    model_quantize.add_arguments(actions)


def export_onnx(
    model: str, *, home: Path, imgsz: int, output: Path | None, opset: int | None, batch: int = 1
) -> Path:
    """Export with ultralytics (no graph simplification: it would need onnxslim) and move into place.

    `batch` 0 is ultralytics' dynamic export (batch and input size free); the scan backends still feed
    the imgsz from the export's metadata."""
    ultralytics = import_ultralytics(home, threads=0)
    yolo = ultralytics.YOLO(resolve_weights(model, home), task="detect")
    options: dict[str, object] = {
        "format": "onnx",
        "imgsz": imgsz,
        "simplify": False,
        "dynamic": batch == 0,
        "batch": max(batch, 1),
    }
    if opset:
        options["opset"] = opset
    produced = Path(yolo.export(**options))
    if output is None or output.resolve() == produced.resolve():
        return produced
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(produced, output)
    return output


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", "export") == "quantize":
        return model_quantize.run(args)
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
