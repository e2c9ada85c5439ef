"""The console's store: one small interface (`ConsoleStore`) and its SQLite (WAL) implementation.

The interface speaks in rows (dataclasses below) and plain values, never in SQLite objects, so the
PostgreSQL implementation (store_pg.py) slots in behind it: the SQL here is plain (upserts are
`INSERT ... ON CONFLICT ... DO UPDATE`, which both databases take), JSON is kept as text, times as
Unix seconds. Only the connection, the placeholders and the DDL differ: `SqlStore` holds the SQL
over any connection whose `execute(sql, params)` takes SQLite's placeholders and yields rows that
`dict()` accepts.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bus.store import Transactions

SCHEMA_VERSION = 1


@dataclass
class DeviceState:
    """One device as the console sees it."""

    device: str
    link: str = (
        "unknown"  # up | down | unknown (no bridge state heard: a device on the central broker itself)
    )
    link_changed: float | None = None  # when `link` last changed (raw, not debounced)
    link_incident: bool = False  # down longer than the debounce: a console alert is firing
    last_seen: float | None = None  # last message of any kind from the device
    version: str = ""
    disk: dict[str, Any] = field(default_factory=dict)  # the disk node's health details
    chain_seq: int | None = None  # the head of its LogLine chain as witnessed
    chain_hash: str | None = None
    chain_base: int | None = None  # first LogLine seq witnessed (a device enrolled mid-chain)
    chain_verified: bool | None = None  # the head's signature checked against the registry
    stale: bool = False
    health_at: float | None = None  # newest health beat (by the document's time for a retained one)
    health_interval_s: float | None = None  # the longest interval its online nodes report
    chain_time: float | None = None  # the head LogLine's created_at (the device's clock)


@dataclass
class NodeHealth:
    device: str
    node: str
    status: str
    time: str
    seen: float
    interval_s: float | None
    version: str
    document: dict[str, Any]


@dataclass
class AlertState:
    """An alert folded by (device, dedup_key)."""

    device: str
    dedup_key: str
    alert_id: str
    severity: str
    source_component: str
    title: str
    details: str
    status: str  # firing | resolved
    count: int
    first_seen: float
    last_seen: float
    changed: float  # when the status last changed
    event_time: str  # the alert's own timestamp of that change (later ones win, replays do not)
    acked_by: str | None = None
    acked_at: float | None = None
    document: dict[str, Any] = field(default_factory=dict)


@dataclass
class HistoryEntry:
    at: float
    device: str
    kind: str  # alert | device
    key: str  # the alert's dedup_key; "" for device changes
    severity: str
    title: str
    change: str  # firing, resolved, refired, acked, link down, link up, stale, fresh, ...
    detail: str = ""


@dataclass
class ChainEntry:
    device: str
    seq: int
    hash: str
    prev: str
    video_id: str
    key_id: str
    verified: (
        bool | None
    )  # None: the LogLine itself did not come with the event, or the device is not enrolled
    reason: str
    received: float
    event_id: str


@dataclass
class Gap:
    """Missing seqs first..last of one stream: a producer's events (source, type, epoch), or a chain
    (source "chain", epoch 0)."""

    device: str
    source: str
    type: str
    epoch: int
    first: int
    last: int
    opened: float
    requested: float | None = None
    given_up: bool = False


@dataclass
class Action:
    """An operator's (or the console's own) command, recorded with its author; sent by the service."""

    id: int
    at: float
    author: str
    kind: str  # the command's event type, e.g. cmd.alerter.ack
    device: str
    args: dict[str, Any]
    until: str
    comment: str = ""
    sent_at: float | None = None
    event_id: str | None = None


class StoreError(RuntimeError):
    """The store cannot be opened (a database unreachable, a driver missing); the message says why."""


@dataclass(frozen=True)
class Change:
    """What a committed write changed, for live views: a device, an alert, or a new LogLine (`data`:
    what a page shows without a store read). Replicas tell each other through `publish`/`watch`."""

    kind: str  # device | alert | logline
    device: str
    key: str = ""  # the alert's dedup_key, the LogLine's seq
    data: Mapping[str, Any] = field(default_factory=dict)


class ConsoleStore(Protocol):
    """What the fold, the service and the queries need; every call is one statement or a few."""

    def transaction(self) -> AbstractContextManager[None]: ...
    def lock(self, *keys: str) -> None: ...
    def claim_sender(self) -> bool: ...
    def publish(self, changes: Sequence[Change]) -> None: ...
    def watch(self, callback: Callable[[Change], None]) -> Callable[[], None]: ...
    def meta(self, key: str) -> int | None: ...
    def set_meta(self, key: str, value: int) -> None: ...
    def seen(self, event_id: str) -> bool: ...
    def mark_seen(self, event_id: str, at: float) -> bool: ...
    def device(self, device: str) -> DeviceState | None: ...
    def devices(self) -> list[DeviceState]: ...
    def devices_due(
        self, down_before: float, now: float, stale_factor: float, default_interval_s: float
    ) -> list[str]: ...
    def put_device(self, state: DeviceState) -> None: ...
    def health(self, device: str | None = None) -> list[NodeHealth]: ...
    def health_intervals(self, device: str) -> list[float | None]: ...
    def put_health(self, health: NodeHealth) -> None: ...
    def alert(self, device: str, dedup_key: str) -> AlertState | None: ...
    def alerts(self, device: str | None = None, status: str | None = None) -> list[AlertState]: ...
    def put_alert(self, alert: AlertState) -> None: ...
    def add_history(self, entry: HistoryEntry) -> None: ...
    def history(self, device: str | None = None, since: float = 0.0) -> list[HistoryEntry]: ...
    def chain_at(self, device: str, seq: int) -> list[ChainEntry]: ...
    def add_chain(self, entry: ChainEntry) -> None: ...
    def producer_seq(self, device: str, source: str, type: str, epoch: int) -> int | None: ...
    def set_producer_seq(self, device: str, source: str, type: str, epoch: int, seq: int) -> None: ...
    def gaps(self) -> list[Gap]: ...
    def put_gap(self, gap: Gap) -> None: ...
    def delete_gap(self, gap: Gap) -> None: ...
    def add_action(
        self, at: float, author: str, kind: str, device: str, args: dict[str, Any], until: str, comment: str
    ) -> int: ...
    def actions(self, pending: bool = False) -> list[Action]: ...
    def mark_sent(self, action_id: int, at: float, event_id: str) -> None: ...
    def prune(self, before: float) -> int: ...
    def close(self) -> None: ...


_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
  device TEXT PRIMARY KEY, link TEXT NOT NULL, link_changed REAL, link_incident INTEGER NOT NULL,
  last_seen REAL, version TEXT NOT NULL, disk TEXT NOT NULL, chain_seq INTEGER, chain_hash TEXT,
  chain_base INTEGER, chain_verified INTEGER, stale INTEGER NOT NULL, health_at REAL, health_interval_s REAL,
  chain_time REAL);
CREATE TABLE IF NOT EXISTS node_health (
  device TEXT NOT NULL, node TEXT NOT NULL, status TEXT NOT NULL, time TEXT NOT NULL, seen REAL NOT NULL,
  interval_s REAL, version TEXT NOT NULL, document TEXT NOT NULL, PRIMARY KEY (device, node));
CREATE TABLE IF NOT EXISTS alerts (
  device TEXT NOT NULL, dedup_key TEXT NOT NULL, alert_id TEXT NOT NULL, severity TEXT NOT NULL,
  source_component TEXT NOT NULL, title TEXT NOT NULL, details TEXT NOT NULL, status TEXT NOT NULL,
  count INTEGER NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL, changed REAL NOT NULL,
  event_time TEXT NOT NULL, acked_by TEXT, acked_at REAL, document TEXT NOT NULL,
  PRIMARY KEY (device, dedup_key));
CREATE TABLE IF NOT EXISTS history (
  id INTEGER PRIMARY KEY, at REAL NOT NULL, device TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,
  severity TEXT NOT NULL, title TEXT NOT NULL, change TEXT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS history_at ON history (at);
CREATE TABLE IF NOT EXISTS chain (
  device TEXT NOT NULL, seq INTEGER NOT NULL, hash TEXT NOT NULL, prev TEXT NOT NULL, video_id TEXT NOT NULL,
  key_id TEXT NOT NULL, verified INTEGER, reason TEXT NOT NULL, received REAL NOT NULL, event_id TEXT NOT NULL,
  PRIMARY KEY (device, seq, hash));
CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS seen_at ON seen (at);
CREATE TABLE IF NOT EXISTS producers (
  device TEXT NOT NULL, source TEXT NOT NULL, type TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
  PRIMARY KEY (device, source, type, epoch));
CREATE TABLE IF NOT EXISTS gaps (
  device TEXT NOT NULL, source TEXT NOT NULL, type TEXT NOT NULL, epoch INTEGER NOT NULL, first INTEGER NOT NULL,
  last INTEGER NOT NULL, opened REAL NOT NULL, requested REAL, given_up INTEGER NOT NULL,
  PRIMARY KEY (device, source, type, epoch, first));
CREATE TABLE IF NOT EXISTS actions (
  id INTEGER PRIMARY KEY, at REAL NOT NULL, author TEXT NOT NULL, kind TEXT NOT NULL, device TEXT NOT NULL,
  args TEXT NOT NULL, until TEXT NOT NULL, comment TEXT NOT NULL, sent_at REAL, event_id TEXT);
CREATE INDEX IF NOT EXISTS actions_pending ON actions (id) WHERE sent_at IS NULL;
"""

