"""yolo11n at 320 on the CPU, side by side in one run: onnxruntime vs OpenVINO, fp32 vs static int8
(QDQ, `vv model quantize`), one frame vs 4 per inference (`scan.batch` on a batch-4 export), and a
smaller input (256); each as ms a frame and real-time factor at detect_fps 5 without and with motion
gating (`scan_video` on a 60 s 640x480 clip, mostly static). Then int8 against fp32 on the clip's
sampled frames: the share of fp32 boxes found again at IoU >= 0.5, with and without the label.

No weights are downloaded: speed is measured on `vv model export yolo11n.yaml` (random weights, no
detections, as a trained model's compute); agreement on the same architecture made to see the
image (tests/yolo_models.py), random labels: a lower bound for labels, numerical only for boxes.
With `--trained yolo11n-320.onnx` (an fp32 export of trained weights: `vv model export yolo11n.pt
--imgsz 320` where they can be downloaded) the agreement is measured on that model instead: the
figure that says whether int8 keeps >= 95% of fp32's boxes.

    .venv/bin/python bench/detectors.py [--seconds 60] [--threads 0] [--trained MODEL.onnx]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bench.scan import decode_only, make_clip  # noqa: E402
from nodes.scan.analyze import scan_video  # noqa: E402
from nodes.scan.detectors import make_detector  # noqa: E402
from nodes.scan.detectors.base import Detection, agreement, detect_frames  # noqa: E402
from nodes.scan.settings import ScanSettings  # noqa: E402


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str  # scan.backend
    model: str  # key into the exported models
    batch: int = 1


VARIANTS = (
    Variant("onnxruntime fp32", "onnx", "fp32"),
    Variant("openvino fp32", "openvino", "fp32"),
    Variant("onnxruntime int8", "onnx", "int8"),
    Variant("openvino int8", "openvino", "int8"),
    Variant("onnxruntime fp32 x4", "onnx", "fp32-b4", 4),
    Variant("openvino fp32 x4", "openvino", "fp32-b4", 4),
    Variant("onnxruntime int8 x4", "onnx", "int8-b4", 4),
    Variant("openvino int8 x4", "openvino", "int8-b4", 4),
    Variant("onnxruntime fp32 @256", "onnx", "fp32-256"),
    Variant("openvino fp32 @256", "openvino", "fp32-256"),
)


def vv(*args: str, cwd: Path) -> None:
    """A `vv` verb in a subprocess (ultralytics writes its export into the working directory)."""
    env = {**os.environ, "VV_HOME": str(cwd / "home"), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "nodes.cli", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"vv {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[-400:]}")


def build_models(work: Path) -> dict[str, Path]:
    models = {
        "fp32": work / "yolo11n-320.onnx",
        "fp32-b4": work / "yolo11n-320-b4.onnx",
        "fp32-256": work / "yolo11n-256.onnx",
    }
    for key, path in models.items():
        imgsz, batch = ("256", "1") if key.endswith("256") else ("320", "4" if key.endswith("b4") else "1")
        vv(
            "model",
            "export",
            "yolo11n.yaml",
            "--imgsz",
            imgsz,
            "--batch",
            batch,
            "--output",
            str(path),
            cwd=work,
        )
    for key in ("fp32", "fp32-b4"):
        int8 = models[key].with_name(models[key].stem + "-int8.onnx")
        vv("model", "quantize", str(models[key]), "--sample-media", "--output", str(int8), cwd=work)
        models[key.replace("fp32", "int8")] = int8
    return models


def speed(variant: Variant, models: dict[str, Path], clip: Path, threads: int) -> dict[str, float]:
    settings = ScanSettings(
        backend=variant.backend,  # type: ignore[arg-type]  # a Literal, from the table above
        model=str(models[variant.model]),
        detect_fps=5.0,
        threads=threads,
        batch=variant.batch,
    )
    detector, reason = make_detector(settings, REPO)
    if reason:
        raise SystemExit(f"{variant.name}: {reason}")
    detect_frames(
        detector, [np.zeros((480, 640, 3), np.uint8)] * variant.batch
    )  # warm-up: first-run allocations
    row: dict[str, float] = {}
    for name, gating in (("plain", False), ("gated", True)):
        analytic = scan_video(clip, detector, replace(settings, motion_gating=gating))
        timing = analytic["timing"]
        row[f"{name}_rtf"] = analytic["video"]["duration_s"] / timing["total_s"]
        row[f"{name}_inferred"] = timing["frames_inferred"]
        if not gating:
            row["ms"] = 1000 * timing["inference_s"] / max(timing["frames_inferred"], 1)
    return row


def int8_agreement(
    work: Path, clip: Path, threads: int, trained: Path | None
) -> list[tuple[str, float, float, int]]:
    """(engine, label agreement, box agreement, fp32 boxes) of int8 against onnxruntime fp32."""
    import cv2

    if trained is None:
        from clips import photo
        from yolo_models import awake_yolo11n

        photos = [photo(name, (640, 480)) for name in ("person", "dog", "horses", "giraffe")]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            fp32 = awake_yolo11n(work / "awake" / "yolo11n-320.onnx", photos)
    else:
        fp32 = trained.resolve()
    int8 = work / f"{fp32.stem}-int8.onnx"
    vv("model", "quantize", str(fp32), "--sample-media", "--output", str(int8), cwd=work)
    capture = cv2.VideoCapture(str(clip))
    frames = []
    index = 0
    while capture.grab():  # every second: the clip's scenes, a few frames of each
        if index % 10 == 0:
            frames.append(capture.retrieve()[1])
        index += 1
    capture.release()

    def run(backend: str, model: Path) -> list[list[Detection]]:
        settings = ScanSettings(backend=backend, model=str(model), confidence=0.5, threads=threads)  # type: ignore[arg-type]
        detector, reason = make_detector(settings, REPO)
        if reason:
            raise SystemExit(reason)
        return [detector.detect(frame) for frame in frames]

    reference = run("onnx", fp32)
    rows = []
    for backend in ("onnx", "openvino"):
        found = run(backend, int8)
        labelled, boxes = agreement(reference, found), agreement(reference, found, labels=False)
        rows.append((backend, 100 * labelled, 100 * boxes, sum(map(len, reference))))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=0, help="scan.threads (0: one per core)")
    parser.add_argument(
        "--trained",
        type=Path,
        help="fp32 ONNX export of TRAINED weights: measure int8 agreement on it (default: random weights)",
    )
    args = parser.parse_args()
    if args.trained is not None and not args.trained.is_file():
        parser.error(f"--trained {args.trained}: no such file")
    with tempfile.TemporaryDirectory(prefix="vv-bench-detectors-") as tmp:
        work = Path(tmp)
        clip = work / "bench.mp4"
        make_clip(clip, args.seconds)
        print(f"clip: {args.seconds:.0f} s, 640x480, 10 fps, mp4v; {os.cpu_count()} CPU cores")
        print(f"decode only: {decode_only(clip):,.0f} frames/s")
        models = build_models(work)
        header = f"{'variant':<24}{'ms/frame':>9}{'RTF':>7}{'gated RTF':>10}{'inferred':>9}{'gated':>6}"
        print(header)
        print("-" * len(header))
        for variant in VARIANTS:
            r = speed(variant, models, clip, args.threads)
            print(
                f"{variant.name:<24}{r['ms']:>9.1f}{r['plain_rtf']:>7.2f}{r['gated_rtf']:>10.1f}"
                f"{r['plain_inferred']:>9.0f}{r['gated_inferred']:>6.0f}"
            )
        print("x4: scan.batch 4 on a batch-4 export; @256: imgsz 256; RTF: video seconds per wall second")
        weights = f"trained {args.trained.name}" if args.trained else "random weights"
        print(
            f"int8 vs onnxruntime fp32 ({weights}) at confidence 0.5, fp32 boxes found again at IoU >= 0.5:"
        )
        for backend, labelled, boxes, count in int8_agreement(work, clip, args.threads, args.trained):
            print(
                f"  {backend:<9} int8: {labelled:5.1f}% with the label, {boxes:5.1f}% boxes only (of {count})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
