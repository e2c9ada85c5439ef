"""A year on a device: do the journal's readers cost the same after 1 month and after 1 year?

Synthesises the journal of a device that ingests one video a minute (video.new, scan.done,
summary.done, logline.signed, one health document each, an alert every 50 videos, a quarantine every
1,000; three videos stuck in `scanned` since the first day), for 30 and for 365 days ending now:
about 43k videos / 217k events and 526k videos / 2.64M events. Segments are written directly in the
store's own format (`segment_header`, `frame_record`, one segment and sidecar per UTC day, as the
writer lays them out) from msgpack templates, which is what keeps generation to seconds; then the
real writer (`Journal.open`) checks and opens them like any journal.

Then, in process and through the real code paths:
- index build: the one-time catch-up of the video index over the whole history (`VideoIndex.refresh`);
- per pass, after the real writer appended the next minute's video: `vv status VIDEO` of a video from
  the first day (`nodes.cli.status.run`, with a fresh index connection as a new CLI process has),
  `vv status` (the bounded summary), one reconciler pass (`ReconcilerNode.reconcile`) and one monitor
  journal check (`MonitorNode._check_journal`), each with its own index instance as separate processes
  have and on an event loop that lives on, as a node's does; rounds alternate between the month and
  the year device, so a busy machine weighs on both alike;
- disk: the journal and the state the index keeps.

Goal: each pass under 100 ms and within 20% from 1 month to 1 year. Prints figures, asserts nothing.
Run: `.venv/bin/python bench/longrun.py [--days 30,365] [--repeat 15] [--cache DIR]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus.config import Settings, load_settings
from nodes.cli import status
from nodes.journal import index as video_index
from nodes.journal.store import (
    DAY_S,
    Journal,
    SegmentIndex,
    frame_record,
    index_path,
    journal_stats,
    segment_header,
    segment_name,
)
from nodes.monitor.node import MonitorNode
from nodes.reconciler.node import ReconcilerNode

DEVICE = "bench-edge"
STUCK = 3  # videos left in `scanned` on the first day: the open set both journals share
SUBJECT, EVENT_ID, CAUSE, TIME = b"S" * 32, b"I" * 36, b"C" * 36, b"T" * 24
ROOT = Path(__file__).resolve().parent.parent


def _fixture(kind: str) -> dict[str, Any]:
    import json

    return dict(json.loads((ROOT / "schemas" / "fixtures" / kind / "valid-1.json").read_text()))


def _with_subject(value: Any) -> Any:
    """A fixture with its video id (and the paths naming it) replaced by the subject placeholder."""
    if isinstance(value, dict):
        return {key: _with_subject(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_subject(item) for item in value]
    if isinstance(value, str):
        return value.replace("0123456789abcdef0123456789abcdef", SUBJECT.decode())
    return value


def _template(kind: str, source: str, data: dict[str, Any], subject: bool = True) -> bytes:
    """A whole journal record, msgpack-packed once, with fixed-width placeholders to substitute."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": EVENT_ID.decode(),
        "type": kind,
        "source": f"vv://{DEVICE}/{source}",
        "time": TIME.decode(),
        "datacontenttype": "application/json"
        if kind.startswith(("health", "alert"))
        else "application/msgpack",
        "dataschema": f"urn:vv-edge:schema:{kind.split('.')[0] if kind.startswith('health') else kind}:1",
        "device": DEVICE,
        "causationid": CAUSE.decode(),
        "epoch": 3,
        "seq": 100_000,
        "data": _with_subject(data),
    }
    if subject:
        event["subject"] = SUBJECT.decode()
    topic = f"vv/{DEVICE}/{kind.replace('.', '/')}"
    return bytes(
        msgpack.packb({"topic": topic, "received_at": TIME.decode(), "event": event}, use_bin_type=True)
    )


