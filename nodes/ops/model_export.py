"""YOLO to ONNX with ultralytics (`vv model export`), for lean edge boxes without torch.

The ONNX file then runs through onnxruntime (or OpenCV DNN) without torch or ultralytics on the
device: about 114 MB of RSS instead of about 800 MB. Needs the optional `[yolo]` extra (AGPL).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nodes.scan.detectors.ultralytics import import_ultralytics, resolve_weights


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
