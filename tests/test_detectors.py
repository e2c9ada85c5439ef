"""Detector backends: real labels from the shared Darknet model, the auto choice, the HOG fallback,
and the ultralytics/ONNX path on a yaml-built yolo11n (random weights: shapes only, 0 boxes is fine)."""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from clips import photo, require_shared

from nodes.cli import model as model_verb
from nodes.scan.detectors import Detection, Detector, make_detector, resolve_backend
from nodes.scan.detectors.onnx import Engine, OnnxDetector, onnx_metadata
from nodes.scan.settings import ScanSettings

MODEL_DIR = "models/yolo-fastest-1.1-coco"
WEIGHTS = f"{MODEL_DIR}/yolo-fastest-1.1.weights"
HAVE_ULTRALYTICS = importlib.util.find_spec("ultralytics") is not None
needs_ultralytics = pytest.mark.skipif(
    not HAVE_ULTRALYTICS, reason="ultralytics is not installed (pip install 'vv-edge[yolo]')"
)


@pytest.fixture(scope="module")
def darknet() -> Detector:
    weights = require_shared(WEIGHTS) / WEIGHTS
    detector, reason = make_detector(ScanSettings(model=str(weights)), Path("unused"))
    assert reason is None
    return detector


def labels_in(detections: list[Detection]) -> set[str]:
    return {d.label for d in detections}


@pytest.mark.parametrize(
    ("image", "expected"),
    [("person", {"person", "dog"}), ("dog", {"dog", "car"}), ("horses", {"horse"})],
)
def test_darknet_finds_the_objects_in_each_photo(darknet: Detector, image: str, expected: set[str]) -> None:
    frame = photo(image, (640, 480))
    detections = darknet.detect(frame)
    assert expected <= labels_in(detections)
    for d in detections:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480
        assert 0.25 <= d.confidence <= 1
    assert [d.confidence for d in detections] == sorted((d.confidence for d in detections), reverse=True)


def test_darknet_person_box_spans_the_standing_person(darknet: Detector) -> None:
    """person.jpg shows a standing person: the best box is confident and tall, in frame pixels."""
    people = [d for d in darknet.detect(photo("person", (640, 480))) if d.label == "person"]
    best = max(people, key=lambda d: d.confidence)
    _, y1, _, y2 = best.box
    assert best.confidence > 0.8
    assert y2 - y1 > 200


def test_auto_backend_follows_the_model_file() -> None:
    assert resolve_backend(ScanSettings(model="/m/yolo.weights")) == "darknet"
    assert resolve_backend(ScanSettings(model="/m/yolo11n.ONNX")) == "onnx"
    assert resolve_backend(ScanSettings(model="yolo11n.pt")) == "ultralytics"
    assert resolve_backend(ScanSettings(model="yolo11n")) == "ultralytics"
    assert resolve_backend(ScanSettings(model="a.weights", backend="onnx")) == "onnx"


def test_darknet_finds_cfg_and_names_beside_the_weights(darknet: Detector) -> None:
    assert darknet.name == "darknet"
    assert darknet.model == "yolo-fastest-1.1.weights"
    assert len(darknet.labels) == 80 and darknet.labels[0] == "person"


def test_nothing_configured_falls_back_to_hog_with_the_setting_to_fix() -> None:
    detector, reason = make_detector(ScanSettings(), Path("unused"))
    assert detector.name == "hog"
    assert reason is not None and reason.startswith("scan.model is not set")
    people = detector.detect(photo("person", (640, 480)))
    assert labels_in(people) <= {"person"}


@pytest.mark.parametrize(
    ("files", "settings", "setting"),
    [
        ([], {"model": "missing.weights"}, "scan.model:"),
        (["w.weights"], {}, "scan.model_config:"),
        (["w.weights", "w.cfg"], {}, "scan.labels:"),
        (["w.weights", "w.cfg"], {"labels": "nope.names"}, "scan.labels:"),
        ([], {"model": "missing.onnx"}, "scan.model:"),
        ([], {"model": "sub/missing.pt"}, "scan.model:"),
        (["bad.onnx"], {"model": "bad.onnx"}, "scan.model:"),
    ],
)
def test_unusable_models_fall_back_to_hog_naming_the_setting(
    tmp_path: Path, files: list[str], settings: dict[str, str], setting: str
) -> None:
    for name in files:
        (tmp_path / name).write_bytes(b"not a model")
    values = {"model": "w.weights", **settings}
    scan = ScanSettings(**{key: str(tmp_path / value) for key, value in values.items()})  # type: ignore[arg-type]
    detector, reason = make_detector(scan, tmp_path)
    assert detector.name == "hog"
    assert reason is not None and reason.startswith(setting), reason