@dataclass
class Templates:
    steps: list[tuple[bytes, float]]  # the pipeline of a video, and each step's offset in seconds
    health: bytes
    alert: bytes
    quarantined: bytes

    @classmethod
    def build(cls) -> Templates:
        return cls(
            steps=[
                (_template("video.new", "ingest", _fixture("video.new")), 0.0),
                (_template("scan.done", "scan", _fixture("scan.done")), 9.0),
                (_template("summary.done", "summarize", _fixture("summary.done")), 10.0),
                (_template("logline.signed", "sign", _fixture("logline.signed")), 10.5),
            ],
            health=_template("health.scan", "scan", _fixture("health"), subject=False),
            alert=_template("alert.error", "scan", _fixture("alert")),
            quarantined=_template("video.quarantined", "reconciler", _fixture("video.quarantined")),
        )


def _stamp(epoch: float) -> bytes:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:23].encode() + b"Z"


class Ids:
    """UUIDv7-shaped, unique, time-ordered ids (36 characters, like the placeholders)."""

    def __init__(self) -> None:
        self.n = 0

    def next(self, epoch: float) -> bytes:
        self.n += 1
        ms = int(epoch * 1000)
        return f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7{self.n >> 48 & 0xFFF:03x}-8000-{self.n & 0xFFFFFFFFFFFF:012x}".encode()


def video_id(n: int) -> str:
    return f"{n:032x}"


def video_events(t: Templates, ids: Ids, n: int, start: float) -> Iterator[tuple[float, bytes]]:
    """(received time, record payload) of the n-th video's events."""
    subject = video_id(n).encode()
    cause = ids.next(start)
    steps = t.steps[:2] if n % 1000 == 999 or n < STUCK else t.steps
    for template, offset in steps:
        when = start + offset
        stamp = _stamp(when)
        yield (
            when,
            (
                template.replace(SUBJECT, subject)
                .replace(EVENT_ID, ids.next(when))
                .replace(CAUSE, cause)
                .replace(TIME, stamp)
            ),
        )
    extras = [(t.health, 30.0)]
    if n % 50 == 49:
        extras.append((t.alert, 31.0))
    if n % 1000 == 999:
        extras.append((t.quarantined, 40.0))
    for template, offset in extras:
        when = start + offset
        yield (
            when,
            (
                template.replace(SUBJECT, subject)
                .replace(EVENT_ID, ids.next(when))
                .replace(CAUSE, cause)
                .replace(TIME, _stamp(when))
            ),
        )


