"""End-to-end latency: a clip from "file complete in input/" to `logline.signed`, per stage.

Starts the broker and every pipeline node with `vv up` in a temporary VV_HOME, drops N clips one
after another (each once the previous is signed), and reads the stage times from the journal
(the events' own timestamps). `--scene street` builds a busy street from the sample photos (the
labelled crossing of tests/clips.py repeated every 23 s: four people each time, an occlusion, a
gap), the shape of the 80 s 768x576 surveillance clip of issue 11. Prints figures; asserts nothing.
Usage: python bench/pipeline.py [--clips 3] [--seconds 10] [--scene photos|street] [--size 640x480]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bus.config import load_settings  # noqa: E402
from nodes.journal.fold import fold_journal  # noqa: E402
from nodes.sign.keys import KeyStore  # noqa: E402

NODES = "journal,ingest,scan,summarize,sign,reconciler"
SHARED = Path(os.environ.get("VV_SHARED", REPO.parent / "shared"))
STAGES = (
    ("ingested", "ingest (settle, hash, probe, move)"),
    ("scanned", "scan"),
    ("summarized", "summarize"),
    ("signed", "sign"),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_scene(path: Path, scene: str, n: int, seconds: float, size: tuple[int, int]) -> Path:
    """Clip `n` of the benchmark: a sample photo with a dog sliding across, or the busy street."""
    from clips import Scene, busy_street, write_clip, write_street  # type: ignore[import-not-found, unused-ignore]  # tests/ helper

    if scene == "photos":
        return write_clip(path, [Scene(("person", "dog", "horses")[n % 3], seconds, slide="dog")], size=size)
    return write_street(path, busy_street(seconds, offset=n * 0.5), size=size)  # offset: not the same bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--scene", choices=("photos", "street"), default="photos")
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="vv-bench-pipeline-"))
    port = free_port()
    env = {
        **os.environ,
        "VV_HOME": str(work / "home"),
        "VV_DEVICE": "bench",
        "VV_MQTT_PORT": str(port),
        "VV_SCAN_MODEL": str(SHARED / "models/yolo-fastest-1.1-coco/yolo-fastest-1.1.weights"),
        "VV_INGEST_SETTLE_S": "0.2",
    }
    settings = load_settings(env)
    KeyStore(settings.paths.keys).generate()
    up = subprocess.Popen(
        [sys.executable, "-m", "nodes.cli", "up", "--broker", "--nodes", NODES],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows: dict[str, list[float]] = {stage: [] for stage, _ in STAGES}
    totals: list[float] = []
    try:
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            time.sleep(0.05)
        time.sleep(3)  # the bench (not a test) lets every node connect before timing
        settings.paths.input.mkdir(parents=True, exist_ok=True)
        for n in range(args.clips):
            clip = write_scene(work / f"clip{n}.mp4", args.scene, n, args.seconds, (width, height))
            staged = settings.paths.input / f".clip{n}.mp4.part"
            shutil.copyfile(clip, staged)
            os.replace(staged, settings.paths.input / clip.name)
            complete = time.time()
            limit = max(120.0, 3 * args.seconds)
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                states = (
                    fold_journal(settings.paths.journal).states if settings.paths.journal.exists() else {}
                )
                if sum(1 for s in states.values() if s.stage == "signed") == n + 1:
                    break
                time.sleep(0.05)
            else:
                print(f"clip {n}: not signed within {limit:.0f} s", file=sys.stderr)
                return 1
            state = max((s for s in states.values() if s.stage == "signed"), key=lambda s: s.stages["signed"])
            previous = complete
            for stage, _ in STAGES:
                at = state.stages[stage].timestamp()
                rows[stage].append(at - previous)
                previous = at
            totals.append(previous - complete)
        texts = [
            json.loads(path.read_text())["summary"]["text"]
            for path in sorted(settings.paths.storage.rglob("*.logline.json"))
        ]
        thumbnails = len(list(settings.paths.storage.rglob("thumbnails/*.jpg")))
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"pipeline latency, {args.clips} x {args.seconds:.0f} s {width}x{height} {args.scene} clip, darknet yolo-fastest, {os.cpu_count()} cores"
    )
    for stage, label in STAGES:
        print(f"  {label:<36} median {statistics.median(rows[stage]):6.2f} s   max {max(rows[stage]):6.2f} s")
    print(
        f"  {'file complete -> logline.signed':<36} median {statistics.median(totals):6.2f} s   max {max(totals):6.2f} s"
    )
    print(f"  summaries: {' | '.join(sorted(set(texts)))}")
    print(f"  thumbnails written: {thumbnails} for {args.clips} clips (crop + full frame each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
