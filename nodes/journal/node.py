"""The journal node: appends every event of its device to the segmented log, the source of truth.

It also answers catch-up requests (`cmd.journal.replay`, bus/catchup.py): a request is handled in
the order it arrived, after every event queued before it was appended, so the answer covers all the
journal had by then; the reading and sending run beside the recording. And the fleet console's gap
re-sends (`cmd.journal.resend`, resend.py): the original envelopes of a range of alerts or LogLines,
re-published on their own topics so they cross the bridge again (consumers dedupe by id).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from bus.broker import Grant
from bus.client import MqttError
from bus.config import Settings
from bus.envelope import MSGPACK, Event, rfc3339, utc_now
from bus.node import Node, RejectedMessage, on
from bus.schemas import SchemaError
from bus.topics import CATCHUP_REQUEST, catchup_topic, subscription, topic_for
from bus.transport import topic_matches
from nodes.journal.catchup import ReplayRequest, read_page
from nodes.journal.resend import RESEND, RESENDABLE, ResendRequest, find_resend
from nodes.journal.retention import apply_retention
from nodes.journal.settings import JournalSettings
from nodes.journal.store import Journal, JournalError

log = logging.getLogger("vv.journal")
RECENTLY_APPENDED = 10_000  # event ids remembered in-process, so a retried event is appended once


class JournalNode(Node):
    name = "journal"
    catchup = False  # it is what the others catch up from

    @classmethod
    def grant(cls, settings: Settings, node: str) -> Grant:
        """Reads everything; writes no event of its own: catch-up answers to the node that asked, and
        the recorded events a gap re-send re-publishes (those not already covered: alerts are)."""
        base = super().grant(settings, node)
        resent = [subscription(settings.device, pattern) for pattern in RESENDABLE]
        extra = [topic for topic in resent if not any(topic_matches(w, topic) for w in base.write)]
        return dataclasses.replace(base, write=(*base.write, *extra, catchup_topic(settings.device, "+")))

    async def setup(self) -> None:
        settings = self.settings.section(JournalSettings)
        self.retention: dict[str, int] = {}  # the last retention pass, for health
        self.journal = Journal.open(
            self.paths.journal,
            segment_bytes=settings.segment_bytes,
            fsync=settings.fsync,
            fsync_interval_s=settings.fsync_interval_s,
        )
        self._answers: set[asyncio.Task[None]] = set()
        self.answered = 0
        self.resends: dict[str, Any] = {"answered": 0, "events": 0, "last": None}
        self._appended: OrderedDict[str, None] = OrderedDict()
        for report in self.journal.recovery:
            await self.raise_alert(
                "WARNING",
                "Journal recovered from a torn write",
                str(report),
                context={"path": str(self.paths.journal)},
                actions=["Nothing to do if the device lost power or crashed; otherwise check the disk"],
            )

    @on("#")
    async def record(self, event: Event) -> None:
        # Acked only after this returns: an event is on disk (or in the OS, per the fsync policy)
        # before the broker forgets it. An event appended whose dedupe claim could not be committed
        # (a full disk) comes back for a retry: it is not appended twice.
        if event.id not in self._appended:
            self.journal.append(
                {
                    "topic": topic_for(event.device, event.type),
                    "received_at": utc_now(),
                    "event": event.to_dict(),
                }
            )
            self._appended[event.id] = None
            if len(self._appended) > RECENTLY_APPENDED:
                self._appended.popitem(last=False)
        if event.type == CATCHUP_REQUEST:
            try:
                request = ReplayRequest.from_event(event, self.device, self.journal.next_record)
            except (SchemaError, ValueError) as exc:
                raise RejectedMessage(f"catch-up request refused: {exc}") from None
            self._beside(self._answer(request))
        elif event.type == RESEND:
            try:
                resend = ResendRequest.from_event(event)
            except ValueError as exc:  # SchemaError included
                raise RejectedMessage(f"re-send refused: {exc}") from None
            self._beside(self._resend(resend))

    def _beside(self, work: Coroutine[Any, Any, None]) -> None:
        """Answer beside the recording (expired requests never get here: the inbound path drops them)."""
        task = asyncio.get_running_loop().create_task(work)
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    async def _resend(self, request: ResendRequest) -> None:
        """Re-publish the original envelopes of the range, QoS 1; a failure is only logged (the console
        asks again while its gap stays open, then alerts)."""
        max_age = self.settings.section(JournalSettings).resend_max_age_s
        since = rfc3339(datetime.now(UTC) - timedelta(seconds=max_age))
        sent = 0
        try:
            envelopes = await asyncio.to_thread(find_resend, self.paths.journal, request, self.device, since)
            for envelope in envelopes:
                topic = topic_for(self.device, envelope["type"])
                await self.publish_document(topic, envelope, envelope["datacontenttype"])
                sent += 1
        except (MqttError, JournalError, OSError, ValueError) as exc:
            log.warning("re-send of %s abandoned after %d event(s): %s", request.describe(), sent, exc)
            return
        missing = request.last - request.first + 1 - sent
        self.resends["answered"] += 1
        self.resends["events"] += sent
        self.resends["last"] = {"request": request.describe(), "sent": sent, "at": utc_now()}
        log.info(
            "re-sent %d event(s) of %s%s",
            sent,
            request.describe(),
            f"; {missing} not in the journal" if missing > 0 else "",
        )

    async def _answer(self, request: ReplayRequest) -> None:
        """Send the answer page by page; a failure is only logged: the asker asks again."""
        position, page, sent = request.start, 0, 0
        try:
            while True:
                events, position = await asyncio.to_thread(
                    read_page,
                    self.paths.journal,
                    request,
                    self.device,
                    position,
                    self.settings.bus.max_event_bytes // 2,
                )
                last = position >= request.end
                document = {
                    "request": request.id,
                    "page": page,
                    "last": last,
                    "end": request.end,
                    "events": events,
                }
                await self.publish_document(request.reply_to, document, MSGPACK)
                sent += len(events)
                if last:
                    break
                page += 1
        except (MqttError, JournalError, OSError) as exc:
            log.warning("catch-up answer to %s abandoned after %d event(s): %s", request.reply_to, sent, exc)
            return
        self.answered += 1
        log.info(
            "caught %s up: %d event(s) in %d page(s), positions %d..%d",
            request.reply_to,
            sent,
            page + 1,
            request.start,
            request.end,
        )

    async def background(self) -> None:
        await asyncio.gather(self._sync_quiet_tail(), self._retain())

    async def _sync_quiet_tail(self) -> None:
        """The interval policy syncs on append; this syncs a quiet tail too, within the interval."""
        if self.settings.section(JournalSettings).fsync != "interval":
            return
        interval = max(self.settings.section(JournalSettings).fsync_interval_s, 0.05)
        while not await self.sleep(interval):
            if self.journal.unsynced:
                self.journal.flush()

    async def _retain(self) -> None:
        """Retention (`retention.py`) beside the appends, in a thread: it folds the index and hashes."""
        while True:
            try:
                report = await asyncio.to_thread(
                    apply_retention, self.journal, self.paths, self.settings.section(JournalSettings)
                )
            except (JournalError, OSError) as exc:
                log.warning("journal retention skipped: %s", exc)
            else:
                self.retention = report.summary()
            if await self.sleep(self.settings.section(JournalSettings).retention_interval_s):
                return

    async def teardown(self) -> None:
        for task in list(self._answers):
            task.cancel()
        await asyncio.gather(*self._answers, return_exceptions=True)
        self.journal.close()

    def health_details(self) -> dict[str, Any]:
        if not hasattr(self, "journal"):
            return {}
        return {
            "journal": self.journal.stats(),
            "catchup_answers": self.answered,
            "resends": self.resends,
            "retention": self.retention,
        }
