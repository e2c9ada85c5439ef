"""Scan throughput per detector backend on a 60 s 640x480 10 fps clip (mostly static, a few seconds of motion).

Prints decode-only frames/s (the ceiling), then per backend: scan frames/s and real-time factor
(video seconds per wall second) with and without motion gating at detect_fps 5, a naive baseline
(the same detector on every frame in one loop), the orchestration overhead (wall time that is
neither decode nor inference) and peak RSS. Each backend runs in its own process so its RSS is its own.

    .venv/bin/python bench/scan.py [--seconds 60] [--backends darknet,onnx,onnx-cv2,ultralytics]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from nodes.scan.analyze import scan_video  # noqa: E402
from nodes.scan.detectors import Detector, make_detector  # noqa: E402
from nodes.scan.detectors.onnx import Engine, OnnxDetector  # noqa: E402
from nodes.scan.settings import ScanSettings  # noqa: E402

BACKENDS = ("darknet", "onnx", "onnx-cv2", "ultralytics")
SHARED = Path(os.environ.get("VV_SHARED", REPO.parent / "shared"))
DARKNET = SHARED / "models/yolo-fastest-1.1-coco/yolo-fastest-1.1.weights"


def make_clip(path: Path, seconds: float) -> None:
    from clips import Scene, write_clip  # type: ignore[import-not-found, unused-ignore]  # tests/ helper: shared/media photos

    still = seconds - 5
    scenes = [Scene("person", still / 2), Scene("person", 5, slide="dog"), Scene("person", still / 2)]
    write_clip(path, scenes, fps=10, size=(640, 480))


def decode_only(path: Path) -> float:
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames, start = 0, time.perf_counter()
    while capture.read()[0]:
        frames += 1
    capture.release()
    return frames / (time.perf_counter() - start)


def build_detector(backend: str, onnx_model: Path, home: Path) -> Detector:
    settings = ScanSettings(imgsz=320)
    if backend == "darknet":
        detector, reason = make_detector(replace(settings, model=str(DARKNET)), home)
    elif backend == "ultralytics":
        detector, reason = make_detector(replace(settings, model="yolo11n.yaml"), home)
    else:
        engine: Engine = "cv2" if backend == "onnx-cv2" else "onnxruntime"
        return OnnxDetector(onnx_model, [], imgsz=320, confidence=0.25, threads=0, engine=engine)
    if reason:
        raise SystemExit(f"{backend}: {reason}")
    return detector


def worker(backend: str, clip: Path, onnx_model: Path, home: Path) -> dict[str, Any]:
    """One backend's figures; runs in its own process."""
    detector = build_detector(backend, onnx_model, home)
    settings = ScanSettings(detect_fps=5.0, imgsz=320)
    result: dict[str, Any] = {"backend": backend, "runtime": detector.runtime}
    for name, gating in (("plain", False), ("gated", True)):
        analytic = scan_video(clip, detector, replace(settings, motion_gating=gating))
        timing, duration = analytic["timing"], analytic["video"]["duration_s"]
        overhead = timing["total_s"] - timing["decode_s"] - timing["inference_s"] - timing["motion_s"]
        result[name] = {
            "fps": timing["frames_decoded"] / timing["total_s"],
            "rtf": duration / timing["total_s"],
            "inferred": timing["frames_inferred"],
            "overhead_pct": 100 * overhead / timing["total_s"],
            "motion_pct": 100 * timing["motion_s"] / timing["total_s"],
            "ms_per_inference": 1000 * timing["inference_s"] / max(timing["frames_inferred"], 1),
        }
    capture = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    frames, start = 0, time.perf_counter()
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        detector.detect(frame)
        frames += 1
    elapsed = time.perf_counter() - start
    result["naive"] = {"fps": frames / elapsed, "rtf": frames / 10.0 / elapsed}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def export_onnx(work: Path) -> Path | None:
    """yolo11n.yaml (random weights: speed only) exported at 320 by `vv model export`, if ultralytics is here."""
    output = work / "yolo11n-320.onnx"
    command = [sys.executable, "-m", "nodes.cli", "model", "export", "yolo11n.yaml", "--imgsz", "320"]
    env = {**os.environ, "VV_HOME": str(work / "home"), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [*command, "--output", str(output)], cwd=work, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        print(f"no ONNX model (vv model export exit {done.returncode}): {done.stderr.strip()[-300:]}")
        return None
    return output


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--clip", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--onnx-model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.clip, args.onnx_model, args.home)))
        return 0
    if not DARKNET.exists():
        print(f"{DARKNET} is absent: set VV_SHARED to the shared assets directory", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="vv-bench-") as tmp:
        work = Path(tmp)
        clip = work / "bench.mp4"
        make_clip(clip, args.seconds)
        print(f"clip: {args.seconds:.0f} s, 640x480, 10 fps, mp4v; {os.cpu_count()} CPU cores")
        print(f"decode only (read every frame): {decode_only(clip):,.0f} frames/s")
        wanted = [b for b in args.backends.split(",") if b]
        onnx_model = export_onnx(work) if {"onnx", "onnx-cv2", "ultralytics"} & set(wanted) else None
        rows = []
        for backend in wanted:
            if backend != "darknet" and onnx_model is None:
                print(f"{backend}: skipped (needs ultralytics for the yolo11n export)")
                continue
            command = [
                sys.executable,
                __file__,
                "--worker",
                backend,
                "--clip",
                str(clip),
                "--home",
                str(work / "home"),
            ]
            command += ["--onnx-model", str(onnx_model or "")]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{backend}: failed: {done.stderr.strip()[-500:]}")
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    header = (
        f"{'backend':<12}{'runtime':<21}{'ms/inf':>7}{'naive fps':>10}{'naive RTF':>10}{'scan fps':>9}{'RTF':>6}"
        f"{'ovh%':>6}{'gated fps':>10}{'gated RTF':>10}{'inferred':>9}{'mot%':>6}{'ovh%':>6}{'RSS MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        plain, gated, naive = r["plain"], r["gated"], r["naive"]
        print(
            f"{r['backend']:<12}{r['runtime']:<21}{plain['ms_per_inference']:>7.1f}{naive['fps']:>10.1f}"
            f"{naive['rtf']:>10.2f}{plain['fps']:>9.1f}{plain['rtf']:>6.2f}{plain['overhead_pct']:>6.1f}"
            f"{gated['fps']:>10.1f}{gated['rtf']:>10.1f}{gated['inferred']:>9}{gated['motion_pct']:>6.1f}"
            f"{gated['overhead_pct']:>6.1f}{r['peak_rss_mb']:>8.0f}"
        )
    print("scan and gated sample at detect_fps 5 (300 of 600 frames); RTF = video seconds per wall second;")
    print(
        "mot% = motion test share of wall time; ovh% = wall time that is neither decode, motion test nor inference."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
