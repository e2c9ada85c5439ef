"""Ultralytics YOLOv8/11 ONNX exports: onnxruntime when installed (about 2x faster), else OpenCV DNN.

Labels and the input size come from the metadata that `vv model export` (ultralytics) writes into
the file, read with a few lines of protobuf parsing so the cv2-only path needs no `onnx` package.
"""

from __future__ import annotations

import ast
import mmap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from nodes.scan.detectors.base import Detection, DetectorUnavailable, FloatArray, Frame, finish, thread_count

Engine = Literal["auto", "onnxruntime", "cv2"]
_PAD = 114  # ultralytics' letterbox grey
_METADATA_FIELD = 14  # ModelProto.metadata_props (repeated StringStringEntryProto)


def _varint(buf: mmap.mmap | bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: mmap.mmap | bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """Top-level (field number, wire type, value start, value end) of one protobuf message."""
    out = []
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value_start = pos
            _, pos = _varint(buf, pos)
        elif wire == 1:
            value_start, pos = pos, pos + 8
        elif wire == 2:
            length, value_start = _varint(buf, pos)
            pos = value_start + length
        elif wire == 5:
            value_start, pos = pos, pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, wire, value_start, pos))
    return out


def onnx_metadata(path: Path) -> dict[str, str]:
    """The model's `metadata_props` (ultralytics stores names, imgsz, stride there)."""
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        meta: dict[str, str] = {}
        for number, wire, start, end in _fields(buf, 0, len(buf)):
            if number != _METADATA_FIELD or wire != 2:
                continue
            entry = {n: bytes(buf[s:e]).decode("utf-8") for n, w, s, e in _fields(buf, start, end) if w == 2}
            meta[entry.get(1, "")] = entry.get(2, "")
        return meta


def _names(meta: dict[str, str]) -> list[str]:
    """Ultralytics writes `names` as a Python dict literal: "{0: 'person', 1: 'bicycle', ...}"."""
    try:
        names = ast.literal_eval(meta.get("names", ""))
    except (ValueError, SyntaxError):
        return []
    if not isinstance(names, dict):
        return []
    return [str(names[i]) for i in sorted(names)]


def _meta_imgsz(meta: dict[str, str]) -> int | None:
    try:
        size = ast.literal_eval(meta.get("imgsz", ""))
    except (ValueError, SyntaxError):
        return None
    return int(size[0]) if isinstance(size, list | tuple) and size else None


def _geometry(shape: tuple[int, ...], imgsz: int) -> tuple[float, int, int, int, int]:
    """Scale ratio, scaled width and height, and the x/y padding that centre a frame in the square."""
    height, width = shape[:2]
    ratio = min(imgsz / height, imgsz / width)
    new_w, new_h = round(width * ratio), round(height * ratio)
    return ratio, new_w, new_h, (imgsz - new_w) // 2, (imgsz - new_h) // 2


def letterbox(frame: Frame, imgsz: int) -> Frame:
    """Scale to fit an `imgsz` square and pad with ultralytics' grey, as the export was trained."""
    _, new_w, new_h, pad_x, pad_y = _geometry(frame.shape, imgsz)
    canvas = np.full((imgsz, imgsz, 3), _PAD, dtype=np.uint8)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = cv2.resize(
        frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR
    )
    return canvas


def to_blob(canvases: Sequence[Frame]) -> FloatArray:
    """Letterboxed BGR canvases as the (N, 3, H, W) RGB float input in [0, 1] the exports expect."""
    return np.asarray(cv2.dnn.blobFromImages(list(canvases), 1 / 255.0, swapRB=True), dtype=np.float32)


def batch_size(dim: object) -> int:
    """Frames one forward takes: the export's fixed batch, or 0 when the batch dimension is dynamic."""
    return dim if isinstance(dim, int) and dim > 0 else 0


