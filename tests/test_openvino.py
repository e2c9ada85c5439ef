"""The OpenVINO backend, the int8 path (`vv model quantize`) and batched inference, each judged against
onnxruntime fp32 on the sample photos, on a yaml-built yolo11n whose outputs follow the image
(tests/yolo_models.py: random weights, so numerical agreement only, never accuracy)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from clips import photo, require_shared

from nodes.cli import main as vv
from nodes.cli import model as model_verb
from nodes.scan.detectors import make_detector
from nodes.scan.detectors.base import Frame, agreement
from nodes.scan.detectors.onnx import OnnxDetector, YoloOnnx
from nodes.scan.detectors.openvino import OpenVinoDetector
from nodes.scan.settings import ScanSettings

PHOTOS = ("person", "dog", "horses", "giraffe")
CONFIDENCE = 0.5
# int8 against fp32 on the 4 photos: the share of fp32 boxes found again in the same photo at
# IoU >= 0.5. Boxes: measured 95-99% per photo, 97-98% over the 4, near the 95% bar for a
# trained model; 90% leaves room for int8 kernels that round differently on other CPUs (VNNI)
# while a broken path (scores rounded away, boxes shifted) is far below. Labels: this model's 80
# random class scores sit within rounding of each other, so a label flips under int8 far more
# easily than on a trained model (measured 48-62%; a broken path matches next to nothing): 40% is
# a floor that catches a broken int8 path, not an accuracy claim.
INT8_BOXES = 0.9
INT8_LABELS = 0.4

needs_engines = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("ultralytics", "openvino", "onnxruntime")),
    reason="needs the [yolo], [onnx] and [openvino] extras",
)


@dataclass(frozen=True)
class Models:
    fp32: Path
    int8: Path
    batch2: Path


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    return [photo(name, (640, 480)) for name in PHOTOS]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, frames: list[Frame]) -> Models:
    """fp32 and fixed-batch-2 exports of the same model, and its int8 copy by `vv model quantize`."""
    if not all(importlib.util.find_spec(m) for m in ("ultralytics", "openvino", "onnxruntime")):
        pytest.skip("needs the [yolo], [onnx] and [openvino] extras")
    require_shared(*(f"media/{name}.jpg" for name in PHOTOS))
    from yolo_models import awake_yolo11n

    work = tmp_path_factory.mktemp("models")
    os.environ["YOLO_CONFIG_DIR"] = str(work / "ultralytics")
    fp32 = awake_yolo11n(work / "fp32" / "yolo11n-320.onnx", frames)
    batch2 = awake_yolo11n(work / "b2" / "yolo11n-320-b2.onnx", frames, batch=2)
    int8 = work / "yolo11n-320-int8.onnx"
    assert vv(["model", "quantize", str(fp32), "--sample-media", "--output", str(int8)]) == 0
    return Models(fp32, int8, batch2)


def detector(engine: type[YoloOnnx], path: Path) -> YoloOnnx:
    if engine is OpenVinoDetector:
        return OpenVinoDetector(path, [], imgsz=320, confidence=CONFIDENCE, threads=2)
    return OnnxDetector(path, [], imgsz=320, confidence=CONFIDENCE, threads=2, engine="onnxruntime")


@needs_engines
def test_openvino_matches_onnxruntime_fp32(models: Models, frames: list[Frame]) -> None:
    reference, openvino = detector(OnnxDetector, models.fp32), detector(OpenVinoDetector, models.fp32)
    assert openvino.name == "openvino" and openvino.runtime.startswith("openvino ")
    assert len(openvino.labels) == 80  # from the export's metadata, as with onnxruntime
    expected, got = reference.raw(frames), openvino.raw(frames)
    assert np.allclose(got, expected, rtol=1e-3, atol=1e-2)  # pixels and scores: float rounding only
    want, have = reference.detect_batch(frames), openvino.detect_batch(frames)
    assert min(map(len, want)) > 5  # the model sees something: the comparison is not empty against empty
    assert agreement(want, have) >= 0.98 and agreement(have, want) >= 0.98


@needs_engines
@pytest.mark.parametrize("engine", [OnnxDetector, OpenVinoDetector])
def test_int8_loads_in_both_engines_and_agrees_with_fp32(
    models: Models, frames: list[Frame], engine: type[YoloOnnx]
) -> None:
    reference, int8 = detector(OnnxDetector, models.fp32), detector(engine, models.int8)
    assert len(int8.labels) == 80  # `vv model quantize` carried the metadata over
    assert models.int8.stat().st_size < models.fp32.stat().st_size / 2
    want, have = reference.detect_batch(frames), int8.detect_batch(frames)
    assert agreement(want, have) >= INT8_LABELS
    assert agreement(want, have, labels=False) >= INT8_BOXES


@needs_engines
@pytest.mark.parametrize("engine", [OnnxDetector, OpenVinoDetector])
def test_a_batched_export_gives_the_same_detections(
    models: Models, frames: list[Frame], engine: type[YoloOnnx]
) -> None:
    single, batched = detector(engine, models.fp32), detector(engine, models.batch2)
    assert (single.batch, batched.batch) == (1, 2)
    three = frames[:3]  # two forwards, the second padded
    assert np.allclose(batched.raw(three), single.raw(three), rtol=1e-3, atol=1e-2)


@needs_engines
def test_scan_backend_openvino_is_chosen_by_the_setting(models: Models, tmp_path: Path) -> None:
    chosen, reason = make_detector(ScanSettings(backend="openvino", model=str(models.fp32)), tmp_path)
    assert reason is None and chosen.name == "openvino"


def test_openvino_absent_is_one_line_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")  # the missing engine is reported before the model is looked at
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    chosen, reason = make_detector(ScanSettings(backend="openvino", model=str(model)), tmp_path)
    assert chosen.name == "hog"
    assert reason is not None and reason.startswith(
        "scan.backend: openvino is not installed (pip install 'vv-edge[openvino]')"
    )


def test_quantize_help_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        vv(["model", "quantize", "--help"])
    assert done.value.code == 0
    assert "--calibration DIR" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        vv(["model", "quantize", "m.onnx"])  # neither --calibration nor --sample-media
    assert done.value.code == 2
    assert vv(["model", "quantize", str(tmp_path / "missing.onnx"), "--calibration", str(tmp_path)]) == 2
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not a model")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert vv(["model", "quantize", str(model), "--calibration", str(empty)]) == 2  # nothing to calibrate on
    assert vv(["model", "quantize", str(model), "--calibration", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no photos or videos to calibrate on" in err and "is not a directory" in err


def test_model_export_refuses_a_negative_batch() -> None:
    args = argparse.Namespace(
        action="export", model="yolo11n.yaml", imgsz=320, output=None, opset=None, batch=-1, json=False
    )
    assert model_verb.run(args) == 2


@needs_engines
def test_scan_batch_gives_the_frames_one_at_a_time_would(models: Models, tmp_path: Path) -> None:
    """scan.batch 3 on a batch-2 export: frames wait for a batch, the last partial one is flushed."""
    from clips import Scene, write_clip

    from nodes.scan.analyze import scan_video

    clip = write_clip(tmp_path / "c.mp4", [Scene("person", 1.4), Scene("dog", 1, slide="horses")])
    results = []
    for model, batch in ((models.fp32, 1), (models.batch2, 3)):
        settings = ScanSettings(backend="openvino", model=str(model), batch=batch, confidence=CONFIDENCE)
        chosen, _ = make_detector(settings, tmp_path)
        results.append(scan_video(clip, chosen, settings)["frames"])
    one, batched = results
    assert [f["index"] for f in one] == [f["index"] for f in batched]
    assert sum(f["inferred"] for f in one) >= 5
    for a, b in zip(one, batched, strict=True):
        assert len(a["detections"]) == len(b["detections"])


def test_calibration_takes_photos_and_frames_spread_over_videos(tmp_path: Path) -> None:
    from clips import Scene, write_clip

    from nodes.ops.model_quantize import FRAMES_PER_VIDEO, calibration_frames

    (tmp_path / "a").mkdir()
    write_clip(tmp_path / "a" / "clip.MP4", [Scene("person", 3)])  # 30 frames: 8 of them, every 4th
    (tmp_path / "b.jpg").write_bytes((require_shared("media/dog.jpg") / "media" / "dog.jpg").read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    frames = calibration_frames(tmp_path, 100)
    assert len(frames) == FRAMES_PER_VIDEO + 1 and all(f.ndim == 3 for f in frames)
    assert len(calibration_frames(tmp_path, 3)) == 3
