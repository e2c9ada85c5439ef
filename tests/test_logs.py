"""app.log: JSON lines from every node process, rotated by size with gzip, no line lost or doubled."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO

WRITER = """
import logging, sys
from pathlib import Path
from bus.logs import setup_logging
setup_logging(sys.argv[1], "edge1", Path(sys.argv[2]), max_bytes=4000, backups=1000)
log = logging.getLogger("test")
for i in range(400):
    log.info("line %d", i, extra={"alert_id": f"{sys.argv[1]}-{i}"})
"""


def read_all(logs: Path) -> list[dict]:
    lines = []
    for path in sorted(logs.glob("app.log*")):
        if path.name.endswith(".lock"):
            continue
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        lines += [json.loads(line) for line in data.decode().splitlines() if line]
    return lines


def test_processes_share_one_rotated_log_without_losing_lines(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, f"node{n}", str(logs)], cwd=REPO, stderr=subprocess.DEVNULL
        )
        for n in range(3)
    ]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    lines = read_all(logs)
    assert len(list(logs.glob("app.log.*.gz"))) > 3  # it rotated, and compressed what it rotated
    ids = [line["alert_id"] for line in lines]
    assert len(ids) == len(set(ids)) == 1200
    first = lines[0]
    assert {"time", "level", "node", "device", "message", "pid"} <= set(first) and first["device"] == "edge1"