class YoloOnnx:
    """What the ONNX engines share: labels and input size from the export's metadata, letterbox, and
    decoding of the (N, 4 + classes, anchors) output (box centre/size in letterbox pixels, then class
    scores). Engines implement `_forward` and set `batch`."""

    name = "onnx"
    runtime = ""
    batch = 1  # frames per forward: the export's fixed batch, or 0 for a dynamic batch

    def __init__(self, path: Path, labels: Sequence[str], *, imgsz: int, confidence: float) -> None:
        try:
            meta = onnx_metadata(path)
        except (OSError, ValueError, IndexError) as exc:
            raise DetectorUnavailable(f"scan.model: {path} is not a readable ONNX model: {exc}") from exc
        self.labels = _names(meta) or list(labels)
        self._imgsz = _meta_imgsz(meta) or imgsz  # an export has a fixed input size: use it
        self._confidence = confidence
        self.model = path.name

    def _forward(self, blob: FloatArray) -> FloatArray:
        raise NotImplementedError

    def raw(self, frames: Sequence[Frame]) -> FloatArray:
        """The model's raw output for `frames`, run `batch` at a time (the last run padded with zeros)."""
        blob = to_blob([letterbox(frame, self._imgsz) for frame in frames])
        size = self.batch or len(frames)
        outputs = []
        for start in range(0, len(frames), size):
            chunk = blob[start : start + size]
            padded = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), np.float32)])
            outputs.append(self._forward(padded)[: len(chunk)])
        return np.concatenate(outputs)

    def detect(self, frame_bgr: Frame) -> list[Detection]:
        return self.detect_batch([frame_bgr])[0]

    def detect_batch(self, frames: Sequence[Frame]) -> list[list[Detection]]:
        """One forward per `batch` frames: with a batched export, fewer and fuller inference calls."""
        if not frames:
            return []
        return [self._decode(output, frame) for output, frame in zip(self.raw(frames), frames, strict=True)]

    def _decode(self, output: FloatArray, frame: Frame) -> list[Detection]:
        ratio, _, _, pad_x, pad_y = _geometry(frame.shape, self._imgsz)
        rows = output.T if output.shape[0] < output.shape[1] else output  # (anchors, 4 + classes)
        class_scores = rows[:, 4:]
        class_ids = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(rows)), class_ids]
        keep = scores >= self._confidence
        centre = rows[keep, :4]
        boxes = np.concatenate([centre[:, :2] - centre[:, 2:] / 2, centre[:, :2] + centre[:, 2:] / 2], axis=1)
        boxes = ((boxes - np.array([pad_x, pad_y, pad_x, pad_y], dtype=np.float32)) / ratio).astype(
            np.float32
        )
        return finish(boxes, scores[keep], class_ids[keep], self.labels, frame.shape)


class OnnxDetector(YoloOnnx):
    """onnxruntime when installed (about 2x faster), else OpenCV DNN (one frame per forward)."""

    def __init__(
        self,
        path: Path,
        labels: Sequence[str],
        *,
        imgsz: int,
        confidence: float,
        threads: int,
        engine: Engine = "auto",
    ) -> None:
        super().__init__(path, labels, imgsz=imgsz, confidence=confidence)
        self._session: Any = None
        self._net: Any = None
        count = thread_count(threads)
        if engine != "cv2":
            try:
                import onnxruntime
            except ImportError:
                if engine == "onnxruntime":
                    raise DetectorUnavailable(
                        "scan.backend: onnxruntime is not installed (pip install 'vv-edge[onnx]')"
                    ) from None
            else:
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = count
                options.inter_op_num_threads = 1
                try:
                    self._session = onnxruntime.InferenceSession(
                        str(path), options, providers=["CPUExecutionProvider"]
                    )
                except Exception as exc:  # onnxruntime raises its own untyped errors
                    raise DetectorUnavailable(f"scan.model: onnxruntime cannot load {path}: {exc}") from exc
                model_input = self._session.get_inputs()[0]
                self._input = model_input.name
                self.batch = batch_size(model_input.shape[0])
                self.runtime = f"onnxruntime {onnxruntime.__version__}"
        if self._session is None:
            cv2.setNumThreads(count)
            try:
                self._net = cv2.dnn.readNetFromONNX(str(path))
            except cv2.error as exc:
                raise DetectorUnavailable(f"scan.model: OpenCV cannot load ONNX {path}: {exc}") from exc
            self.runtime = f"opencv {cv2.__version__}"

    def _forward(self, blob: FloatArray) -> FloatArray:
        if self._session is not None:
            return np.asarray(self._session.run(None, {self._input: blob})[0], dtype=np.float32)
        self._net.setInput(blob)
        return np.asarray(self._net.forward(), dtype=np.float32)
