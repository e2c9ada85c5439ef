"""The alerter node: folds the device's alerts and notifies people through the configured channels.

It subscribes to `alert.*`, folds them (`fold.py`: repeats counted, bursts grouped, repeats and
resolves, silences, inhibition), and writes each notification to the on-disk queue of its channel
(`queue.py`) before a per-channel worker delivers it (`channels.py`), in a thread with a timeout
so a slow or throttled service never blocks the event loop. A failing channel is retried with
capped exponential backoff; meanwhile the node is `degraded` with the reason and the queue depth
in its health, and nothing is lost. The fold state is saved atomically under the node's state
directory (at once for anything that changes what is sent, within a second for mere counts), and
a stop lets the notification on the wire finish and leave its queue, so a restart neither pages
again nor forgets an open alert (only a crash mid-send can send one twice: at least once).

Commands (their args are schemas/cmd.schema.json's `$defs`, the shapes the fleet console sends; the
command's `author` and `reason` are who and why, and its top-level `until` is only its expiry, which
the bus checks before any handler runs):
- `cmd.alerter.ack` {dedup_key}: that firing alert is not notified again until it resolves;
- `cmd.alerter.silence` {matcher: {dedup_key|source_component|title: ...}, until | duration_s}:
  matching alerts are muted until then; `cmd.alerter.unsilence` {matcher} or {id} lifts it;
- `cmd.alerter.resync` {}: re-publish the original event (same id) of every firing alert, so a
  console that starts or lost messages ends with this device's firing set (it dedupes by id).
Acks and active silences are listed, with author and comment, in the health details.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.backoff import Backoff
from bus.client import MqttError
from bus.config import Settings
from bus.deadletter import DeadLetters
from bus.envelope import JSON, Event, parse_time, utc_now
from bus.node import Node, RejectedMessage, on, on_health
from bus.schemas import SchemaError, validate_command_args
from bus.topics import topic_for
from nodes.alerter.channels import Channel, ChannelError, load_channels
from nodes.alerter.fold import Fold, FoldSettings, Route, SilenceError
from nodes.alerter.queue import DiskQueue
from nodes.alerter.settings import AlerterSettings

log = logging.getLogger("vv.alerter")
SAVE_DELAY_S = 1.0  # a mere count change is saved within this long (a crash loses at most these counts)


def command_args(event: Event) -> dict[str, Any]:
    """The command's args, checked against the one shape schemas/cmd.schema.json defines for it."""
    args = event.data.get("args")
    try:
        validate_command_args(event.type, args)
    except SchemaError as exc:
        raise RejectedMessage(str(exc)) from None
    assert isinstance(args, dict)
    return args


def command_author(event: Event) -> str:
    """Who gave a command: its `author`, else the node that sent it."""
    return str(event.data.get("author") or event.node)