def synthesise(directory: Path, days: int, end: float) -> tuple[int, int]:
    """Write `days` of one video a minute ending at `end`, one segment (and sidecar) per UTC day.

    Returns (videos, events). Records are grouped by the UTC day they were received, in order.
    """
    directory.mkdir(parents=True)
    t, ids = Templates.build(), Ids()
    first_minute = int((end - days * DAY_S) // 60)
    videos = days * 1440 - 1  # the next minute's video is appended live, through the writer
    segment, record_number, day, frames = 0, 0, None, list[bytes]()
    index = SegmentIndex(0, 0)

    def flush(sealed: bool) -> None:
        path = directory / segment_name(segment)
        data = segment_header(index.first_record) + b"".join(frames)
        path.write_bytes(data)
        index.size = len(data)
        if sealed:
            index_path(path).write_bytes(index.to_json())

    events = 0
    for n in range(videos):
        for when, payload in video_events(t, ids, n, (first_minute + n) * 60.0):
            if int(when // DAY_S) != day:
                if frames:
                    flush(sealed=True)
                segment, day, frames = segment + 1, int(when // DAY_S), []
                index = SegmentIndex(0, record_number)
            frames.append(frame_record(payload))
            index.add(when)
            record_number += 1
            events += 1
    flush(sealed=False)
    return videos, events


@dataclass
class Figures:
    label: str
    videos: int = 0
    events: int = 0
    generate_s: float = 0.0
    build_s: float = 0.0
    passes: dict[str, list[float]] = field(default_factory=dict)
    journal_bytes: int = 0
    state_bytes: int = 0
    segments: int = 0


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def _process(role: str, indexes: dict[str, video_index.VideoIndex], settings: Settings) -> Iterator[None]:
    """Run as if in process `role`: its own index connection and cache, as separate processes have."""
    path = video_index.index_path(settings.paths)
    if role not in indexes:
        indexes[role] = video_index.VideoIndex(settings.paths.journal, path)
    video_index._shared[path] = indexes[role]
    try:
        yield
    finally:
        video_index._shared.pop(path, None)


def _cli(argv: list[str]) -> None:
    """`vv status ...` in process: a fresh index connection, as a new CLI process opens."""
    args = argparse.Namespace(video=None, since=None, json=False, limit=status.DEFAULT_LIMIT)
    if argv:
        args.video = argv[0]
    with contextlib.redirect_stdout(io.StringIO()):
        code = status.run(args)
    for index in video_index._shared.values():
        index.close()
    video_index._shared.clear()
    assert code == 0, f"vv status {' '.join(argv)} exited {code}"


@dataclass
class Device:
    """One synthetic device: its journal, index instances (one per process role) and nodes."""

    figures: Figures
    settings: Settings
    end: float
    indexes: dict[str, video_index.VideoIndex] = field(default_factory=dict)
    passes: dict[str, Callable[[], Any]] = field(default_factory=dict)
    ids: Ids = field(default_factory=Ids)
    next_video: int = 0
    loop: asyncio.Runner = field(default_factory=asyncio.Runner)  # a node's event loop lives on

    def environ(self) -> None:
        """What a `vv` command of this device sees."""
        os.environ.update({"VV_HOME": str(self.settings.paths.home), "VV_DEVICE": DEVICE})


def prepare(label: str, days: int, repeat: int, cache: Path) -> Device:
    """Synthesise the journal (or reuse the cached one) and build the index: the one-time costs."""
    figures = Figures(label)
    home = cache / f"days-{days}"
    os.environ.update({"VV_HOME": str(home), "VV_DEVICE": DEVICE})
    settings = load_settings()
    end = time.time() - repeat * 60 - 60  # room for the live minutes appended during the rounds
    if home.exists() and not (home / "complete").exists():
        shutil.rmtree(home)
    if not home.exists():
        began = time.perf_counter()
        figures.videos, figures.events = synthesise(settings.paths.journal, days, end)
        figures.generate_s = time.perf_counter() - began
        (home / "complete").write_text(f"{figures.videos} {figures.events}\n")
    else:
        figures.videos, figures.events = map(int, (home / "complete").read_text().split())
        shutil.rmtree(settings.paths.state, ignore_errors=True)
    device = Device(figures, settings, end)
    began = time.perf_counter()
    with _process("catch-up", device.indexes, settings):
        video_index.open_index(settings.paths).refresh()
    figures.build_s = time.perf_counter() - began
    reconciler, monitor = ReconcilerNode(settings), MonitorNode(settings)
    for node in (reconciler, monitor):
        node.epoch = node.store.bump_epoch()  # what Node.main does before any emit
    device.ids.n = figures.events * 2  # ids of the live minutes never collide with the synthetic ones
    device.next_video = figures.videos + 1_000_000  # never an id of the synthetic history
    old_video = video_id(STUCK + 7)
    device.passes = {
        "vv status VIDEO": lambda: _cli([old_video]),
        "vv status": lambda: _cli([]),
        "reconciler pass": lambda: device.loop.run(reconciler.reconcile()),
        "monitor pass": lambda: device.loop.run(monitor._check_journal()),
    }
    return device


def one_round(device: Device, writer: Journal, templates: Templates, round_: int, counted: bool) -> None:
    """The next minute's video through the real writer, then every pass once, timed."""
    for _when, payload in video_events(templates, device.ids, device.next_video, device.end + round_ * 60):
        writer.append(msgpack.unpackb(payload, raw=False))
    device.next_video += 1
    device.environ()
    for name, run in device.passes.items():
        own = (
            contextlib.nullcontext()
            if name.startswith("vv ")
            else _process(name, device.indexes, device.settings)
        )
        with own:
            began = time.perf_counter()
            run()
            took = time.perf_counter() - began
        if counted:
            device.figures.passes.setdefault(name, []).append(took)


def measure(devices: list[Device], repeat: int) -> None:
    """Rounds alternate between the devices, so a busy machine weighs on each alike."""
    templates = Templates.build()
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(Journal.open(d.settings.paths.journal)) for d in devices]
        for round_ in range(repeat + 1):  # round 0 warms up (imports, first alerts) and is not counted
            for device, writer in zip(devices, writers, strict=True):
                one_round(device, writer, templates, round_, counted=round_ > 0)
    for device in devices:
        device.loop.close()
        for index in device.indexes.values():
            index.close()
        journal = device.settings.paths.journal
        stats = journal_stats(journal)
        device.figures.journal_bytes, device.figures.segments = stats["bytes"], stats["segments"]
        device.figures.state_bytes = _dir_bytes(device.settings.paths.state / "journal")


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.1f} ms (p90 {sorted(values)[int(len(values) * 0.9) - 1] * 1000:.1f})"


def report(results: list[Figures]) -> None:
    print()
    print(
        f"{'':24}"
        + "".join(f"{f.label:>30}" for f in results)
        + (f"{'year / month':>16}" if len(results) == 2 else "")
    )
    rows: list[tuple[str, list[str], str]] = [
        ("videos", [f"{f.videos:,}" for f in results], ""),
        ("events", [f"{f.events:,}" for f in results], ""),
        ("synthesis", [f"{f.generate_s:.1f} s" if f.generate_s else "cached" for f in results], ""),
        ("index build (once)", [f"{f.build_s:.1f} s" for f in results], ""),
    ]
    for name in results[0].passes:
        ratio = ""
        if len(results) == 2:
            ratio = f"{statistics.median(results[1].passes[name]) / statistics.median(results[0].passes[name]):.2f}x"
        rows.append((name, [_ms(f.passes[name]) for f in results], ratio))
    rows += [
        (
            "journal on disk",
            [f"{f.journal_bytes / 1e6:,.0f} MB in {f.segments} segments" for f in results],
            "",
        ),
        ("index state on disk", [f"{f.state_bytes / 1e6:,.1f} MB" for f in results], ""),
        ("  per video", [f"{f.state_bytes / max(f.videos, 1):.0f} B" for f in results], ""),
    ]
    for name, values, ratio in rows:
        print(f"{name:24}" + "".join(f"{v:>30}" for v in values) + f"{ratio:>16}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", default="30,365", help="journals to build, in days (default 30,365)")
    parser.add_argument("--repeat", type=int, default=15, help="timed rounds of each pass")
    parser.add_argument("--cache", type=Path, help="keep the synthetic journals here between runs")
    args = parser.parse_args()
    logging.getLogger("vv").setLevel(logging.CRITICAL)  # the stuck videos' alerts are expected
    cache = args.cache or Path(tempfile.mkdtemp(prefix="vv-longrun-"))
    try:
        devices = []
        for days in (int(d) for d in args.days.split(",")):
            label = {30: "1 month", 365: "1 year"}.get(days, f"{days} days")
            print(f"{label}: synthesising the journal and building the index ...", flush=True)
            devices.append(prepare(label, days, args.repeat, cache))
        print(f"timing {args.repeat} rounds ...", flush=True)
        measure(devices, args.repeat)
    finally:
        if args.cache is None:
            shutil.rmtree(cache, ignore_errors=True)
    results = [device.figures for device in devices]
    report(results)


if __name__ == "__main__":
    main()
