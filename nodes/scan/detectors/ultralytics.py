"""Any ultralytics YOLO model (`yolo11n.pt`, a path, a `.yaml`): the optional `[yolo]` extra, AGPL-3.0.

Imported only when this backend is chosen, so the core install never loads torch. Importing
ultralytics changes process-wide thread settings (OMP_NUM_THREADS=1, cv2.setNumThreads(0)), which
halves inference speed on a 2-core box: they are set back from `scan.threads` after the import and
again after the first predict (which resets torch to cpu_count - 1 threads).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

from nodes.scan.detectors.base import Detection, DetectorUnavailable, Frame, finish, thread_count

INSTALL_HINT = "pip install 'vv-edge[yolo]'"


def _online(timeout: float = 1.0) -> bool:
    try:
        socket.create_connection(("1.1.1.1", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def import_ultralytics(home: Path, threads: int) -> ModuleType:
    """Import ultralytics with its settings under VV_HOME, offline-aware, then restore thread counts."""
    count = thread_count(threads)
    config_dir = home / "state" / "ultralytics"
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # never pip-install at run time on a device
    os.environ.setdefault("OMP_NUM_THREADS", str(count))  # ultralytics forces 1 when unset
    if "YOLO_OFFLINE" not in os.environ and not _online():
        os.environ["YOLO_OFFLINE"] = "1"
    try:
        import torch
        import ultralytics
    except ImportError as exc:
        raise DetectorUnavailable(
            f"scan.backend: ultralytics is not installed ({INSTALL_HINT}): {exc}"
        ) from exc
    torch.set_num_threads(count)
    cv2.setNumThreads(count)
    return ultralytics


def resolve_weights(model: str, home: Path) -> str:
    """A bare weights name (`yolo11n`, `yolo11n.pt`) lives under VV_HOME/state, where a download lands."""
    path = Path(model).expanduser()
    if path.exists() or path.suffix not in ("", ".pt") or len(path.parts) > 1:
        return str(path)
    name = path.name if path.suffix else f"{path.name}.pt"
    if Path(name).exists():
        return name
    return str(home / "state" / "ultralytics" / "weights" / name)


class UltralyticsDetector:
    """Runs `YOLO(model).predict` on CPU; boxes come back already in frame pixels."""

    name = "ultralytics"

    def __init__(self, model: str, *, home: Path, imgsz: int, confidence: float, threads: int) -> None:
        ultralytics = import_ultralytics(home, threads)
        source = resolve_weights(model, home)
        if source.endswith(".pt"):
            Path(source).parent.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.runtime = f"ultralytics {ultralytics.__version__}"
        self._imgsz = imgsz
        self._confidence = confidence
        try:
            self._model = ultralytics.YOLO(source, task="detect")
            self.labels = [str(name) for _, name in sorted(self._model.names.items())]
            # The first predict builds the predictor, whose select_device() sets torch to cpu_count - 1
            # threads (1 on a 2-core box): warm up now, then put the configured count back.
            self.detect(np.zeros((imgsz, imgsz, 3), dtype=np.uint8))
        except Exception as exc:  # ultralytics raises anything from FileNotFoundError to its own errors
            raise DetectorUnavailable(
                f"scan.model: ultralytics cannot load {model!r} ({type(exc).__name__}: {exc}); "
                "offline boxes need the weights file on disk"
            ) from exc
        import torch

        torch.set_num_threads(thread_count(threads))
        cv2.setNumThreads(thread_count(threads))

    def detect(self, frame_bgr: Frame) -> list[Detection]:
        result = self._model.predict(
            frame_bgr, imgsz=self._imgsz, conf=self._confidence, device="cpu", verbose=False
        )[0]
        boxes = result.boxes
        return finish(
            boxes.xyxy.cpu().numpy().astype(np.float32),
            boxes.conf.cpu().numpy().astype(np.float32),
            boxes.cls.cpu().numpy().astype(int),
            self.labels,
            frame_bgr.shape,
        )