_JSON_FIELDS = {"disk", "document", "args"}
_BOOL_FIELDS = {"link_incident", "stale", "given_up", "chain_verified", "verified"}
Row = TypeVar("Row")


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _to_sql(row: Any) -> dict[str, Any]:
    # shallow, by field: dataclasses.asdict deep-copies every nested health document first, and
    # was half of the fold's time at 1,000 devices (the JSON fields are serialised right here)
    values = {name: getattr(row, name) for name in _field_names(type(row))}
    for name in _JSON_FIELDS & values.keys():
        values[name] = json.dumps(values[name], sort_keys=True)
    return values


def _from_sql(cls: type[Row], record: Any) -> Row:
    values = dict(record)
    for name in _JSON_FIELDS & values.keys():
        values[name] = json.loads(values[name])
    for name in _BOOL_FIELDS & values.keys():
        values[name] = None if values[name] is None else bool(values[name])
    return cls(**values)


def _upsert(table: str, row: Any, keys: Sequence[str]) -> tuple[str, dict[str, Any]]:
    values = _to_sql(row)
    columns = list(values)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    )
    return sql, values


class SqlStore:
    """`ConsoleStore`'s SQL over a connection in autocommit mode (transactions are explicit)."""

    BEGIN = "BEGIN IMMEDIATE"  # SQLite: take the write lock at once, so one writer folds at a time

    def __init__(self, db: Any, ddl: str) -> None:
        self._db = db
        self._transactions = Transactions(self._db.execute, self.BEGIN)
        with self.transaction():
            self.lock("schema")  # replicas starting together create the tables once
            for statement in _statements(ddl):
                self._db.execute(statement)
            if self.meta("schema_version") is None:
                self.set_meta("schema_version", SCHEMA_VERSION)

    def lock(self, *keys: str) -> None:
        """Serialise this transaction with other writers' holding any of `keys` (a device's name:
        its fold steps). SQLite's one write lock already does; a shared database overrides this."""

    def claim_sender(self) -> bool:
        """Whether this process sends the pending actions (one process per store does)."""
        return True

    def publish(self, changes: Sequence[Change]) -> None:
        """Tell other processes on this store what the current transaction changed, once it
        commits. One SQLite file has one console writing it: nobody to tell."""

    def watch(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        """Call `callback` with every change other processes publish; returns the unsubscribe.
        One SQLite file has one console writing it: it never calls."""
        return lambda: None

    def transaction(self) -> AbstractContextManager[None]:
        """One atomic unit; nested calls join the outer one."""
        return self._transactions.block()

    def _rows(self, cls: type[Row], sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        return [_from_sql(cls, record) for record in self._db.execute(sql, params)]

    def meta(self, key: str) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row["value"])

    def set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def seen(self, event_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM seen WHERE event_id = ?", (event_id,)).fetchone() is not None

    def mark_seen(self, event_id: str, at: float) -> bool:
        """Record an event as handled; False if it already was (the claim and the check are one
        statement, so two replicas handed the same event cannot both fold it)."""
        cursor = self._db.execute(
            "INSERT INTO seen (event_id, at) VALUES (?, ?) ON CONFLICT DO NOTHING", (event_id, at)
        )
        return bool(cursor.rowcount)

    def device(self, device: str) -> DeviceState | None:
        rows = self._rows(DeviceState, "SELECT * FROM devices WHERE device = ?", (device,))
        return rows[0] if rows else None

    def devices(self) -> list[DeviceState]:
        return self._rows(DeviceState, "SELECT * FROM devices ORDER BY device")

    def devices_due(
        self, down_before: float, now: float, stale_factor: float, default_interval_s: float
    ) -> list[str]:
        """The devices a tick may change: a link down since before `down_before` and no incident yet,
        or not stale and silent for `stale_factor` x their interval (the tick checks each again)."""
        rows = self._db.execute(
            "SELECT device FROM devices WHERE (link = 'down' AND NOT link_incident AND link_changed <= ?)"
            " OR (NOT stale AND health_at < ? - ? * COALESCE(health_interval_s, ?))",
            (down_before, now, stale_factor, default_interval_s),
        )
        return [row["device"] for row in rows]

    def put_device(self, state: DeviceState) -> None:
        self._db.execute(*_upsert("devices", state, ("device",)))

    def health(self, device: str | None = None) -> list[NodeHealth]:
        if device is None:
            return self._rows(NodeHealth, "SELECT * FROM node_health ORDER BY device, node")
        return self._rows(NodeHealth, "SELECT * FROM node_health WHERE device = ? ORDER BY node", (device,))

    def health_intervals(self, device: str) -> list[float | None]:
        """The stated health intervals of the device's nodes that are not offline (none: all are)."""
        rows = self._db.execute(
            "SELECT interval_s FROM node_health WHERE device = ? AND status <> 'offline'", (device,)
        )
        return [row["interval_s"] for row in rows]

    def put_health(self, health: NodeHealth) -> None:
        self._db.execute(*_upsert("node_health", health, ("device", "node")))

    def alert(self, device: str, dedup_key: str) -> AlertState | None:
        rows = self._rows(
            AlertState, "SELECT * FROM alerts WHERE device = ? AND dedup_key = ?", (device, dedup_key)
        )
        return rows[0] if rows else None

    def alerts(self, device: str | None = None, status: str | None = None) -> list[AlertState]:
        sql, params = "SELECT * FROM alerts WHERE 1 = 1", list[Any]()
        if device is not None:
            sql, params = sql + " AND device = ?", [*params, device]
        if status is not None:
            sql, params = sql + " AND status = ?", [*params, status]
        return self._rows(AlertState, sql + " ORDER BY last_seen DESC", params)

    def put_alert(self, alert: AlertState) -> None:
        self._db.execute(*_upsert("alerts", alert, ("device", "dedup_key")))

    def add_history(self, entry: HistoryEntry) -> None:
        values = _to_sql(entry)
        self._db.execute(
            f"INSERT INTO history ({', '.join(values)}) VALUES ({', '.join(':' + c for c in values)})", values
        )

    def history(self, device: str | None = None, since: float = 0.0) -> list[HistoryEntry]:
        columns = ", ".join(f.name for f in dataclasses.fields(HistoryEntry))
        sql, params = f"SELECT {columns} FROM history WHERE at >= ?", list[Any]([since])
        if device is not None:
            sql, params = sql + " AND device = ?", [*params, device]
        return self._rows(HistoryEntry, sql + " ORDER BY at, id", params)

    def chain_at(self, device: str, seq: int) -> list[ChainEntry]:
        return self._rows(
            ChainEntry, "SELECT * FROM chain WHERE device = ? AND seq = ? ORDER BY received", (device, seq)
        )

    def add_chain(self, entry: ChainEntry) -> None:
        values = _to_sql(entry)
        self._db.execute(
            f"INSERT INTO chain ({', '.join(values)}) VALUES ({', '.join(':' + c for c in values)})"
            " ON CONFLICT DO NOTHING",
            values,
        )

    def producer_seq(self, device: str, source: str, type: str, epoch: int) -> int | None:
        row = self._db.execute(
            "SELECT seq FROM producers WHERE device = ? AND source = ? AND type = ? AND epoch = ?",
            (device, source, type, epoch),
        ).fetchone()
        return None if row is None else int(row["seq"])

    def set_producer_seq(self, device: str, source: str, type: str, epoch: int, seq: int) -> None:
        self._db.execute(
            "INSERT INTO producers (device, source, type, epoch, seq) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (device, source, type, epoch) DO UPDATE SET seq = excluded.seq",
            (device, source, type, epoch, seq),
        )

    def gaps(self) -> list[Gap]:
        return self._rows(Gap, "SELECT * FROM gaps ORDER BY opened")

    def put_gap(self, gap: Gap) -> None:
        self._db.execute(*_upsert("gaps", gap, ("device", "source", "type", "epoch", "first")))

    def delete_gap(self, gap: Gap) -> None:
        self._db.execute(
            "DELETE FROM gaps WHERE device = ? AND source = ? AND type = ? AND epoch = ? AND first = ?",
            (gap.device, gap.source, gap.type, gap.epoch, gap.first),
        )

    def add_action(
        self, at: float, author: str, kind: str, device: str, args: dict[str, Any], until: str, comment: str
    ) -> int:
        row = self._db.execute(
            "INSERT INTO actions (at, author, kind, device, args, until, comment) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " RETURNING id",
            (at, author, kind, device, json.dumps(args, sort_keys=True), until, comment),
        ).fetchone()
        return int(row["id"])

    def actions(self, pending: bool = False) -> list[Action]:
        where = " WHERE sent_at IS NULL" if pending else ""
        return self._rows(Action, f"SELECT * FROM actions{where} ORDER BY id")

    def mark_sent(self, action_id: int, at: float, event_id: str) -> None:
        self._db.execute(
            "UPDATE actions SET sent_at = ?, event_id = ? WHERE id = ?", (at, event_id, action_id)
        )

    def prune(self, before: float) -> int:
        """Retention: history, seen ids and sent actions older than `before` go; state rows stay."""
        removed = 0
        with self.transaction():
            for sql in (
                "DELETE FROM history WHERE at < ?",
                "DELETE FROM seen WHERE at < ?",
                "DELETE FROM actions WHERE sent_at IS NOT NULL AND at < ?",
                "DELETE FROM alerts WHERE status = 'resolved' AND last_seen < ?",
            ):
                removed += self._db.execute(sql, (before,)).rowcount
        return removed

    def close(self) -> None:
        self._db.close()


class SqliteStore(SqlStore):
    """`ConsoleStore` in one SQLite file in WAL mode: the service writes, queries read beside it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        super().__init__(db, _DDL)
        if "chain_time" not in {row["name"] for row in db.execute("PRAGMA table_info(devices)")}:
            db.execute("ALTER TABLE devices ADD COLUMN chain_time REAL")  # a store from before it


def _statements(ddl: str) -> list[str]:
    return [statement.strip() for statement in ddl.split(";") if statement.strip()]
