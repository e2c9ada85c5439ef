"""A node's durable state in one SQLite file (WAL): outbox, seen event ids, epoch and seq, marks.

paho keeps unacknowledged publishes in memory only, so an event a node produced would be lost if
the node died before PUBACK. Here it is recorded first, in the same transaction that marks the
input event as seen. After the broker acknowledged it, the row is kept a while (`acked` set):
mosquitto loses messages still in flight to its clients when it is killed, PUBACKed or not, so
after a lost connection the node re-sends what was acknowledged shortly before it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEQ_BLOCK = 1000
SEEN_RETENTION_S = 14 * 24 * 3600  # longer than any broker session expiry: a redelivery is still recognised
SEEN_MAX = 1_000_000  # dedupe ids kept at most, whatever their age
PRUNE_INTERVAL_S = 3600.0


class Transactions:
    """BEGIN ... COMMIT (or ROLLBACK) around the outermost block; blocks nested in it join it, so a
    helper that writes atomically can be called inside a caller's transaction."""

    def __init__(self, execute: Callable[[str], object], begin: str = "BEGIN IMMEDIATE") -> None:
        self._execute = execute
        self._begin = begin
        self.depth = 0

    @contextmanager
    def block(self, on_rollback: Callable[[], None] | None = None) -> Iterator[None]:
        if self.depth:
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1
            return
        self._execute(self._begin)
        self.depth = 1
        try:
            yield
        except BaseException:
            self._execute("ROLLBACK")
            if on_rollback is not None:
                on_rollback()
            raise
        else:
            self._execute("COMMIT")
        finally:
            self.depth = 0


@dataclass(frozen=True, slots=True)
class OutboxRow:
    rowid: int
    event_id: str
    topic: str
    payload: bytes
    content_type: str
    retain: bool


