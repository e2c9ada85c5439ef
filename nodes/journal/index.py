"""The video index: the journal folded once, kept under `state/`, brought up to date from its tail only.

Why: the monitor, the reconciler and `vv status` all need per-video state, and folding the whole
journal on every pass costs what the history costs. The index is one SQLite file
(`state/journal/videos.sqlite`, WAL) shared by every process that reads the journal:

- `videos`: a row per video: its stage, whether it is still in the pipeline (`open`), first and last
  event time, when its current stage began, and `refs`, the journal position of each of its events.
  A video's state is a pure function of its events, so it is rebuilt exactly by reading those few
  records by position, never by a scan: `vv status VIDEO` of a year-old video costs a handful of reads.
- `meta`: the journal position folded up to, and the header of the last record folded, so a journal
  that lost its tail (power loss under a lazy fsync policy) or was replaced is noticed and the index
  rebuilt rather than trusted.
- `counts`: videos per stage, for the bounded summary view.

Memory stays bounded: a process holds the states of open videos only (what the monitor and the
reconciler judge); a video leaves memory once it reaches a final stage and comes back from its refs
if an event about it arrives later (so duplicates are still recognised). A refresh folds the tail in
write transactions of at most `BATCH` records that also move the position, so the rows and the
position always agree, a crash loses nothing, and processes refreshing at once never fold a record
twice (SQLite serialises them). Per-day snapshot files were the alternative: a video's events cross
day boundaries and `vv status VIDEO` would not know which day to open; a primary key answers that.

Retention may remove segments of videos in a final stage: their rows stay. A state rebuilt with some
of its events gone is seeded from the row (stage and times), and `missing` names the removed segments.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bus.config import VVPaths
from nodes.journal.fold import STAGE_OF_TYPE, TERMINAL, Fold, VideoState, subject_of
from nodes.journal.store import (
    JournalError,
    Position,
    RecordReader,
    read_from,
    segment_name,
)

log = logging.getLogger("vv.journal.index")

SCHEMA_VERSION = 1
BATCH = 20_000  # records folded per write transaction: the lock is released in between while catching up
REJECTED_SAMPLE = 10  # reasons kept for `vv status`; the count covers them all
_REF = struct.Struct("<II")  # segment number, byte offset (the writer caps segments below 4 GiB)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS videos (
    id TEXT PRIMARY KEY, stage TEXT, open INTEGER NOT NULL, first_time REAL, last_time REAL,
    stage_since REAL, refs BLOB NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS videos_open ON videos(open) WHERE open = 1;
CREATE INDEX IF NOT EXISTS videos_recent ON videos(last_time);
CREATE TABLE IF NOT EXISTS counts (stage TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""
_COLUMNS = "id, stage, first_time, last_time, stage_since, refs"


def index_path(paths: VVPaths) -> Path:
    return paths.state / "journal" / "videos.sqlite"


def pack_refs(positions: list[Position]) -> bytes:
    return b"".join(_REF.pack(p.segment, p.offset) for p in positions)


def unpack_refs(refs: bytes) -> list[Position]:
    return [Position(segment, offset) for segment, offset in _REF.iter_unpack(refs)]


def is_open(state: VideoState) -> bool:
    """Still in the pipeline: what the monitor and the reconciler judge, and what retention keeps."""
    return state.stage is not None and state.stage not in TERMINAL


def _epoch(when: datetime | None) -> float | None:
    return when.timestamp() if when is not None else None


def _time(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


@dataclass
class VideoRecord:
    """A video's state as the journal tells it, and the removed segments some of its events were in."""

    state: VideoState
    missing: list[str] = field(default_factory=list)


