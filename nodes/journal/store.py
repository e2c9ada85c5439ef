"""The journal's storage: an append-only, segmented, checksummed log, the device's source of truth.

On-disk format, version 1
-------------------------
A directory of segments named `00000001.seg`, `00000002.seg`, ... (increasing, gaps allowed once old
segments are removed). Every segment starts with a 16-byte header::

    magic b"VVJL" | version u16 LE (1) | reserved u16 LE (0) | number of its first record u64 LE

followed by records, each::

    length u32 LE | crc32 u32 LE | payload (`length` bytes: msgpack of the record dict)

The crc32 covers the four length bytes and then the payload, so a damaged length is caught as well as
a damaged payload. Records are numbered from 0 across the whole journal; the header's first record
number lets a writer resume numbering by reading only the last segment. A segment is closed (and
fsynced, unless the policy is "never") once the next record would take it past `segment_bytes`;
a record larger than that gets a segment of its own. New segments appear atomically (temp file with
the header, then rename), so a segment file always has a whole header unless the disk lost it.

Damage is told apart by position. A bad record (cut short, impossible length, crc mismatch) with no
valid record anywhere after it in the last segment is a torn write from a crash: the writer truncates
it on open and reports it; readers stop there quietly (it may be an append in progress). Any other bad
record (valid records after it, or in a sealed segment) is real corruption: `JournalCorrupt` names the
segment and byte offset and nothing is truncated; readers may opt to skip to the next valid record.
On open the writer checks the last segment and the one sealed just before it (a crash right after a
roll-over can leave that one short); older segments are checked whenever they are read.

Time index: a segment holds the records of one UTC day at most (by `received_at`: the writer rolls to
a new segment when the day changes), and when the writer seals a segment it writes a small sidecar
`00000001.idx` (JSON: size, first record, record count, oldest and newest `received_at`, records
without one), atomically. A reader asked for `since` skips a sealed segment whose sidecar shows only
older records without opening it. A sidecar that is missing (a crash between seal and write, a
journal from before sidecars) or does not match its segment's size is ignored (the segment is
decoded) and rebuilt by the writer when asked (`Journal.sealed_index`, which the journal node's
retention pass does in the background, never at open). Retention removes sealed segments whole (and
their sidecars), so segment numbers may have gaps anywhere below the last one.

Only one writer at a time: it holds an exclusive `flock` on `LOCK` in the directory (which holds its
pid). Readers take no lock and never write.

One module, one concern: the on-disk format (records, segments, their time indexes, recovery) is
written and read here only, so a change to the format is a change to this file.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, NamedTuple, Self, get_args

import msgpack

from bus.envelope import parse_time
from bus.fsutil import fsync_dir
from nodes.journal.settings import FsyncPolicy

log = logging.getLogger("vv.journal")


MAGIC = b"VVJL"
VERSION = 1
SEGMENT_HEADER = struct.Struct("<4sHHQ")
RECORD_HEADER = struct.Struct("<II")
_LENGTH = struct.Struct("<I")
MAX_RECORD_BYTES = 16 * 1024 * 1024  # events are <= 256 KiB; anything claiming more is damage
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
MAX_SEGMENT_BYTES = 0xFFFF_FFFF  # record offsets are kept as u32 (the video index's refs)
_SEGMENT_NAME = re.compile(r"^(\d{8,})\.seg$")
_CHUNK = 1 << 20
INDEX_VERSION = 1
DAY_S = 86400


class JournalError(Exception):
    """The journal cannot be used as asked (closed, locked, bad record)."""


class JournalLocked(JournalError):
    """Another process holds the journal open for writing; two writers would interleave records."""


class JournalCorrupt(JournalError):
    """A record that is not a torn tail is damaged; nothing was truncated so that nothing is lost."""

    def __init__(self, segment: str, offset: int, reason: str) -> None:
        super().__init__(f"journal segment {segment} is corrupt at byte {offset}: {reason}")
        self.segment = segment
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True)
class RecoveryReport:
    """What crash recovery removed from the tail of the journal on open."""

    segment: str
    offset: int
    bytes_truncated: int
    reason: str

    def __str__(self) -> str:
        return (
            f"truncated torn tail of journal segment {self.segment} at byte {self.offset} "
            f"({self.bytes_truncated} bytes): {self.reason}"
        )


@dataclass(frozen=True, order=True)
class Position:
    """Where a record starts: segment number and byte offset (what the video index keeps)."""

    segment: int
    offset: int


class Entry(NamedTuple):
    """A record read from a position, with the position right after it."""

    position: Position
    end: Position
    record: dict[str, Any]


def segment_name(index: int) -> str:
    return f"{index:08d}.seg"


def index_path(segment: Path) -> Path:
    """The time-index sidecar of a segment: `00000001.seg` -> `00000001.idx`."""
    return segment.with_suffix(".idx")


def received_time(record: dict[str, Any]) -> float | None:
    """A record's `received_at` as epoch seconds; None when absent or unreadable."""
    received = record.get("received_at")
    if not isinstance(received, str):
        return None
    try:
        return parse_time(received).timestamp()
    except ValueError:
        return None


