"""A yaml-built yolo11n whose outputs depend on the image, for comparing engines and precisions.

Freshly initialised, yolo11n's activations fade layer by layer: every image gets the same output, so
fp32, int8 and OpenVINO would "agree" trivially. Re-estimating the BatchNorm statistics on the sample
photos keeps every layer at unit variance, and zeroing the class biases (set for 1 object in 100 per
cell) spreads the scores over 0-1: boxes and labels then move with the picture. Still random
weights: the labels mean nothing, the figures measured on it are speed and numerical agreement only.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from nodes.scan.detectors.base import Frame
from nodes.scan.detectors.onnx import letterbox, to_blob


def awake_yolo11n(output: Path, frames: Sequence[Frame], *, imgsz: int = 320, batch: int = 1) -> Path:
    """Export the model described above to `output` (ultralytics writes beside the yaml: cwd is `output`'s)."""
    import torch
    from ultralytics import YOLO

    previous = os.getcwd()
    output.parent.mkdir(parents=True, exist_ok=True)
    os.chdir(output.parent)
    try:
        torch.manual_seed(0)  # the same weights for every export (fp32, batched)
        yolo = YOLO("yolo11n.yaml", task="detect")
        net = yolo.model
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # a plain average over the calibration pass
        net.train()
        with torch.no_grad():
            net(torch.from_numpy(to_blob([letterbox(frame, imgsz) for frame in frames])))
        net.eval()
        for branch in net.model[-1].cv3:
            branch[-1].bias.data.zero_()
        produced = yolo.export(
            format="onnx", imgsz=imgsz, simplify=False, dynamic=batch == 0, batch=max(batch, 1)
        )
        shutil.move(produced, output.name)
    finally:
        os.chdir(previous)
    return output