class VideoIndex:
    """The shared, incrementally folded index of a journal; thread-safe within a process."""

    def __init__(self, journal: Path, path: Path) -> None:
        self.journal = Path(journal)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._fold = Fold()  # the open videos' states, kept between refreshes
        self._refs: dict[str, bytes] = {}  # the refs each state in `_fold` was built from
        self._known: Position | None = None  # the position after this process's last refresh
        with self._transaction():  # checked under the write lock: processes starting together agree
            if self._meta("version") != SCHEMA_VERSION:
                self._reset()

    # ----------------------------------------------------------------- storage helpers
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            self._forget()  # what was folded in memory was not committed
            raise
        self._db.execute("COMMIT")

    def _meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, **values: Any) -> None:
        self._db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", values.items())

    def _position(self) -> Position | None:
        segment, offset = self._meta("segment"), self._meta("offset")
        return Position(int(segment), int(offset)) if segment is not None else None

    def _reset(self) -> None:
        """Start over from the oldest segment (first use, new schema, or a journal that changed under us)."""
        self._db.execute("DELETE FROM videos")
        self._db.execute("DELETE FROM counts")
        self._db.execute("DELETE FROM meta")
        self._set_meta(version=SCHEMA_VERSION, rejected=0, rejected_sample="[]")
        self._forget()

    def _forget(self) -> None:
        self._fold = Fold()
        self._refs.clear()
        self._known = None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ----------------------------------------------------------------- folding the tail
    def refresh(self, limit: int | None = None) -> int:
        """Fold what the journal gained since the index last saw it (by any process); returns records read.

        `limit` stops after about that many records (whole batches), for a caller that must stay quick.
        Raises FileNotFoundError without a journal and `JournalError` for damage (nothing is committed
        past it).
        """
        if not self.journal.is_dir():
            raise FileNotFoundError(f"no journal at {self.journal}")
        total = 0
        with self._lock:
            while True:
                with self._transaction(), RecordReader(self.journal) as reader:
                    position = self._checked_position(reader)
                    if position != self._known:
                        self._forget()  # another process folded some: cached states may be behind
                    count, self._known = self._fold_batch(reader, position)
                total += count
                if count < BATCH or (limit is not None and total >= limit):
                    return total

    def _checked_position(self, reader: RecordReader) -> Position | None:
        """The committed position, or None (after a reset) if the journal no longer holds what was folded."""
        position = self._position()
        if position is None:
            return None
        problem = ""
        try:
            size = (self.journal / segment_name(position.segment)).stat().st_size
        except FileNotFoundError:
            problem = f"segment {segment_name(position.segment)} is gone"
        else:
            last = Position(position.segment, int(self._meta("check_offset")))
            if size < position.offset:
                problem = f"segment {segment_name(position.segment)} is shorter than what was folded"
            elif reader.header(last) != self._meta("check_header"):
                problem = "the last record folded is not there any more"
        if not problem:
            return position
        log.warning("journal %s changed under the video index (%s): rebuilding it", self.journal, problem)
        self._reset()
        return None

    def _fold_batch(self, reader: RecordReader, start: Position | None) -> tuple[int, Position | None]:
        """Fold up to BATCH records from `start` into rows; returns (records read, new position)."""
        pending: dict[str, list[tuple[Position, Any]]] = {}
        count, end, last = 0, start, None
        with contextlib.closing(read_from(self.journal, start)) as entries:
            for entry in entries:
                event = entry.record.get("event")
                subject = subject_of(event)
                if subject is None:
                    self._fold.add(event)  # not about a video: only its rejection, if any, matters
                else:
                    pending.setdefault(subject, []).append((entry.position, event))
                count, end, last = count + 1, entry.end, entry.position
                if count >= BATCH:
                    break
        counts: dict[str, int] = {}
        for subject, events in pending.items():
            self._apply(reader, subject, events, counts)
        self._db.executemany(
            "INSERT INTO counts(stage, n) VALUES (?, ?) ON CONFLICT(stage) DO UPDATE SET n = n + excluded.n",
            [(stage, n) for stage, n in counts.items() if n],
        )
        self._note_rejected()
        if end is not None and last is not None:  # the last record folded ends where the position is
            self._set_meta(
                segment=end.segment,
                offset=end.offset,
                check_offset=last.offset,
                check_header=reader.header(last),
            )
        return count, end

    def _apply(
        self, reader: RecordReader, subject: str, events: list[tuple[Position, Any]], counts: dict[str, int]
    ) -> None:
        """Fold one video's new events and write its row; the state stays in memory only while open."""
        cached = self._fold.states.get(subject)
        before: str | None  # its stage in `counts` before this batch (None: a new video)
        if cached is not None:
            refs, before = self._refs[subject], cached.stage or "unknown"
        else:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM videos WHERE id=?", (subject,)).fetchone()
            refs, before = (row[5], row[1] or "unknown") if row else (b"", None)
            if row:
                self._rebuild(self._fold, reader, row)
        added = [position for position, event in events if self._fold.add(event) is not None]
        state = self._fold.states.get(subject)
        if added and state is not None:
            refs += pack_refs(added)
            after = state.stage or "unknown"
            if before is not None:
                counts[before] = counts.get(before, 0) - 1
            counts[after] = counts.get(after, 0) + 1
            self._db.execute(
                f"INSERT OR REPLACE INTO videos({_COLUMNS}, open) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    subject,
                    state.stage,
                    _epoch(state.first_event_time),
                    _epoch(state.last_event_time),
                    _epoch(state.stage_since),
                    refs,
                    int(is_open(state)),
                ),
            )
        if state is not None and is_open(state):
            self._refs[subject] = refs
        else:
            self._fold.states.pop(subject, None)
            self._refs.pop(subject, None)

    def _note_rejected(self) -> None:
        if not self._fold.rejected:
            return
        sample = json.loads(self._meta("rejected_sample") or "[]")
        sample = (sample + self._fold.rejected)[:REJECTED_SAMPLE]
        self._set_meta(
            rejected=int(self._meta("rejected") or 0) + len(self._fold.rejected),
            rejected_sample=json.dumps(sample),
        )
        self._fold.rejected.clear()

    @staticmethod
    def _rebuild(fold: Fold, reader: RecordReader, row: tuple[Any, ...]) -> list[str]:
        """Fold a video's events back into `fold` from its refs; returns the removed segments' names."""
        video_id, stage, first, last, since, refs = row
        fold.states.pop(video_id, None)
        events, missing = [], set()
        for position in unpack_refs(refs):
            try:
                events.append(reader.read(position).get("event"))
            except FileNotFoundError:
                missing.add(position.segment)
        if missing or not events:  # what retention removed survives as the row's stage and times
            seeded = fold.states[video_id] = VideoState(video_id=video_id, stage=stage)
            seeded.first_event_time, seeded.last_event_time = _time(first), _time(last)
            started = _time(since)
            if stage is not None and started is not None:
                seeded.stages[stage] = seeded.stage_latest[stage] = started
        for event in events:
            fold.add(event)
        return [segment_name(segment) for segment in sorted(missing)]

    # ----------------------------------------------------------------- questions
    def open_states(self) -> dict[str, VideoState]:
        """Every video still in the pipeline, by id (as of the last refresh)."""
        with self._lock, RecordReader(self.journal) as reader:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM videos WHERE open = 1").fetchall()
            wanted = {row[0] for row in rows}
            for video_id in [v for v in self._fold.states if v not in wanted]:
                del self._fold.states[video_id]  # closed by another process's refresh
                self._refs.pop(video_id, None)
            for row in rows:
                if self._refs.get(row[0]) != row[5] or row[0] not in self._fold.states:
                    self._rebuild(self._fold, reader, row)
                    self._refs[row[0]] = row[5]
            return {row[0]: self._fold.states[row[0]] for row in rows}

    def find(self, prefix: str, limit: int = 2) -> list[str]:
        """Video ids starting with `prefix` (at most `limit`), by a range on the primary key."""
        if not prefix:
            return []
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM videos WHERE id >= ? AND id < ? ORDER BY id LIMIT ?", (prefix, upper, limit)
            ).fetchall()
        return [row[0] for row in rows]

    def record(self, video_id: str) -> VideoRecord | None:
        """One video's full state from its events, however old; None if the journal never named it."""
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM videos WHERE id=?", (video_id,)).fetchone()
        return self._records([row])[0] if row else None

    def oldest_open(self, limit: int) -> list[VideoRecord]:
        """The `limit` videos that entered the pipeline first and are still in it."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM videos WHERE open = 1 ORDER BY first_time LIMIT ?", (limit,)
            ).fetchall()
        return self._records(rows)

    def recent(self, limit: int) -> list[VideoRecord]:
        """The `limit` videos with the latest events, newest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM videos ORDER BY last_time DESC LIMIT ?", (limit,)
            ).fetchall()
        return self._records(rows)

    def _records(self, rows: list[tuple[Any, ...]]) -> list[VideoRecord]:
        """States rebuilt in a fold of their own, so a query never grows the cached open set."""
        fold = Fold()
        with RecordReader(self.journal) as reader:
            missing = [self._rebuild(fold, reader, row) for row in rows]
        return [VideoRecord(fold.states[row[0]], gone) for row, gone in zip(rows, missing, strict=True)]

    def events(self, video_id: str) -> list[dict[str, Any]]:
        """The events folded into a video, in journal order (those in removed segments left out)."""
        with self._lock:
            row = self._db.execute("SELECT refs FROM videos WHERE id=?", (video_id,)).fetchone()
        found: list[dict[str, Any]] = []
        with RecordReader(self.journal) as reader:
            for position in unpack_refs(row[0] if row else b""):
                with contextlib.suppress(FileNotFoundError):
                    event = reader.read(position).get("event")
                    if isinstance(event, dict):
                        found.append(event)
        return found

    def counts(self) -> dict[str, int]:
        """Videos per stage ("unknown": only alerts name them so far)."""
        with self._lock:
            return {stage: n for stage, n in self._db.execute("SELECT stage, n FROM counts") if n}

    def rejected(self) -> tuple[int, list[str]]:
        """How many events could not be folded, and the first few reasons."""
        with self._lock:
            return int(self._meta("rejected") or 0), json.loads(self._meta("rejected_sample") or "[]")

    def folded_up_to(self) -> Position | None:
        """The position the index has folded up to: segments below it are folded whole."""
        with self._lock:
            return self._position()

    def pinned_segments(self) -> set[int]:
        """Segments holding an event of a video still in the pipeline: retention must keep them."""
        with self._lock:
            rows = self._db.execute("SELECT refs FROM videos WHERE open = 1").fetchall()
        return {position.segment for (refs,) in rows for position in unpack_refs(refs)}