@dataclass
class SegmentIndex:
    """What a sealed segment holds, in time: enough to skip it, export it or retire it unread."""

    size: int
    first_record: int
    records: int = 0
    received_min: float | None = None
    received_max: float | None = None
    untimed: int = 0  # records without a readable received_at: such a segment is never skipped

    def add(self, when: float | None) -> None:
        self.records += 1
        if when is None:
            self.untimed += 1
            return
        self.received_min = when if self.received_min is None else min(self.received_min, when)
        self.received_max = when if self.received_max is None else max(self.received_max, when)

    def older_than(self, threshold: float) -> bool:
        """True when every record of the segment was received before `threshold` (epoch seconds)."""
        return self.untimed == 0 and (self.received_max is None or self.received_max < threshold)

    def to_json(self) -> bytes:
        return json.dumps({"version": INDEX_VERSION, **vars(self)}, separators=(",", ":")).encode()


def read_index(segment: Path) -> SegmentIndex | None:
    """The sidecar of a sealed segment, or None when missing, unreadable or stale (size differs)."""
    try:
        doc = json.loads(index_path(segment).read_bytes())
        size = segment.stat().st_size
        if not isinstance(doc, dict) or doc.pop("version", None) != INDEX_VERSION:
            return None
        index = SegmentIndex(**doc)
    except (OSError, ValueError, TypeError):
        return None
    return index if index.size == size else None


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """The segment files, in order; other files in the directory are not the journal's business."""
    found = []
    for entry in os.scandir(directory):
        match = _SEGMENT_NAME.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


def _read_header(handle: BinaryIO, name: str) -> int | None:
    """The first record number from a segment header; None when the header is cut short."""
    raw = handle.read(SEGMENT_HEADER.size)
    if len(raw) < SEGMENT_HEADER.size:
        return None
    magic, version, _reserved, first = SEGMENT_HEADER.unpack(raw)
    if magic != MAGIC:
        raise JournalCorrupt(name, 0, f"not a journal segment (magic {magic!r})")
    if version != VERSION:
        raise JournalCorrupt(name, 0, f"unsupported journal format version {version}")
    return int(first)


def _record_crc(length: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(_LENGTH.pack(length)))


def segment_header(first_record: int) -> bytes:
    """The 16 bytes a segment starts with (also for tools that write whole segments, e.g. benchmarks)."""
    return SEGMENT_HEADER.pack(MAGIC, VERSION, 0, first_record)


def frame_record(payload: bytes) -> bytes:
    """A record as stored: length, crc32, payload (msgpack of the record dict)."""
    return RECORD_HEADER.pack(len(payload), _record_crc(len(payload), payload)) + payload


