"""Detector backends behind one interface, chosen by `scan.backend` or (with `auto`) by the model file.

`make_detector` never fails for a missing or unloadable model: it falls back to OpenCV's HOG people
detector and returns the reason, naming the setting to fix, so the node can report `degraded`.
"""

from __future__ import annotations

from pathlib import Path

from nodes.scan.detectors.base import Detection, Detector, DetectorUnavailable, read_labels
from nodes.scan.detectors.hog import HogDetector
from nodes.scan.settings import ScanSettings

__all__ = ["Detection", "Detector", "DetectorUnavailable", "make_detector", "resolve_backend"]

_MODEL_HINT = "set scan.model to a YOLO .onnx export, Darknet .weights (+ .cfg) or an ultralytics .pt"


def resolve_backend(settings: ScanSettings) -> str:
    """The backend `auto` means for this model: `.onnx` → onnx, `.weights` → darknet, else ultralytics."""
    if settings.backend != "auto":
        return settings.backend
    if not settings.model:
        raise DetectorUnavailable(f"scan.model is not set: {_MODEL_HINT}")
    suffix = Path(settings.model).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".weights":
        return "darknet"
    return "ultralytics"


def _existing(model: str) -> Path:
    path = Path(model).expanduser()
    if not model:
        raise DetectorUnavailable(f"scan.model is not set: {_MODEL_HINT}")
    if not path.is_file():
        raise DetectorUnavailable(f"scan.model: {path} does not exist; {_MODEL_HINT}")
    return path


def _beside(weights: Path, setting: str, suffix: str, preferred: str = "") -> Path | None:
    """The configured file, else the weights' namesake, `preferred`, or the only `*suffix` file beside them."""
    if setting:
        path = Path(setting).expanduser()
        return path if path.is_file() else None
    for candidate in (weights.with_suffix(suffix), weights.parent / preferred):
        if candidate.is_file():
            return candidate
    found = sorted(weights.parent.glob(f"*{suffix}"))
    return found[0] if len(found) == 1 else None


def _labels(settings: ScanSettings, weights: Path) -> list[str]:
    path = _beside(weights, settings.labels, ".names", "coco.names")
    if path is None:
        where = settings.labels or f"a .names file beside {weights}"
        raise DetectorUnavailable(f"scan.labels: no class names found ({where}); set scan.labels")
    return read_labels(path)


def _build(settings: ScanSettings, home: Path) -> Detector:
    backend = resolve_backend(settings)
    if backend == "hog":
        return HogDetector(confidence=settings.confidence, threads=settings.threads)
    if backend == "darknet":
        from nodes.scan.detectors.darknet import DarknetDetector

        weights = _existing(settings.model)
        cfg = _beside(weights, settings.model_config, ".cfg")
        if cfg is None:
            raise DetectorUnavailable(
                f"scan.model_config: no Darknet .cfg for {weights} "
                f"({settings.model_config or 'none beside the weights'}); set scan.model_config"
            )
        return DarknetDetector(
            weights,
            cfg,
            _labels(settings, weights),
            imgsz=settings.imgsz,
            confidence=settings.confidence,
            threads=settings.threads,
        )
    if backend in ("onnx", "openvino"):
        from nodes.scan.detectors.onnx import OnnxDetector
        from nodes.scan.detectors.openvino import OpenVinoDetector

        model = _existing(settings.model)
        labels = read_labels(Path(settings.labels).expanduser()) if settings.labels else []
        engine = OpenVinoDetector if backend == "openvino" else OnnxDetector
        return engine(
            model, labels, imgsz=settings.imgsz, confidence=settings.confidence, threads=settings.threads
        )
    from nodes.scan.detectors.ultralytics import UltralyticsDetector

    if not settings.model or len(Path(settings.model).parts) > 1:  # a path, not a name it may download
        _existing(settings.model)
    return UltralyticsDetector(
        settings.model,
        home=home,
        imgsz=settings.imgsz,
        confidence=settings.confidence,
        threads=settings.threads,
        download_timeout_s=settings.download_timeout_s,
    )


def make_detector(settings: ScanSettings, home: Path) -> tuple[Detector, str | None]:
    """The configured detector and None, or the HOG fallback and the reason the configured one failed."""
    try:
        return _build(settings, home), None
    except DetectorUnavailable as exc:
        reason = f"{exc}; running OpenCV's HOG people detector (people only) instead"
        return HogDetector(confidence=settings.confidence, threads=settings.threads), reason
