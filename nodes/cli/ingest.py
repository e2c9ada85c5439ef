"""Ingest video files now: store them (moved, or copied with --copy) and announce them on the bus.

Each file gets exactly what a drop in input/ gets: a `video.new`, or quarantine in corrupted/ with an
`alert.error` and `video.quarantined`. A file whose video was taken in before is reported as
such and, unless --copy, removed (its bytes are already in storage).
Exit status: 0 all ingested (or already there), 1 any quarantined or not delivered, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import sys
from pathlib import Path
from typing import Any

from bus.argtypes import positive_float
from bus.client import MqttError
from bus.config import Settings, load_settings
from bus.inputs import not_regular, shown
from bus.logs import setup_logging
from nodes.ingest.files import Outcome, ingest_file, ledger_for
from nodes.ingest.node import IngestCounts, announce
from nodes.ingest.once import IngestCliNode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="video files to ingest")
    parser.add_argument("--copy", action="store_true", help="copy the files instead of moving them")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file")
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=30.0,
        help="seconds to wait for the broker to take the events",
    )


UNDECODABLE = ("\udc80", "\udcff")  # how os.fsdecode carries bytes that are not UTF-8


def refusal(path: Path) -> str | None:
    """Why `path` cannot be ingested as given (one line naming it), from a stat alone; None if it can.

    A symlink would be moved as a link (its target left behind, storage holding a pointer out of
    it), a FIFO or a device would block or never end when hashed, and a name with control
    characters is no name a person chose. Bytes that are not UTF-8 (a Latin-1 camera share) are
    taken, escaped, as the drop zone takes them.
    """
    if any(not c.isprintable() and not UNDECODABLE[0] <= c <= UNDECODABLE[1] for c in path.name):
        return f"{shown(path)}: the name holds control characters (rename the file)"
    return not_regular(path, follow_symlinks=False)


def run(args: argparse.Namespace) -> int:
    paths = [Path(name) for name in args.files]
    refused = [reason for path in paths if (reason := refusal(path)) is not None]
    for reason in refused:
        print(f"vv ingest: {reason}; nothing was ingested", file=sys.stderr)
    if refused:
        return 2
    settings = load_settings()
    setup_logging("ingest-cli", settings.device, settings.paths.logs, "WARNING")
    return asyncio.run(_ingest(settings, paths, copy=args.copy, as_json=args.json, timeout=args.timeout))


async def _ingest(settings: Settings, files: list[Path], *, copy: bool, as_json: bool, timeout: float) -> int:
    node = IngestCliNode(settings, instance="cli")
    node.state_dir.mkdir(parents=True, exist_ok=True)
    ledger = ledger_for(settings.paths)
    counts = IngestCounts()
    source = "vv ingest --copy" if copy else "vv ingest"
    # One `vv ingest` at a time: two would share (and keep stealing) one MQTT client id.
    with (node.state_dir / "cli.lock").open("w") as lock:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        try:
            async with node.running(timeout):
                for path in files:
                    try:
                        outcome = await asyncio.to_thread(
                            ingest_file, path, settings.paths, ledger, copy=copy, source=source
                        )
                    except OSError as exc:
                        counts.failed += 1
                        print(f"{shown(path)}: cannot ingest: {shown(exc)}", file=sys.stderr)
                        continue
                    await announce(node, ledger, outcome, counts)
                    print(json.dumps(_report(outcome)) if as_json else shown(_line(outcome)))
                delivered = await node.flush(timeout)
        except MqttError as exc:
            print(f"vv ingest: {shown(exc)}; no file was touched", file=sys.stderr)
            return 1
    if not delivered:
        print(
            f"vv ingest: the broker did not acknowledge every event within {timeout:.0f}s; "
            "they stay queued and are sent by the next `vv ingest`",
            file=sys.stderr,
        )
    return 0 if delivered and not (counts.quarantined or counts.failed) else 1


def _report(outcome: Outcome) -> dict[str, Any]:
    name = shown(str(outcome.path))  # a name that is not UTF-8 cannot be printed as it is
    report: dict[str, Any] = {"file": name, "result": outcome.kind, "video": outcome.video_id}
    if outcome.kind == "ingested":
        report["path"] = outcome.data["video"]["path"]
        report["duration_s"] = outcome.data["video"]["duration_s"]
    elif outcome.kind == "quarantined":
        report.update(
            path=outcome.data["quarantine_path"],
            error_type=outcome.data["error_type"],
            error=outcome.data["error_message"],
        )
    return report


def _line(outcome: Outcome) -> str:
    report = _report(outcome)
    if outcome.kind == "ingested":
        return (
            f"{report['file']}: ingested as {outcome.video_id} ({report['duration_s']} s) -> {report['path']}"
        )
    if outcome.kind == "duplicate":
        removed = "" if outcome.path.exists() else " (this copy removed)"
        return f"{report['file']}: already ingested as {outcome.video_id}{removed}"
    return f"{report['file']}: QUARANTINED ({report['error_type']}: {report['error']}) -> {report['path']}"
