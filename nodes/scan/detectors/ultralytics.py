"""Any ultralytics YOLO model (`yolo11n.pt`, a path, a `.yaml`): the optional `[yolo]` extra, AGPL-3.0.

Imported only when this backend is chosen, so the core install never loads torch. Importing
ultralytics changes process-wide thread settings (OMP_NUM_THREADS=1, cv2.setNumThreads(0)), which
halves inference speed on a 2-core box: they are set back from `scan.threads` after the import and
again after the first predict (which resets torch to cpu_count - 1 threads).

A model named but not on disk (`yolo11n.pt`) is downloaded once, waiting `scan.download_timeout_s`
at most: an offline box falls back to another detector in seconds instead of hanging on the network.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

from nodes.scan.detectors.base import Detection, DetectorUnavailable, Frame, finish, thread_count

INSTALL_HINT = "pip install 'vv-edge[yolo]'"
OFFLINE_HINT = "offline, set scan.model to a file on disk: the .pt, a YOLO .onnx export or Darknet .weights"
log = logging.getLogger("vv.scan")


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


def download_weights(target: Path, timeout_s: float) -> None:
    """Fetch a named model into `target`, waiting at most `timeout_s`.

    ultralytics downloads into a `.part` file and renames it once complete, so a download still
    running when the wait ends goes on in a daemon thread and is there, whole, for the next start.
    """
    from ultralytics.utils.downloads import attempt_download_asset

    failed: list[Exception] = []

    def fetch() -> None:
        try:
            attempt_download_asset(target)
        except Exception as exc:  # requests' errors, ConnectionError, ultralytics' own
            failed.append(exc)

    log.info("downloading %s into %s, waiting %gs at most", target.name, target.parent, timeout_s)
    thread = threading.Thread(target=fetch, name=f"download-{target.name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise DetectorUnavailable(
            f"scan.model: {target.name} was not downloaded within {timeout_s:g}s "
            f"(scan.download_timeout_s; the download goes on for the next start); {OFFLINE_HINT}"
        )
    if failed:
        raise DetectorUnavailable(
            f"scan.model: cannot download {target.name} ({type(failed[0]).__name__}: {failed[0]}); {OFFLINE_HINT}"
        )


class UltralyticsDetector:
    """Runs `YOLO(model).predict` on CPU; boxes come back already in frame pixels."""

    name = "ultralytics"

    def __init__(
        self,
        model: str,
        *,
        home: Path,
        imgsz: int,
        confidence: float,
        threads: int,
        download_timeout_s: float,
    ) -> None:
        ultralytics = import_ultralytics(home, threads)
        source = resolve_weights(model, home)
        if source.endswith(".pt") and not Path(source).exists():
            download_weights(Path(source), download_timeout_s)
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
                f"scan.model: ultralytics cannot load {model!r} ({type(exc).__name__}: {exc}); {OFFLINE_HINT}"
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