class NodeStore:
    """Sent outbox rows are deleted on the broker's acknowledgement; dedupe ids are pruned by age and
    count at start and then every `prune_interval_s` by `claim`, so a node running for a year keeps
    a bounded store."""

    def __init__(
        self,
        path: Path,
        synchronous: str = "normal",
        *,
        seen_retention_s: float = SEEN_RETENTION_S,
        seen_max: int = SEEN_MAX,
        prune_interval_s: float = PRUNE_INTERVAL_S,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS outbox (
                rowid INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, topic TEXT NOT NULL,
                payload BLOB NOT NULL, content_type TEXT NOT NULL, retain INTEGER NOT NULL, created REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY, seen_at REAL NOT NULL) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS seen_by_time ON seen(seen_at);
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
            """
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "acked" not in columns:  # a store written before acknowledged rows were kept
            self._db.execute("ALTER TABLE outbox ADD COLUMN acked REAL")
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_by_acked ON outbox(acked)")
        self._transactions = Transactions(self._db.execute)
        self._seen_retention_s, self._seen_max = seen_retention_s, seen_max
        self._prune_interval_s = prune_interval_s
        self._next_prune = time.monotonic() + prune_interval_s
        # `seq` counts per stream (event type), so a consumer of one type sees a gap only when one of
        # its events was lost, never because the producer also raised alerts. Numbers are reserved in
        # blocks so a commit need not write them: after a restart the producer continues past the
        # whole reserved block (a new epoch, so consumers see no gap).
        self._seqs: dict[str, tuple[int, int]] = {}  # stream -> (last seq, reserved up to)

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def transaction(self) -> AbstractContextManager[None]:
        """Group writes atomically; nested use joins the outer transaction."""
        seqs_before = dict(self._seqs)

        def forget_seqs() -> None:
            self._seqs = seqs_before

        return self._transactions.block(on_rollback=forget_seqs)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inside a transaction: if the block raises, its writes are undone and the transaction goes on.

        One message of a batch that fails must leave nothing behind (its handler's rows, its events)
        without taking the other messages of the batch with it.
        """
        assert self._transactions.depth, "a savepoint needs an open transaction"
        seqs_before = dict(self._seqs)
        self._db.execute("SAVEPOINT message")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK TO message")
            self._db.execute("RELEASE message")
            self._seqs = seqs_before
            raise
        self._db.execute("RELEASE message")

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> sqlite3.Cursor:
        """For a node's own tables: inside a handler this joins the handler's savepoint, so a handler that
        fails leaves none of its writes (and none of its events)."""
        return self._db.execute(sql, parameters)

    def bump_epoch(self) -> int:
        """Every start is a new epoch, so consumers can tell a restart from a gap in `seq`."""
        with self.transaction():
            epoch = self._meta("epoch") + 1
            self._set_meta("epoch", epoch)
        return epoch

    def next_seq(self, stream: str, *, reserve: bool = True) -> int:
        """The next sequence number of `stream` (an event type); call inside a transaction (it may
        reserve a new block). `reserve=False` never writes (an event that cannot be persisted still
        gets a number; a restart is a new epoch, so numbers past the block are never reused in one)."""
        if stream not in self._seqs:
            reserved = self._meta(f"seq:{stream}")
            self._seqs[stream] = (reserved, reserved)
        seq, reserved = self._seqs[stream]
        seq += 1
        if reserve and seq > reserved:
            reserved = seq + SEQ_BLOCK - 1
            self._set_meta(f"seq:{stream}", reserved)
        self._seqs[stream] = (seq, reserved)
        return seq

    def add_outbox(
        self, event_id: str, topic: str, payload: bytes, content_type: str, retain: bool
    ) -> OutboxRow:
        cursor = self._db.execute(
            "INSERT INTO outbox(event_id, topic, payload, content_type, retain, created) VALUES (?,?,?,?,?,?)",
            (event_id, topic, payload, content_type, int(retain), time.time()),
        )
        assert cursor.lastrowid is not None
        return OutboxRow(cursor.lastrowid, event_id, topic, payload, content_type, retain)

    def mark_sent(self, rowids: list[int], keep_s: float) -> None:
        """Rows the broker acknowledged; those acknowledged more than `keep_s` ago are deleted."""
        if rowids:
            now = time.time()
            with self.transaction():
                self._db.executemany("UPDATE outbox SET acked=? WHERE rowid=?", [(now, r) for r in rowids])
                self._db.execute("DELETE FROM outbox WHERE acked < ?", (now - keep_s,))

    def _rows(self, where: str, *args: object) -> list[OutboxRow]:
        rows = self._db.execute(
            "SELECT rowid, event_id, topic, payload, content_type, retain FROM outbox "
            f"WHERE {where} ORDER BY rowid",
            args,
        ).fetchall()
        return [OutboxRow(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5])) for r in rows]

    def pending(self) -> list[OutboxRow]:
        """Rows not yet acknowledged by the broker, oldest first."""
        return self._rows("acked IS NULL")

    def sent_since(self, when: float) -> list[OutboxRow]:
        """Rows the broker acknowledged at or after `when` (a time.time()), oldest first."""
        return self._rows("acked >= ?", when)

    def outbox_depth(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox WHERE acked IS NULL").fetchone()[0])

    def mark(self, key: str) -> int | None:
        """A named position kept for the node (e.g. how far it caught up from the journal)."""
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (f"mark:{key}",)).fetchone()
        return int(row[0]) if row else None

    def set_mark(self, key: str, value: int) -> None:
        """Record a named position; inside a transaction it commits with the work that earned it."""
        self._set_meta(f"mark:{key}", value)

    def claim(self, event_id: str) -> bool:
        """Mark an event seen; False if it already was (one statement: the dedupe check and the mark)."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO seen(event_id, seen_at) VALUES (?, ?)", (event_id, time.time())
        )
        fresh = cursor.rowcount == 1
        if time.monotonic() >= self._next_prune:
            self.prune_seen()
        return fresh

    def unclaim(self, event_id: str) -> None:
        """Forget an event was seen: its handler failed transiently and it is to be handled again."""
        self._db.execute("DELETE FROM seen WHERE event_id=?", (event_id,))

    def prune_seen(self, older_than_s: float | None = None) -> int:
        """Forget dedupe ids older than the retention, then the oldest beyond the cap; returns how many."""
        keep_s = self._seen_retention_s if older_than_s is None else older_than_s
        with self.transaction():
            removed = self._db.execute("DELETE FROM seen WHERE seen_at < ?", (time.time() - keep_s,)).rowcount
            removed += self._db.execute(
                "DELETE FROM seen WHERE seen_at <= (SELECT seen_at FROM seen ORDER BY seen_at DESC LIMIT 1 OFFSET ?)",
                (self._seen_max,),
            ).rowcount
        self._next_prune = time.monotonic() + self._prune_interval_s
        return removed

    def close(self) -> None:
        self._db.close()
