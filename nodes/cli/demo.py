"""Run the whole pipeline once on a sample video: broker, every node, live events, a verified LogLine.

Builds a short clip from sample photos that a dependency ships (ultralytics' bus.jpg and zidane.jpg)
or, on a lean install, draws one with OpenCV (or takes --video FILE), drops it into input/, prints
the bus traffic as it happens, verifies the LogLine that comes out, says which detector ran (and
how to get a YOLO model when it was the fallback), then stops everything. It needs no network and
no shared assets. Exit codes: 0 done and verified, 1 failed, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bus.argtypes import positive_float
from bus.config import load_settings
from nodes.ops.demo import NODES, Seen, describe_detector, drive, free_port, model_env
from nodes.sign.keys import KeyStore
from nodes.sign.verify import verify_paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home", type=Path, default=Path("var/demo"), help="VV_HOME for the demo (default: var/demo)"
    )
    parser.add_argument("--video", type=Path, help="use this video instead of building the sample clip")
    parser.add_argument(
        "--timeout", type=positive_float, default=180.0, help="give up after this many seconds"
    )


def run(args: argparse.Namespace) -> int:
    home = args.home.resolve()
    if args.video is not None and not args.video.is_file():
        print(f"vv demo: {args.video}: no such file", file=sys.stderr)
        return 2
    shutil.rmtree(home, ignore_errors=True)
    port = free_port()
    env = {**os.environ, "VV_HOME": str(home), "VV_DEVICE": "demo", "VV_MQTT_PORT": str(port), **model_env()}
    settings = load_settings(env)
    key = KeyStore(settings.paths.keys).generate()
    print(
        f"demo: VV_HOME={home}, broker on 127.0.0.1:{port}, signing key {key.key_id}, model {env['VV_SCAN_MODEL']}"
    )
    settings.paths.logs.mkdir(parents=True, exist_ok=True)
    log_path = settings.paths.logs / "demo-up.out"
    command = [sys.executable, "-m", "nodes.cli", "up", "--broker", "--nodes", ",".join(NODES)]
    deadline = time.monotonic() + args.timeout
    with log_path.open("ab") as log:
        up = subprocess.Popen(command, env=env, stdout=log, stderr=log)  # the broker and nodes, supervised
    seen = Seen()
    try:
        drive(args, settings, port, deadline, up, seen)
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            stopped = up.wait(60) == 0
        except subprocess.TimeoutExpired:
            up.kill()
            stopped = False
    if seen.scan is not None:
        print(describe_detector(seen.scan))
    if not stopped:
        print(f"demo: `vv up` did not stop cleanly; see {log_path}", file=sys.stderr)
        return 1
    logline = seen.logline
    if logline is None:
        print(f"demo: no LogLine within {args.timeout:.0f}s; see {settings.paths.logs}", file=sys.stderr)
        return 1
    print(f"\ndemo: the signed LogLine ({logline}):")
    print(json.dumps(json.loads(Path(logline).read_text()), indent=2))
    report = verify_paths([Path(logline)], KeyStore(settings.paths.keys).verifiers())
    for result in report.results:
        print(
            ("VALID " if result.valid else "INVALID ")
            + str(result.path)
            + ("" if result.valid else ": " + "; ".join(result.reasons))
        )
    print("demo: everything stopped cleanly")
    return 0 if report.valid else 1