class _RecordScan:
    """Walks the records of one segment from `offset`, reading in large chunks (no per-record I/O).

    Iteration stops at end of file or at the first bad record, which is then left in `bad`.
    """

    def __init__(self, handle: BinaryIO, offset: int) -> None:
        handle.seek(offset)
        self._handle = handle
        self._buf = b""
        self._pos = 0
        self._base = offset  # file offset of _buf[0]
        self.bad: tuple[int, str] | None = None
        self._cut_at: int | None = None  # where the file ended when a record was found cut short

    def _fill(self, need: int) -> bool:
        """Make `need` bytes available at the read position; False when the file ends first."""
        if len(self._buf) - self._pos >= need:
            return True
        parts = [self._buf[self._pos :]]
        have = len(parts[0])
        self._base += self._pos
        self._pos = 0
        while have < need:
            chunk = self._handle.read(max(_CHUNK, need - have))
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        self._buf = b"".join(parts)
        return have >= need

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        while True:
            offset = self._base + self._pos
            if not self._fill(RECORD_HEADER.size):
                if len(self._buf) > self._pos:
                    self.bad = (offset, "record header cut short")
                    self._cut_at = self._base + len(self._buf)
                return
            length, crc = RECORD_HEADER.unpack_from(self._buf, self._pos)
            if not 0 < length <= MAX_RECORD_BYTES:
                self.bad = (offset, f"impossible record length {length}")
                return
            if not self._fill(RECORD_HEADER.size + length):
                self.bad = (offset, f"payload cut short ({length} bytes announced)")
                self._cut_at = self._base + len(self._buf)
                return
            start = self._pos + RECORD_HEADER.size
            payload = self._buf[start : start + length]
            if _record_crc(length, payload) != crc:
                self.bad = (offset, "crc mismatch")
                return
            self._pos = start + length
            yield offset, payload

    def next_valid(self) -> int | None:
        """The offset of the first intact record after the bad one; None means a torn tail.

        This is what separates a torn tail from corruption in the middle; it only runs once damage
        is found. For a record cut short by the end of the file, only the bytes there were then are
        searched, so records a concurrent writer appended since are not taken for records after damage.
        """
        assert self.bad is not None
        after = self.bad[0] + 1
        self._handle.seek(after)
        data = self._handle.read(-1 if self._cut_at is None else max(0, self._cut_at - after))
        size = len(data)
        unpack = RECORD_HEADER.unpack_from
        for pos in range(size - RECORD_HEADER.size):
            length, crc = unpack(data, pos)
            end = pos + RECORD_HEADER.size + length
            if (
                0 < length <= MAX_RECORD_BYTES
                and end <= size
                and _record_crc(length, data[pos + RECORD_HEADER.size : end]) == crc
            ):
                return after + pos
        return None


def _unpack(payload: bytes, segment: str, offset: int) -> dict[str, Any]:
    try:
        record = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise JournalCorrupt(
            segment, offset, f"checksum is right but the payload is not msgpack: {exc}"
        ) from None
    if not isinstance(record, dict):
        raise JournalCorrupt(segment, offset, f"record is a {type(record).__name__}, not a map")
    return record


def _payload_time(payload: bytes) -> float | None:
    """`received_time` of a stored record; None when it does not decode (readers report that damage)."""
    try:
        return received_time(_unpack(payload, "", 0))
    except JournalCorrupt:
        return None


def _count_sealed(segments: list[tuple[int, Path]]) -> int:
    """Records in all but the last segment: from the sidecars, else from the next segment's header
    (retention writes every sidecar before it removes a segment, so that difference spans no gap)."""
    total = 0
    for (_number, path), (_next, following) in itertools.pairwise(segments):
        index = read_index(path)
        if index is not None:
            total += index.records
            continue
        with path.open("rb") as handle, following.open("rb") as after:
            total += (_read_header(after, following.name) or 0) - (_read_header(handle, path.name) or 0)
    return total