def test_darknet_rejects_an_imgsz_it_cannot_run(tmp_path: Path) -> None:
    weights = require_shared(WEIGHTS) / WEIGHTS
    detector, reason = make_detector(ScanSettings(model=str(weights), imgsz=300), tmp_path)
    assert detector.name == "hog" and reason is not None and reason.startswith("scan.imgsz")


def test_model_export_refuses_a_bad_imgsz() -> None:
    args = argparse.Namespace(model="yolo11n.yaml", imgsz=100, output=None, opset=None, json=False)
    assert model_verb.run(args) == 2


@pytest.mark.skipif(HAVE_ULTRALYTICS, reason="checks the message shown when ultralytics is absent")
def test_ultralytics_absent_gives_a_clear_reason_and_export_exit_2(tmp_path: Path) -> None:
    detector, reason = make_detector(ScanSettings(model="yolo11n.pt"), tmp_path)
    assert detector.name == "hog" and reason is not None and "ultralytics is not installed" in reason
    args = argparse.Namespace(model="yolo11n.pt", imgsz=320, output=None, opset=None, json=False)
    assert model_verb.run(args) == 2


@pytest.fixture(scope="module")
def yolo11n_onnx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """yolo11n.yaml (random weights) exported by `vv model export` at imgsz 320."""
    if not HAVE_ULTRALYTICS:
        pytest.skip("ultralytics is not installed (pip install 'vv-edge[yolo]'): no ONNX export to test")
    work = tmp_path_factory.mktemp("export")
    output = work / "out" / "yolo11n-320.onnx"
    previous = os.getcwd()
    os.environ["VV_HOME"] = str(work / "home")
    os.chdir(work)  # ultralytics writes the export beside the yaml name, i.e. in the working directory
    try:
        args = argparse.Namespace(model="yolo11n.yaml", imgsz=320, output=output, opset=None, json=True)
        assert model_verb.run(args) == 0
    finally:
        os.chdir(previous)
        del os.environ["VV_HOME"]
    yield output


@needs_ultralytics
@pytest.mark.parametrize("engine", ["onnxruntime", "cv2"])
def test_onnx_export_runs_on_both_engines(yolo11n_onnx: Path, engine: Engine) -> None:
    meta = onnx_metadata(yolo11n_onnx)
    assert meta["imgsz"] == "[320, 320]"
    detector = OnnxDetector(yolo11n_onnx, [], imgsz=640, confidence=0.25, threads=2, engine=engine)
    assert detector.runtime.startswith("onnxruntime" if engine == "onnxruntime" else "opencv")
    assert len(detector.labels) == 80  # from the export's metadata
    frame = photo("person", (640, 480))
    assert all(isinstance(d, Detection) for d in detector.detect(frame))
    # Random weights score near zero: a threshold of 0 exercises the decoding and box mapping.
    anything = OnnxDetector(yolo11n_onnx, [], imgsz=320, confidence=0.0, threads=2, engine=engine)
    detections = anything.detect(frame)
    assert detections
    for d in detections:
        assert 0 <= d.box[0] < d.box[2] <= 640 and 0 <= d.box[1] < d.box[3] <= 480


@needs_ultralytics
def test_onnx_engines_agree(yolo11n_onnx: Path) -> None:
    frame = photo("dog", (640, 480))
    outputs = [
        OnnxDetector(yolo11n_onnx, [], imgsz=320, confidence=0.0, threads=2, engine=engine).detect(frame)
        for engine in ("onnxruntime", "cv2")
    ]
    assert outputs[0][0].label == outputs[1][0].label
    assert np.allclose(outputs[0][0].box, outputs[1][0].box, atol=2.0)


@needs_ultralytics
def test_ultralytics_backend_on_a_yaml_model_restores_threads(tmp_path: Path) -> None:
    detector, reason = make_detector(ScanSettings(model="yolo11n.yaml", threads=2), tmp_path)
    assert reason is None and detector.name == "ultralytics"
    assert len(detector.labels) == 80
    assert isinstance(detector.detect(photo("person", (320, 240))), list)
    import torch

    assert torch.get_num_threads() == 2
    assert cv2.getNumThreads() == 2
    assert os.environ["YOLO_CONFIG_DIR"] == str(tmp_path / "state" / "ultralytics")