async def wait_for_event(event: asyncio.Event, timeout: float | None) -> None:
    """Wait until `event` is set or `timeout` seconds pass (None: no limit)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), None if timeout is None else max(0.0, timeout))


@dataclass
class ChannelState:
    """A channel with its queue and how its deliveries are going."""

    channel: Channel
    queue: DiskQueue
    backoff: Backoff
    rejected: DeadLetters
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    failures: int = 0
    refused: int = 0
    last_error: str = ""
    failing_since: str | None = None
    last_success: str | None = None
    refresh_at: float = 0.0

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.channel.kind,
            "target": self.channel.target(),
            "min_severity": self.channel.min_severity,
            "queued": len(self.queue),
            "sent": self.sent,
            "failures": self.failures,
            "refused": self.refused,
            "dropped": self.queue.dropped,
            "failing_since": self.failing_since,
            "last_error": self.last_error,
            "last_success": self.last_success,
        }


class AlerterNode(Node):
    """Alerts in, notifications out: folded, grouped, silenced, queued, retried."""

    name = "alerter"

    def __init__(self, settings: Settings, instance: str = "") -> None:
        super().__init__(settings, instance)
        config = settings.section(AlerterSettings)
        channels = load_channels(config.channels)
        self.send_timeout_s = config.send_timeout_s
        self.fold = Fold(
            FoldSettings.from_settings(config),
            [Route(c.name, c.min_severity) for c in channels],
            self.state_dir / "fold.json",
        )
        dead = self.paths.state / "deadletter"
        self.channels = {
            c.name: ChannelState(
                c,
                DiskQueue(self.state_dir / "queue" / c.name, config.queue_max),
                Backoff(config.retry_min_s, config.retry_max_s),
                DeadLetters(dead / f"{self.name}-{c.name}.jsonl"),
            )
            for c in channels
        }
        self._wake = asyncio.Event()
        self._save_by: float | None = None

    async def setup(self) -> None:
        if self.fold.load_error:
            log.error("%s", self.fold.load_error)
        if not self.channels:
            log.warning(
                "no channels configured (alerter.channels): alerts are folded and tracked, sent nowhere"
            )
        for state in self.channels.values():
            log.info(
                "channel %s: %s %s, min %s",
                state.channel.name,
                state.channel.kind,
                state.channel.target(),
                state.channel.min_severity,
            )

    # ----------------------------------------------------------------- inputs
    @on("alert.*")
    async def on_alert(self, event: Event) -> None:
        try:
            outcome = self.fold.observe(event.data, event.to_dict())
        except Exception:
            if event.data["source_component"] != self.name:
                raise  # the base dead-letters it and raises alert.error
            # that alert.error would come back here and fail again: log it instead of looping
            log.exception("cannot fold the alerter's own alert %s", event.data["alert_id"])
            return
        if outcome == "folded":
            if self._save_by is None:
                self._save_by = time.monotonic() + SAVE_DELAY_S
        elif outcome != "ignored":
            self._save()
            self._wake.set()

    @on_health
    async def on_node_health(self, node: str, health: dict[str, Any]) -> None:
        if node != self.name and self.fold.set_node_status(node, str(health["status"])):
            log.info(
                "node %s is %s: its alerts are %s",
                node,
                health["status"],
                "muted" if node in self.fold.offline else "unmuted",
            )
            self._wake.set()

    @on("cmd.alerter.ack")
    async def on_ack(self, event: Event) -> None:
        args = command_args(event)
        author, comment = command_author(event), str(args.get("comment") or event.data.get("reason", ""))
        tracked = self.fold.ack(args["dedup_key"], author, comment)
        if tracked is None:
            log.info("ack by %s of %s ignored: no such alert is firing", author, args["dedup_key"])
            return
        log.info("alert %s (%s) acknowledged by %s: %s", tracked.key, tracked.alert["title"], author, comment)
        self._save()
        self._wake.set()

    @on("cmd.alerter.silence")
    async def on_silence(self, event: Event) -> None:
        args = event.data["args"]
        if ("until" in args) == ("duration_s" in args):
            raise RejectedMessage(
                "a silence needs exactly one of `until` (RFC 3339) or `duration_s` in its args"
            )
        args = command_args(event)
        until = args.get("until")
        end = parse_time(until).timestamp() if until is not None else time.time() + float(args["duration_s"])
        author = command_author(event)
        try:
            silence = self.fold.silence(args["matcher"], end, str(event.data.get("reason", "")), author)
        except (SilenceError, ValueError) as exc:
            raise RejectedMessage(f"silence refused: {exc}") from None
        log.info(
            "silence %s on %s until %s by %s: %s",
            silence.id,
            silence.matcher,
            silence.describe()["until"],
            author,
            silence.reason,
        )
        self._save()
        self._wake.set()

    @on("cmd.alerter.unsilence")
    async def on_unsilence(self, event: Event) -> None:
        args = command_args(event)
        lifted = self.fold.unsilence(args.get("id"), args.get("matcher"))
        log.info("unsilence %s by %s: %d silence(s) lifted", args, command_author(event), lifted)
        self._save()
        self._wake.set()

    @on("cmd.alerter.resync")
    async def on_resync(self, event: Event) -> None:
        """Re-publish each firing alert's original event; a lost connection is only logged (the console
        asks again when the link returns), so the handler never waits on a retry."""
        command_args(event)
        events, unknown = self.fold.firing_events()
        sent = 0
        try:
            for envelope in events:
                topic = topic_for(self.device, envelope["type"])
                await self.publish_document(topic, envelope, envelope["datacontenttype"])
                sent += 1
        except MqttError as exc:
            log.warning(
                "resync for %s abandoned after %d of %d alert(s): %s",
                command_author(event),
                sent,
                len(events),
                exc,
            )
            return
        log.info(
            "resync for %s: re-sent %d firing alert(s)%s",
            command_author(event),
            sent,
            f"; {unknown} folded before envelopes were kept cannot be re-sent" if unknown else "",
        )

    # ----------------------------------------------------------------- the loop that decides
    def _save(self) -> None:
        self.fold.save()
        self._save_by = None

    async def background(self) -> None:
        workers = [asyncio.create_task(self._deliver(state)) for state in self.channels.values()]
        try:
            while True:
                deliveries = self.fold.due()
                for delivery in deliveries:
                    state = self.channels[delivery.channel]
                    state.queue.put({**delivery.to_dict(), "queued_at": utc_now()})
                    state.wake.set()
                    log.info(
                        "queued for %s: %d alert(s) of %s",
                        delivery.channel,
                        len(delivery.alerts),
                        delivery.group,
                    )
                if self.fold.dirty and (deliveries or (self._save_by or 0) <= time.monotonic()):
                    self._save()  # after the queue writes: a crash in between may send twice, never loses
                await self._nap()
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            if self.fold.dirty:
                self._save()

    async def _nap(self) -> None:
        """Sleep until the fold has something due, a count must be saved, or an input woke us."""
        timeouts = [1.0]
        next_due = self.fold.next_due()
        if next_due is not None:
            timeouts.append(next_due - time.time())
        if self._save_by is not None:
            timeouts.append(self._save_by - time.monotonic())
        self._wake.clear()
        await wait_for_event(self._wake, min(timeouts))

    # ----------------------------------------------------------------- the workers that deliver
    async def _deliver(self, state: ChannelState) -> None:
        while True:
            state.wake.clear()  # before looking: an item queued from now on wakes the wait below
            head = state.queue.peek()
            if head is None:
                await self._refresh(state)
                wait = state.refresh_at - time.monotonic() if state.channel.resend_s else None
                await wait_for_event(state.wake, wait)
                continue
            attempt = asyncio.ensure_future(self._attempt(state, *head))
            try:
                retry = await asyncio.shield(attempt)
            except asyncio.CancelledError:
                # A stop while a notification is on the wire: let it finish (bounded by the send
                # timeout) and leave the queue, so the next start does not page again.
                await attempt
                raise
            if retry:
                await asyncio.sleep(state.backoff.next_delay())

    async def _attempt(self, state: ChannelState, path: Path, item: dict[str, Any]) -> bool:
        """Deliver the queue's head; it leaves the queue unless the failure is worth a retry (True)."""
        try:
            if not isinstance(item.get("alerts"), list) or not isinstance(item.get("group"), str):
                raise ChannelError("malformed queue item (no alerts or group)", retryable=False)
            await self._send(state, item["alerts"], item["group"])
            state.sent += 1
        except ChannelError as exc:
            if exc.retryable:
                self._failed(state, str(exc))
                return True
            state.refused += 1
            state.rejected.put(
                node=self.name,
                topic=f"channel/{state.channel.name}",
                payload=json.dumps(item).encode(),
                content_type=JSON,
                reason=str(exc),
            )
            log.error(
                "channel %s refused a notification for good (%s); kept in %s",
                state.channel.name,
                exc,
                state.rejected.path,
            )
        state.queue.remove(path)
        return False

    async def _send(self, state: ChannelState, alerts: list[dict[str, Any]], group: str) -> None:
        """One delivery attempt in a thread, bounded by `alerter.send_timeout_s`."""
        timeout = self.send_timeout_s
        try:
            await asyncio.wait_for(
                asyncio.to_thread(state.channel.send, alerts, group, timeout), timeout + 1.0
            )
        except TimeoutError:
            raise ChannelError(f"no answer within {timeout:g}s") from None
        state.last_success = utc_now()
        state.backoff.reset()
        if state.failing_since is not None:
            log.info(
                "channel %s delivers again after failing since %s", state.channel.name, state.failing_since
            )
            state.failing_since, state.last_error = None, ""
            self._update_status()

    async def _refresh(self, state: ChannelState) -> None:
        """Re-send what is firing to a channel that forgets alerts it stops hearing about."""
        resend = state.channel.resend_s
        if resend is None or time.monotonic() < state.refresh_at:
            return
        state.refresh_at = time.monotonic() + resend
        alerts = self.fold.active_for(state.channel.name)
        if alerts:
            try:
                await self._send(state, alerts, "refresh")
            except ChannelError as exc:
                self._failed(state, f"refresh: {exc}")

    def _failed(self, state: ChannelState, error: str) -> None:
        state.failures += 1
        state.last_error = error
        if state.failing_since is None:
            state.failing_since = utc_now()
            log.warning(
                "channel %s failing: %s (%d queued; retrying with backoff)",
                state.channel.name,
                error,
                len(state.queue),
            )
        self._update_status()

    def _update_status(self) -> None:
        failing = [s for s in self.channels.values() if s.failing_since is not None]
        if not failing:
            self.set_status("online")
            return
        reasons = [
            f"channel {s.channel.name} failing since {s.failing_since}: {s.last_error} ({len(s.queue)} queued)"
            for s in failing
        ]
        self.set_status("degraded", "; ".join(reasons))

    def health_details(self) -> dict[str, Any]:
        return {
            "alerts": self.fold.summary(),
            "channels": {name: state.describe() for name, state in self.channels.items()},
        }

    async def teardown(self) -> None:
        if self.fold.dirty:
            self._save()