def _check_sealed(path: Path, *, full: bool) -> None:
    """Raise `JournalCorrupt` for a sealed segment with a bad header, or (`full`) any bad record.

    The writer fully checks only the segment sealed last, the one a crash right after a roll-over
    can have left short; older ones are checked record by record whenever they are read.
    """
    with path.open("rb") as handle:
        if _read_header(handle, path.name) is None:
            raise JournalCorrupt(path.name, 0, "segment header cut short in a sealed segment")
        if full:
            scan = _RecordScan(handle, SEGMENT_HEADER.size)
            for _ in scan:
                pass
            if scan.bad is not None:
                raise JournalCorrupt(path.name, scan.bad[0], f"{scan.bad[1]} in a sealed segment")


class Journal:
    """The single writer of a journal directory (an exclusive lock keeps out a second one).

    `append` hands each record to the OS in one write, so readers in other processes see it at once;
    durability follows the fsync policy: "always" (every append), "interval" (when `fsync_interval_s`
    has passed since the last fsync, and on close) or "never" (left to the OS). Thread-safe.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int,
        fsync: FsyncPolicy,
        fsync_interval_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.fsync_policy: FsyncPolicy = fsync
        self.fsync_interval_s = fsync_interval_s
        self.recovery: list[RecoveryReport] = []
        self._clock = clock
        self._mutex = threading.Lock()
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._index = 0
        self._size = 0  # bytes in the current segment
        self._sealed_bytes = 0  # bytes in the segments before the current one
        self._segment_count = 0
        self._sealed_records = 0  # records in the segments before the current one (gaps left out)
        self._current = SegmentIndex(SEGMENT_HEADER.size, 0)  # the time index of the current segment
        self._next_record = 0
        self._unsynced = 0
        self._fsyncs = 0
        self._last_sync = clock()
        self._failed: BaseException | None = None

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: FsyncPolicy = "interval",
        fsync_interval_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> Journal:
        """Open (creating if needed) the journal in `directory`, truncating a torn tail left by a crash.

        Raises `JournalLocked` if another writer has it open and `JournalCorrupt` for damage that is
        not a torn tail. What recovery truncated is in `.recovery` (also logged at WARNING).
        """
        if fsync not in get_args(FsyncPolicy):
            raise ValueError(f"fsync policy {fsync!r} is not one of {', '.join(get_args(FsyncPolicy))}")
        if not 4096 <= segment_bytes <= MAX_SEGMENT_BYTES:
            raise ValueError(f"segment_bytes {segment_bytes} is out of range (4096 to {MAX_SEGMENT_BYTES})")
        if fsync_interval_s < 0:
            raise ValueError(f"fsync_interval_s {fsync_interval_s} must not be negative")
        journal = cls(
            Path(directory),
            segment_bytes=segment_bytes,
            fsync=fsync,
            fsync_interval_s=fsync_interval_s,
            clock=clock,
        )
        try:
            journal._open()
        except BaseException:
            journal.close()
            raise
        return journal

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip() or "?"
            raise JournalLocked(
                f"journal {self.directory} is already open for writing (pid {holder})"
            ) from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        for pattern in ("*.seg.tmp", "*.idx.tmp"):  # a segment or sidecar creation cut short by a crash
            for stray in self.directory.glob(pattern):
                stray.unlink()
        segments = list_segments(self.directory)
        while segments and segments[-1][1].stat().st_size < SEGMENT_HEADER.size:
            self._drop_headerless(segments.pop()[1])
        for position, (_index, path) in enumerate(segments[:-1]):
            _check_sealed(path, full=position == len(segments) - 2)
        if segments:
            self._recover_last(segments[-1][1])
        else:
            self._create_segment(1, 0)
            self._size = SEGMENT_HEADER.size
            segments = [(1, self.directory / segment_name(1))]
        self._index = segments[-1][0]
        self._segment_count = len(segments)
        self._sealed_bytes = sum(path.stat().st_size for _, path in segments[:-1])
        self._sealed_records = _count_sealed(segments)
        self._fd = os.open(self.directory / segment_name(self._index), os.O_WRONLY | os.O_APPEND)

    def sealed_index(self, number: int) -> SegmentIndex:
        """A sealed segment's sidecar, rebuilt (and written) when missing or stale.

        Not done at open: a journal from before sidecars would hold the node up for minutes; the
        journal node's retention pass (a background thread) calls this for every sealed segment.
        """
        path = self.directory / segment_name(number)
        index = read_index(path)
        if index is None:
            try:
                index = build_index(path)
            except JournalCorrupt as exc:  # readers meet the damage on their own terms; no index for it
                log.warning("no time index for journal segment %s: %s", path.name, exc)
                return SegmentIndex(path.stat().st_size, 0)
            self._write_index(path, index)
        return index

    def _write_index(self, path: Path, index: SegmentIndex) -> None:
        """Temp file and rename, so a reader never sees half a sidecar (a lost one is only rebuilt)."""
        target = index_path(path)
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("wb") as handle:
            handle.write(index.to_json())
            if self.fsync_policy != "never":
                handle.flush()
                os.fsync(handle.fileno())
        os.rename(tmp, target)

    def _report(self, report: RecoveryReport) -> None:
        self.recovery.append(report)
        log.warning("%s", report)

    def _drop_headerless(self, path: Path) -> None:
        """Remove a last segment shorter than its header: a crash cut its creation short, no records."""
        size = path.stat().st_size
        path.unlink()
        self._report(RecoveryReport(path.name, 0, size, "segment header cut short; segment removed"))

    def _recover_last(self, path: Path) -> None:
        """Check the last segment and truncate a torn tail; raise if the damage is not at the tail."""
        with path.open("r+b") as handle:
            first = _read_header(handle, path.name) or 0  # whole: shorter segments were dropped
            size = os.fstat(handle.fileno()).st_size
            scan = _RecordScan(handle, SEGMENT_HEADER.size)
            self._current = SegmentIndex(SEGMENT_HEADER.size, first)
            for _offset, payload in scan:
                self._current.add(_payload_time(payload))
            count = self._current.records
            if scan.bad is not None:
                offset, reason = scan.bad
                resume = scan.next_valid()
                if resume is not None:
                    raise JournalCorrupt(
                        path.name, offset, f"{reason}; intact records follow at byte {resume}"
                    )
                handle.truncate(offset)
                if self.fsync_policy != "never":
                    os.fsync(handle.fileno())
                self._report(RecoveryReport(path.name, offset, size - offset, reason))
                size = offset
        self._size = size
        self._next_record = first + count
        self._current.size = size

    def _create_segment(self, index: int, first_record: int) -> None:
        """Create a segment atomically, so that no one ever sees one without a whole header."""
        path = self.directory / segment_name(index)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as handle:
            handle.write(segment_header(first_record))
            handle.flush()
            if self.fsync_policy != "never":
                os.fsync(handle.fileno())
        os.rename(tmp, path)
        if self.fsync_policy != "never":
            fsync_dir(self.directory)

    def _roll(self) -> None:
        """Seal the current segment (durably, unless the policy is "never"), index it, start the next."""
        assert self._fd is not None
        if self.fsync_policy != "never":
            self._sync()
        os.close(self._fd)
        self._fd = None
        self._sealed_bytes += self._size
        self._sealed_records += self._current.records
        self._write_index(self.directory / segment_name(self._index), self._current)
        self._current = SegmentIndex(SEGMENT_HEADER.size, self._next_record)
        self._create_segment(self._index + 1, self._next_record)
        self._index += 1
        self._segment_count += 1
        self._size = SEGMENT_HEADER.size
        self._fd = os.open(self.directory / segment_name(self._index), os.O_WRONLY | os.O_APPEND)

    def _sync(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        self._fsyncs += 1
        self._unsynced = 0
        self._last_sync = self._clock()

    def append(self, record: dict[str, Any]) -> int:
        """Append one record; returns its record number (0-based, across all segments).

        A record that cannot be stored (not a dict, not msgpack-able, too big) raises ValueError and
        leaves the journal unchanged; a failed write is rolled back so no partial record stays behind.
        """
        if not isinstance(record, dict):
            raise ValueError(f"a journal record must be a dict, not {type(record).__name__}")
        try:
            payload = msgpack.packb(record, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"record cannot be stored in the journal: {exc}") from None
        if len(payload) > MAX_RECORD_BYTES:
            raise ValueError(
                f"record of {len(payload)} bytes exceeds the journal limit of {MAX_RECORD_BYTES}"
            )
        frame = frame_record(payload)
        when = received_time(record)
        with self._mutex:
            if self._fd is None:
                raise JournalError(f"journal {self.directory} is closed")
            if self._failed is not None:
                raise JournalError(
                    f"journal {self.directory} is unusable after a failed write: {self._failed}"
                )
            if self._size > SEGMENT_HEADER.size and (
                self._size + len(frame) > self.segment_bytes or self._new_day(when)
            ):
                self._roll()
            self._write(frame)
            number = self._next_record
            self._next_record += 1
            self._size += len(frame)
            self._current.add(when)
            self._current.size = self._size
            self._unsynced += 1
            if self.fsync_policy == "always" or (
                self.fsync_policy == "interval" and self._clock() - self._last_sync >= self.fsync_interval_s
            ):
                self._sync()
            return number

    def _new_day(self, when: float | None) -> bool:
        """A record of another UTC day than the current segment's starts a new segment (the time index)."""
        first = self._current.received_min
        return when is not None and first is not None and int(when // DAY_S) != int(first // DAY_S)

    def remove_segment(self, index: int) -> int:
        """Delete a sealed segment and its sidecar (retention); returns the bytes freed.

        The current segment is never removed; the caller decides what may go (see retention).
        """
        with self._mutex:
            if index >= self._index:
                raise JournalError(f"segment {segment_name(index)} is the current one or newer: not removed")
            path = self.directory / segment_name(index)
            sealed = self.sealed_index(index)
            path.unlink()
            index_path(path).unlink(missing_ok=True)
            if self.fsync_policy != "never":
                fsync_dir(self.directory)
            self._segment_count -= 1
            self._sealed_bytes -= sealed.size
            self._sealed_records -= sealed.records
            return sealed.size

    def _write(self, frame: bytes) -> None:
        assert self._fd is not None
        view = memoryview(frame)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except BaseException as exc:
            try:
                os.ftruncate(self._fd, self._size)  # never leave half a record in front of the next one
            except OSError:
                self._failed = exc
            raise

    def flush(self) -> None:
        """Make every record appended so far durable now (fsync), whatever the policy."""
        with self._mutex:
            if self._fd is not None and self._unsynced:
                self._sync()

    def close(self) -> None:
        """Fsync what is pending (unless the policy is "never") and release the writer lock. Idempotent."""
        with self._mutex:
            if self._fd is not None:
                try:
                    if self._unsynced and self.fsync_policy != "never":
                        self._sync()
                finally:
                    os.close(self._fd)
                    self._fd = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the descriptor releases the flock
                self._lock_fd = None

    @property
    def closed(self) -> bool:
        return self._fd is None

    @property
    def next_record(self) -> int:
        """The number the next appended record will get."""
        return self._next_record

    @property
    def unsynced(self) -> int:
        """Records handed to the OS but not yet fsynced (an idle timer may call `flush` when non-zero)."""
        return self._unsynced

    def stats(self) -> dict[str, Any]:
        """Figures for the journal node's health document, without touching the disk."""
        return {
            "segments": self._segment_count,
            "records": self._sealed_records + self._current.records,
            "bytes": self._sealed_bytes + self._size,
            "next_record": self._next_record,
            "segment": segment_name(self._index),
            "fsync": self.fsync_policy,
            "fsyncs": self._fsyncs,
            "unsynced": self._unsynced,
        }

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _segment_records(
    path: Path, *, last: bool, skip_corrupt: bool, start: int = SEGMENT_HEADER.size
) -> Iterator[tuple[int, bytes]]:
    """(offset, payload) of one segment's records from `start`, read-only; see the module docstring
    for damage."""
    with path.open("rb") as handle:
        try:
            first = _read_header(handle, path.name)
        except JournalCorrupt as exc:
            if not skip_corrupt:
                raise
            log.warning("skipping journal segment %s: %s", path.name, exc)
            return
        if first is None:
            if last:
                return  # a segment whose creation a crash cut short: nothing in it yet
            raise JournalCorrupt(path.name, 0, "segment header cut short in a sealed segment")
        start = max(start, SEGMENT_HEADER.size)
        while True:
            scan = _RecordScan(handle, start)
            yield from scan
            if scan.bad is None:
                return
            offset, reason = scan.bad
            resume = scan.next_valid()
            if resume is None and last:
                log.debug(
                    "journal segment %s ends in a torn or in-progress record at byte %d", path.name, offset
                )
                return
            where = f"intact records follow at byte {resume}" if resume is not None else "in a sealed segment"
            if not skip_corrupt:
                raise JournalCorrupt(path.name, offset, f"{reason}; {where}")
            log.warning(
                "skipping corrupt journal data in %s at byte %d: %s; %s", path.name, offset, reason, where
            )
            if resume is None:
                return
            start = resume


def iter_records(
    directory: Path, *, since: str | None = None, skip_corrupt: bool = False
) -> Iterator[dict[str, Any]]:
    """Every record in journal order, read-only (safe while the writer appends; never modifies files).

    Stops quietly at a torn or in-progress record at the very end. `since` keeps records whose
    `received_at` is at or after that RFC 3339 time (records without a readable `received_at` are kept:
    they cannot be shown to be older). Damage elsewhere raises `JournalCorrupt` unless `skip_corrupt`,
    which logs it and goes on with the next intact record.
    """
    threshold = parse_time(since).timestamp() if since is not None else None
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no journal at {directory}")
    segments = list_segments(directory)
    for position, (_index, path) in enumerate(segments):
        last = position == len(segments) - 1
        if threshold is not None and not last:
            index = read_index(path)
            if index is not None and index.older_than(threshold):
                continue  # the whole segment is older: not even opened
        try:
            for offset, payload in _segment_records(path, last=last, skip_corrupt=skip_corrupt):
                record = _unpack(payload, path.name, offset)
                if threshold is not None:
                    when = received_time(record)
                    if when is not None and when < threshold:
                        continue
                yield record
        except FileNotFoundError:
            log.debug("journal segment %s was removed while reading", path.name)


def iter_numbered(directory: Path, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """(record number, record) from record `start` on, read-only, skipping whole segments before it.

    Segment headers give each segment's first record number, so a reader resuming at a position
    costs no more than the records after it. Damage is skipped (logged): numbers inside a damaged
    segment may then run short, until the next segment's header sets them right again.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no journal at {directory}")
    segments = []
    for _index, path in list_segments(directory):
        with path.open("rb") as handle:
            first = _read_header(handle, path.name)
        if first is not None:
            segments.append((first, path))
    for position, (first, path) in enumerate(segments):
        if position + 1 < len(segments) and segments[position + 1][0] <= start:
            continue
        try:
            records = _segment_records(path, last=position == len(segments) - 1, skip_corrupt=True)
            for number, (offset, payload) in enumerate(records, start=first):
                if number >= start:
                    yield number, _unpack(payload, path.name, offset)
        except FileNotFoundError:
            log.debug("journal segment %s was removed while reading", path.name)


def read_from(directory: Path, start: Position | None = None) -> Generator[Entry]:
    """Every record from `start` (None: the oldest) on, with where it starts and ends, read-only.

    Same damage rules as `iter_records` (a torn or in-progress tail ends it quietly). Only segments
    from `start.segment` on are looked at, without listing the directory, so an incremental reader
    pays for what is new, not for the number of segments.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no journal at {directory}")
    if start is None:
        listed = list_segments(directory)
        if not listed:
            return
        start = Position(listed[0][0], SEGMENT_HEADER.size)
    number, offset = start.segment, start.offset
    while True:
        path = directory / segment_name(number)
        following = _following(directory, number)
        for at, payload in _segment_records(path, last=following is None, skip_corrupt=False, start=offset):
            yield Entry(
                Position(number, at),
                Position(number, at + RECORD_HEADER.size + len(payload)),
                _unpack(payload, path.name, at),
            )
        if following is None:
            return
        number, offset = following, SEGMENT_HEADER.size


def _following(directory: Path, number: int) -> int | None:
    """The segment after `number`, or None when it is the last: two stats in the usual cases.

    The current segment has no sidecar yet; a sealed one without a next number sits before a gap
    retention left, which only a listing can jump.
    """
    if (directory / segment_name(number + 1)).exists():
        return number + 1
    if not index_path(directory / segment_name(number)).exists():
        return None
    later = [n for n, _ in list_segments(directory) if n > number]
    return later[0] if later else None


def build_index(path: Path, *, last: bool = False) -> SegmentIndex:
    """The time index of a segment from its records (`last`: the current one, whose tail may be in
    progress); raises `JournalCorrupt` on damage."""
    with path.open("rb") as handle:
        first = _read_header(handle, path.name)
        if first is None:
            raise JournalCorrupt(path.name, 0, "segment header cut short in a sealed segment")
        index = SegmentIndex(os.fstat(handle.fileno()).st_size, first)
    for offset, payload in _segment_records(path, last=last, skip_corrupt=False):
        index.add(_payload_time(payload))
        index.size = offset + RECORD_HEADER.size + len(payload)
    return index


class RecordReader:
    """Reads single records by position (the video index's refs), keeping segment files open.

    A removed segment raises FileNotFoundError; a record that fails its checksum, JournalCorrupt.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._files: dict[int, BinaryIO] = {}

    def header(self, position: Position) -> bytes:
        """The 8 header bytes (length, crc) of the record at `position`; fewer if the file is shorter."""
        handle = self._file(position.segment)
        return os.pread(handle.fileno(), RECORD_HEADER.size, position.offset)

    def read(self, position: Position) -> dict[str, Any]:
        handle = self._file(position.segment)
        name = segment_name(position.segment)
        head = os.pread(handle.fileno(), RECORD_HEADER.size, position.offset)
        if len(head) < RECORD_HEADER.size:
            raise JournalCorrupt(name, position.offset, "no record at this position")
        length, crc = RECORD_HEADER.unpack(head)
        payload = os.pread(handle.fileno(), length, position.offset + RECORD_HEADER.size)
        if not 0 < length <= MAX_RECORD_BYTES or _record_crc(length, payload) != crc:
            raise JournalCorrupt(name, position.offset, "no intact record at this position")
        return _unpack(payload, name, position.offset)

    def _file(self, segment: int) -> BinaryIO:
        handle = self._files.get(segment)
        if handle is None:
            handle = self._files[segment] = (self.directory / segment_name(segment)).open("rb")
        return handle

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def journal_stats(directory: Path) -> dict[str, Any]:
    """Segments, records and bytes of a journal directory, for health and `vv status` (read-only).

    Reads the sidecars of sealed segments and walks only the others (the last one), so it stays
    cheap on a long journal.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return {"segments": 0, "records": 0, "bytes": 0}
    segments = list_segments(directory)
    if not segments:
        return {"segments": 0, "records": 0, "bytes": 0}
    total = sum(path.stat().st_size for _, path in segments)
    records = 0
    for position, (_index, path) in enumerate(segments):
        index = read_index(path) if position < len(segments) - 1 else None
        if index is not None:
            records += index.records
            continue
        with path.open("rb") as handle:
            if _read_header(handle, path.name) is not None:
                records += sum(1 for _ in _RecordScan(handle, SEGMENT_HEADER.size))
    return {"segments": len(segments), "records": records, "bytes": total}
