"""YOLO ONNX exports (fp32 or int8 QDQ) through OpenVINO on the CPU: Frigate's most used CPU engine,
and the usual edge box is an Intel mini PC. OpenVINO reads the ONNX file directly, so the same
`vv model export` output serves both engines; pre- and post-processing are the ONNX backend's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nodes.scan.detectors.base import DetectorUnavailable, FloatArray, thread_count
from nodes.scan.detectors.onnx import YoloOnnx, batch_size


class OpenVinoDetector(YoloOnnx):
    """One compiled model, LATENCY hint: scan runs one request at a time, so batching (a batched
    export) is the throughput lever, not parallel streams."""

    name = "openvino"

    def __init__(
        self, path: Path, labels: Sequence[str], *, imgsz: int, confidence: float, threads: int
    ) -> None:
        try:
            import openvino
        except ImportError:
            raise DetectorUnavailable(
                "scan.backend: openvino is not installed (pip install 'vv-edge[openvino]')"
            ) from None
        super().__init__(path, labels, imgsz=imgsz, confidence=confidence)
        core = openvino.Core()
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": thread_count(threads),
            "INFERENCE_PRECISION_HINT": "f32",  # no silent bf16 on CPUs that have it: same boxes as fp32
        }
        try:
            model = core.read_model(str(path))
            self._compiled: Any = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:  # OpenVINO reports unreadable or unsupported models as RuntimeError
            raise DetectorUnavailable(f"scan.model: OpenVINO cannot load {path}: {exc}") from exc
        dim = model.inputs[0].get_partial_shape()[0]
        self.batch = batch_size(dim.get_length() if dim.is_static else 0)
        self._request = self._compiled.create_infer_request()
        self.runtime = f"openvino {openvino.__version__.split('-')[0]}"

    def _forward(self, blob: FloatArray) -> FloatArray:
        self._request.infer({0: blob})
        return np.asarray(self._request.get_output_tensor(0).data, dtype=np.float32).copy()