_shared: dict[Path, VideoIndex] = {}
_shared_lock = threading.Lock()


def open_index(paths: VVPaths) -> VideoIndex:
    """The process's index of the device's journal (one connection and cache per process)."""
    path = index_path(paths)
    with _shared_lock:
        index = _shared.get(path)
        if index is None:
            index = _shared[path] = VideoIndex(paths.journal, path)
        return index


@contextlib.contextmanager
def index_errors(paths: VVPaths) -> Iterator[None]:
    """Nodes treat an unusable index like an unreadable journal (degraded, retried next pass)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise JournalError(f"video index {index_path(paths)}: {exc}") from exc


def open_videos(paths: VVPaths) -> dict[str, VideoState]:
    """Videos still in the pipeline, after folding what the journal gained: the monitor's and the
    reconciler's view, at a cost that follows the open videos and the new records, not the history."""
    with index_errors(paths):
        index = open_index(paths)
        index.refresh()
        return index.open_states()


def last_events(paths: VVPaths, video_ids: Iterable[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """The last event of each pipeline type folded into each video, keyed (video id, type)."""
    with index_errors(paths):
        index = open_index(paths)
        return {
            (video_id, event["type"]): event
            for video_id in video_ids
            for event in index.events(video_id)
            if event.get("type") in STAGE_OF_TYPE
        }
