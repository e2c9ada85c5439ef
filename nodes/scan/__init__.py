"""Scan: decode a video, sample it, gate on motion, detect objects, and produce the analytic artifact."""

from nodes.scan.analyze import ScanTimeout, VideoError, open_video, scan_video
from nodes.scan.detectors import Detection, Detector, make_detector, resolve_backend
from nodes.scan.motion import MotionGate

__all__ = [
    "Detection",
    "Detector",
    "MotionGate",
    "ScanTimeout",
    "VideoError",
    "make_detector",
    "open_video",
    "resolve_backend",
    "scan_video",
]
