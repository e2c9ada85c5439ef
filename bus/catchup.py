"""Catching up from the journal: a consumer gets every event of its types, even those it never heard.

A broker queues events only for sessions that exist, and mosquitto killed outright loses what was
in flight to connected clients. The journal records everything, so on every connection a node asks
it (`cmd.journal.replay`) for the events of its `@on` types recorded since the position it last
caught up to (`after`, kept in its store), never older than `bus.catchup_max_age_s` (`since`).
The journal answers in pages on the node's own topic (`vv/<device>/catchup/<node>`); each replayed
envelope goes through the node's ordinary receive path, so validation and dedupe by event id make the
overlap with live delivery harmless. The position advances only once every page of the current
answer arrived, in the same transaction as the events handled from the last one.

Workers of a shared group must not all handle a replayed event: besides each worker's own dedupe,
the group claims each event once (`GroupClaims`), so whichever worker takes an event first does it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bus import codec, schemas
from bus.backoff import Backoff
from bus.config import Settings
from bus.envelope import Event, rfc3339, utc_now
from bus.store import SEEN_RETENTION_S, NodeStore
from bus.topics import is_command, topic_for
from bus.transport import Message

log = logging.getLogger("vv.catchup")

MARK = "journal"  # the store mark: journal position this node has caught up to
RETRY_MIN_S = 1.0


class GroupClaims:
    """Which worker of a shared group took an event: one SQLite file per group, shared by its workers.

    A claim commits at once (not with the worker's handler transaction, which may last a whole
    scan), so the other workers see it immediately. A worker that crashed mid-event gets the
    redelivery and takes its own claim again; every other worker skips the event.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS claims (event_id TEXT PRIMARY KEY, owner TEXT NOT NULL,"
            " claimed_at REAL NOT NULL) WITHOUT ROWID"
        )
        self._db.execute("DELETE FROM claims WHERE claimed_at < ?", (time.time() - SEEN_RETENTION_S,))

    def take(self, event_id: str, owner: str) -> bool:
        """True if `owner` may handle the event: it claimed it now, or had claimed it before."""
        self._db.execute(
            "INSERT OR IGNORE INTO claims(event_id, owner, claimed_at) VALUES (?, ?, ?)",
            (event_id, owner, time.time()),
        )
        row = self._db.execute("SELECT owner FROM claims WHERE event_id=?", (event_id,)).fetchone()
        return bool(row and row[0] == owner)

    def close(self) -> None:
        self._db.close()


def replayable(patterns: Sequence[str]) -> list[str]:
    """The `@on` patterns worth catching up on: everything but commands."""
    return [p for p in patterns if not is_command(p)]


def replayed_message(device: str, envelope: dict[str, Any]) -> Message:
    """A recorded envelope as the message it arrived in, for the node's ordinary receive path.

    QoS 0: there is nothing to acknowledge to the broker (the page it came in is acknowledged).
    """
    content_type = str(envelope.get("datacontenttype", ""))
    topic = topic_for(str(envelope.get("device", device)), str(envelope.get("type", "")))
    payload = codec.encode(envelope, content_type)
    return Message(topic, payload, content_type, qos=0)


class Catchup:
    """The requesting side, one per node: `run()` once per connected session, `on_page()` per page."""

    def __init__(
        self,
        settings: Settings,
        *,
        reply_topic: str,
        patterns: Sequence[str],
        group: str,
        store: Callable[[], NodeStore],
        request: Callable[[dict[str, Any]], Awaitable[Event]],
        replay: Callable[[Message], Awaitable[None]],
        busy: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.reply_topic = reply_topic
        self.patterns = list(patterns)
        self.group = group
        self._store, self._request, self._replay, self._busy = store, request, replay, busy
        self._current: str | None = None  # id of the request being answered
        self._expected_page = 0
        self._complete = False
        self._progress = asyncio.Event()
        self.state = "idle"
        self.unanswered = 0
        self.waiting_since: str | None = None
        self.replayed = 0
        self.last_completed: str | None = None

    def status(self) -> dict[str, Any]:
        """For the health document: whether the node is caught up, or why not."""
        doc: dict[str, Any] = {
            "state": self.state,
            "position": self._store().mark(MARK),
            "replayed": self.replayed,
            "last_completed": self.last_completed,
        }
        if self.unanswered:
            doc["unanswered"] = self.unanswered
            doc["waiting_since"] = self.waiting_since
            doc["reason"] = (
                f"the journal has not answered {self.unanswered} request(s) since {self.waiting_since}"
            )
        return doc

    def request_data(self, now: datetime) -> dict[str, Any]:
        """The `cmd.journal.replay` data: from the last position caught up to, never older than the
        age bound; `until` lets a journal that was down skip requests nobody waits for any more."""
        bus = self.settings.bus
        args: dict[str, Any] = {
            "reply_to": self.reply_topic,
            "types": self.patterns,
            "since": rfc3339(now - timedelta(seconds=bus.catchup_max_age_s)),
        }
        position = self._store().mark(MARK)
        if position is not None:
            args["after"] = position
        if self.group:
            args["group"] = self.group
        until = rfc3339(now + timedelta(seconds=bus.catchup_timeout_s))
        return {"args": args, "reason": "catch up after connecting", "until": until}

    async def run(self) -> None:
        """Ask until the journal has answered completely; a down journal is asked again with backoff."""
        backoff = Backoff(RETRY_MIN_S, self.settings.bus.catchup_retry_max_s)
        self._complete = False
        while not self._complete:  # a late answer may complete it during the backoff, too
            self._current, self._expected_page = None, 0
            self._progress.clear()
            self.state = "requesting"
            event = await self._request(self.request_data(datetime.now(UTC)))
            self._current = event.id
            if await self._answered():
                break
            self.unanswered += 1
            self.waiting_since = self.waiting_since or event.time
            self.state = "waiting for the journal"
            delay = backoff.next_delay()
            log.warning(
                "the journal did not answer catch-up request %s within %.0fs; asking again in %.1fs",
                event.id,
                self.settings.bus.catchup_timeout_s,
                delay,
            )
            await asyncio.sleep(delay)
        self.state, self.unanswered, self.waiting_since = "caught up", 0, None
        self.last_completed = utc_now()

    async def _answered(self) -> bool:
        """Wait for the whole answer. Only idle time counts against the timeout: pages queue behind
        events being handled, and handling a replayed page may take long (a page of scans)."""
        while not self._complete:
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), self.settings.bus.catchup_timeout_s)
            except TimeoutError:
                if not self._busy():
                    return False
        return True

    async def on_page(self, page: dict[str, Any]) -> None:
        """Handle one page (inside the consumer's transaction): its events, then maybe the position."""
        schemas.validate("catchup.page", page)
        current = page["request"] == self._current and page["page"] == self._expected_page
        self._progress.set()
        for envelope in page["events"]:
            await self._replay(replayed_message(self.settings.device, envelope))
            self.replayed += 1
            self._progress.set()
        if not current:
            return  # a late page of an earlier request: its events were useful, its position is not
        self._expected_page += 1
        if page["last"]:
            self._store().set_mark(MARK, page["end"])
            self._complete = True
            log.info("caught up from the journal to position %d (%d replayed)", page["end"], self.replayed)
        self._progress.set()
