"""The fleet fold: what the console makes of every message from the central broker (no MQTT, no clock).

Each entry point takes `now` (Unix seconds) and writes its outcome to the store in one transaction,
so a restart resumes from the store and a message handled twice (a bridge resend, a replay with the
same event id) changes nothing. What must go back to a device (a re-send request for a gap, a
resync of firing alerts) is recorded as an action by author `console`, and the service sends the
pending actions: one path for the console's own commands and the operators'.

- Link: the bridge's `bridge/state` ("1"/"0"); a down shorter than `link_debounce_s` is a flap, a
  longer one an incident (a console alert, resolved when the link returns, with a resync).
- Staleness: a device whose health beats stop for `stale_factor` x its nodes' own interval is stale,
  a console alert like a dead man's switch (inhibited while its link is known to be down).
- Alerts: folded by (device, dedup_key) with counts and first/last seen; every status change goes
  to history; an alert document no newer than the one folded (a resync, a replay) is old news.
- Gaps: per producer, event type and epoch, a jump in `seq` opens a gap; still open after
  `reorder_timeout_s` it is asked for (`cmd.journal.resend`); unanswered after `resend_wait_s` it
  raises an alert. A LogLine chain's own seqs are tracked the same way (source "chain").
- Chain witness: every LogLine's (seq, hash, video) is kept; its signature is checked against the
  registry's keys with nodes/sign's own checks; a fork, a rewind, a missing seq or a bad signature
  is CRITICAL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from bus.alerts import build_alert
from bus.envelope import Event, parse_time, rfc3339
from bus.fleet import FleetMessage
from nodes.console.actions import record_command
from nodes.console.registry import Registry
from nodes.console.settings import ConsoleSettings
from nodes.console.store import (
    AlertState,
    ChainEntry,
    Change,
    ConsoleStore,
    DeviceState,
    Gap,
    HistoryEntry,
    NodeHealth,
)
from nodes.sign.head import HeadError, check_head
from nodes.sign.logline import logline_hash, schema_error, verify_signature

log = logging.getLogger("vv.console")

CONSOLE = "console"  # source_component of the console's own alerts, author of its own commands
CHAIN = "chain"  # the gap stream of a device's LogLine chain
LOGLINE = "logline.signed"
RESEND = "cmd.journal.resend"
RESYNC = "cmd.alerter.resync"
ACK = "cmd.alerter.ack"
PRUNE_EVERY_S = 3600.0


def _when(value: str) -> float:
    return parse_time(value).timestamp()


def _face(state: DeviceState) -> tuple[Any, ...]:
    """What a device's tile shows of its row (its last seen ages on the page by itself; the device
    page re-reads its health details on its own)."""
    return (state.link, state.stale, state.version, state.chain_seq, state.chain_verified)


class Fleet:
    """The fold over one store; the service calls `start` once, `receive` per message, `tick` often."""

    def __init__(self, store: ConsoleStore, settings: ConsoleSettings, registry: Registry) -> None:
        self.store, self.settings, self.registry = store, settings, registry
        self.duplicates = 0
        self.rejected = 0
        self._pruned_at = 0.0
        self.on_change: Callable[[Change], None] | None = None  # told after each committed step
        self._changes: list[Change] = []
        # each node's last status as this process heard it (every replica hears all health), and
        # the devices whose tile a batch changed beyond their row: a page re-reads a tile only then
        self._statuses: dict[tuple[str, str], str] = {}
        self._restated: set[str] = set()
        registry.refresh()

    # ------------------------------------------------------------------ entry points
    def start(self, now: float) -> None:
        """Ask every device known (seen before, or enrolled) for its firing alerts."""
        self.registry.refresh()
        with self.store.transaction():
            known = {state.device for state in self.store.devices()} | set(self.registry.devices)
            for device in sorted(known):
                self._command(device, RESYNC, {}, "the console started: which alerts are firing?", now)

    def receive(self, message: FleetMessage, now: float) -> None:
        self.receive_batch([message], now)

    def receive_batch(self, messages: Sequence[FleetMessage], now: float) -> None:
        """Fold messages that arrived together in one store transaction: one commit per batch, and
        each device's row read and written once (a device sends its nodes' health together)."""
        with self._step():
            # every device's lock first, in one order: replicas folding batches cannot deadlock
            self.store.lock(*sorted({message.device for message in messages}))
            states: dict[str, tuple[DeviceState, DeviceState | None]] = {}
            beats: set[str] = set()
            for message in messages:
                if message.device not in states:
                    found = self.store.device(message.device)
                    state = found or self._new_device(message.device, now)
                    states[message.device] = (state, dataclasses.replace(found) if found else None)
                state = states[message.device][0]
                if not message.retained:
                    state.last_seen = now
                if message.link_up is not None:
                    self._link(state, message.link_up, now)
                elif message.health is not None:
                    if self._health(state, message.health, message.retained, now):
                        beats.add(state.device)
                elif message.event is not None:
                    self._event(state, message.event, now)
            for device in beats:
                self._beaten(states[device][0], now)
            for state, before in states.values():
                if state != before:
                    self.store.put_device(state)
                if before is None or _face(state) != _face(before) or state.device in self._restated:
                    self._device_changed(state)
            self._restated.clear()

    def tick(self, now: float) -> None:
        """Time-driven outcomes: debounced links, staleness, gaps due, retention."""
        self.registry.refresh()
        settings = self.settings
        with self._step():
            due = sorted(
                self.store.devices_due(
                    now - settings.link_debounce_s,
                    now,
                    settings.stale_factor,
                    settings.default_health_interval_s,
                )
            )
            # their locks, in one order (no deadlock), before reading: a replica folding a message
            # meanwhile would otherwise have its write overwritten by a stale row
            self.store.lock(*due)
            for name in due:
                state = self.store.device(name)
                assert state is not None  # devices are never deleted
                before = dataclasses.replace(state)
                self._check_link(state, now)
                self._check_stale(state, now)
                if state != before:  # most ticks change nothing: no write per device per tick
                    self.store.put_device(state)
                    self._device_changed(state)
            for gap in self.store.gaps():
                self._check_gap(gap, now)
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = now
            removed = self.store.prune(now - self.settings.history_days * 86400)
            if removed:
                log.info(
                    "retention: %d rows older than %.0f days removed", removed, self.settings.history_days
                )

    def acked(self, device: str, dedup_key: str, author: str, now: float) -> bool:
        """An operator's ack, applied to the folded alert (until it resolves); False if there is none."""
        with self._step():
            self.store.lock(device)
            alert = self.store.alert(device, dedup_key)
            if alert is None:
                return False
            alert.acked_by, alert.acked_at = author, now
            self.store.put_alert(alert)
            self._alert_changed(alert)
            self._history(
                now, device, "alert", dedup_key, alert.severity, alert.title, "acked", f"by {author}"
            )
        return True

    @contextlib.contextmanager
    def _step(self) -> Iterator[None]:
        """One store transaction; its changes are told to `on_change` once it has committed."""
        try:
            with self.store.transaction():
                yield
                self.store.publish(self._changes)  # replicas on one database hear of it at commit
        except BaseException:
            self._changes.clear()
            self._restated.clear()
            self._statuses.clear()  # some were heard in the rolled-back step: hear them anew
            raise
        changes, self._changes = self._changes, []
        if self.on_change is not None:
            for change in changes:
                self.on_change(change)

    def _device_changed(self, state: DeviceState) -> None:
        """A change a page shows (not every beat: 800 a second at 1,000 devices would be noise)."""
        self._changes.append(Change("device", state.device, data={"link": state.link, "stale": state.stale}))

    def _alert_changed(self, alert: AlertState) -> None:
        data = {
            "severity": alert.severity,
            "status": alert.status,
            "title": alert.title,
            "count": alert.count,
        }
        self._changes.append(Change("alert", alert.device, alert.dedup_key, data))

    # ------------------------------------------------------------------ devices and links
    def _new_device(self, device: str, now: float) -> DeviceState:
        self._history(now, device, "device", "", "INFO", "Device seen", "first seen")
        self._command(device, RESYNC, {}, "first message from this device: which alerts are firing?", now)
        return DeviceState(device)

    def _link(self, state: DeviceState, up: bool, now: float) -> None:
        link = "up" if up else "down"
        if state.link == link:
            return
        state.link, state.link_changed = link, now
        self._history(now, state.device, "device", "", "INFO", "Bridge link", f"link {link}")
        if up and state.link_incident:
            state.link_incident = False
            self._console_alert(
                state.device, "ERROR", "Device link down", "The bridge is up again", now, False
            )
            self._command(state.device, RESYNC, {}, "the link is back: which alerts are firing?", now)

    def _check_link(self, state: DeviceState, now: float) -> None:
        if state.link != "down" or state.link_incident or state.link_changed is None:
            return
        if now - state.link_changed < self.settings.link_debounce_s:
            return
        state.link_incident = True
        down_since = rfc3339(datetime.fromtimestamp(state.link_changed, UTC))
        self._console_alert(
            state.device,
            "ERROR",
            "Device link down",
            f"The bridge of {state.device} has been down since {down_since}: its alerts and LogLines wait"
            " on the device (queued by its broker) until it returns",
            now,
            True,
            actions=["Check the device's network and its broker (`systemctl status mosquitto`)"],
        )

    # ------------------------------------------------------------------ health and staleness
    def _health(self, state: DeviceState, doc: dict[str, Any], retained: bool, now: float) -> bool:
        """Record a node's health document; True if it is a beat (the node is not offline)."""
        details = doc.get("details") if isinstance(doc.get("details"), dict) else {}
        assert isinstance(details, dict)
        interval = details.get("health_interval_s")
        interval_s = float(interval) if isinstance(interval, int | float) and interval > 0 else None
        # A retained document is the broker's copy: its own time says how old the beat is.
        beat = min(_when(doc["time"]), now) if retained else now
        self.store.put_health(
            NodeHealth(
                state.device,
                doc["node"],
                doc["status"],
                doc["time"],
                beat,
                interval_s,
                str(doc.get("version", "")),
                doc,
            )
        )
        if self._statuses.get((state.device, doc["node"])) != doc["status"]:
            self._statuses[(state.device, doc["node"])] = doc["status"]
            self._restated.add(state.device)  # its tile's nodes online changed
        if doc.get("version"):
            state.version = str(doc["version"])
        if doc["node"] == "disk":
            state.disk = details
        if doc["status"] == "offline":
            return False  # a will or a goodbye: its chain head is the one it had when it connected
        head = details.get("chain_head")
        if doc["node"] == "sign" and isinstance(head, dict):
            self._anchored_head(state, head, _when(doc["time"]), now)
        state.health_at = max(state.health_at or 0.0, beat)
        return True

    def _beaten(self, state: DeviceState, now: float) -> None:
        """After a batch's beats of a device: the interval its online nodes report, and a stale
        device that speaks again is fresh."""
        intervals = self.store.health_intervals(state.device)
        state.health_interval_s = max(
            (i for i in intervals if i is not None), default=self.settings.default_health_interval_s
        )
        if state.stale and not self._silent(state, now):
            state.stale = False
            self._history(now, state.device, "device", "", "INFO", "Health", "fresh")
            self._console_alert(
                state.device, "ERROR", "Device stopped reporting", "Health is back", now, False
            )

    def _silent(self, state: DeviceState, now: float) -> bool:
        interval = state.health_interval_s or self.settings.default_health_interval_s
        return state.health_at is not None and now - state.health_at > self.settings.stale_factor * interval

    def _check_stale(self, state: DeviceState, now: float) -> None:
        if state.stale or not self._silent(state, now):
            return
        if not self.store.health_intervals(state.device):
            return  # every node said goodbye: stopped, not silent
        state.stale = True
        self._history(now, state.device, "device", "", "WARNING", "Health", "stale")
        if state.link == "down":
            return  # the link alert says why; a second page would say the same
        seen = rfc3339(datetime.fromtimestamp(state.health_at or now, UTC))
        self._console_alert(
            state.device,
            "ERROR",
            "Device stopped reporting",
            f"No health from {state.device} since {seen}"
            f" ({self.settings.stale_factor:g} x its {state.health_interval_s or 0:g}s interval)",
            now,
            True,
            actions=["Check that `vv up` runs on the device and that its bridge is connected"],
        )

    # ------------------------------------------------------------------ events
    def _event(self, state: DeviceState, event: Event, now: float) -> None:
        if not self.store.mark_seen(event.id, now):
            self.duplicates += 1
            return
        self._track_seq(state.device, event.source, event.type, event.epoch, event.seq, now)
        if event.type.startswith("alert."):
            doc = event.data
            if doc["hostname"] != state.device or doc["severity"].lower() != event.type.split(".", 1)[1]:
                self.rejected += 1
                log.warning(
                    "alert %s from %s refused: its hostname or severity contradicts its topic",
                    event.id,
                    state.device,
                )
                return
            self._fold_alert(state.device, doc, now, event.id)
        elif event.type == LOGLINE:
            self._witness(state, event, now)

    # ------------------------------------------------------------------ alerts
    def _fold_alert(self, device: str, doc: Mapping[str, Any], now: float, event_id: str = "") -> None:
        key, status, stamp = doc["dedup_key"], doc["status"], doc["timestamp"]
        alert = self.store.alert(device, key)
        if alert is None:
            alert = AlertState(
                device,
                key,
                doc["alert_id"],
                doc["severity"],
                doc["source_component"],
                doc["title"],
                doc["message_details"],
                status,
                int(doc["count"]),
                now,
                now,
                now,
                stamp,
                document=dict(doc),
            )
            self.store.put_alert(alert)
            self._alert_changed(alert)
            self._history(now, device, "alert", key, alert.severity, alert.title, status, event_id)
            return
        newer, older = _when(stamp), _when(alert.event_time)
        if newer < older or (newer == older and status == alert.status):
            return  # old news: a resync restating it, or a late replay of an earlier state
        alert.last_seen, alert.event_time, alert.document = now, stamp, dict(doc)
        alert.severity, alert.title, alert.details = doc["severity"], doc["title"], doc["message_details"]
        if status == "firing":
            alert.count += int(doc["count"])
        if status != alert.status:
            change = "refired" if status == "firing" else "resolved"
            alert.status, alert.changed = status, now
            if status == "resolved":
                alert.acked_by, alert.acked_at = None, None  # an ack lasts until the alert resolves
            self._history(now, device, "alert", key, alert.severity, alert.title, change, event_id)
        self.store.put_alert(alert)
        self._alert_changed(alert)

    def _console_alert(
        self,
        device: str,
        severity: str,
        title: str,
        details: str,
        now: float,
        firing: bool,
        *,
        about: str = "",
        actions: tuple[str, ...] | list[str] = (),
    ) -> None:
        """An alert of the console's own, folded like a device's (`about` tells instances apart)."""
        doc = build_alert(
            severity=severity,  # type: ignore[arg-type]
            title=title,
            details=details,
            source=CONSOLE,
            device=device,
            context={"stream": about} if about else {},
            actions=actions,
            status="firing" if firing else "resolved",
        )
        doc["timestamp"] = rfc3339(datetime.fromtimestamp(now, UTC))
        existing = self.store.alert(device, doc["dedup_key"])
        if (existing.status if existing is not None else "resolved") == doc["status"]:
            return  # a condition, not an event: seen again (every health beat) it is still the one alert
        if firing:
            log.warning("console alert %s on %s: %s", severity, device, details)
        self._fold_alert(device, doc, now)

    # ------------------------------------------------------------------ gaps
    def _track_seq(self, device: str, source: str, type_: str, epoch: int, seq: int, now: float) -> None:
        last = self.store.producer_seq(device, source, type_, epoch)
        if last is not None and seq <= last:
            self._fill(device, source, type_, epoch, seq, now)
            return
        if last is not None and seq > last + 1:
            self.store.put_gap(Gap(device, source, type_, epoch, last + 1, seq - 1, now))
            log.info("gap from %s %s epoch %d: seq %d-%d", source, type_, epoch, last + 1, seq - 1)
        self.store.set_producer_seq(device, source, type_, epoch, seq)

    def _gaps_of(self, device: str, source: str, type_: str, epoch: int) -> Iterator[Gap]:
        for gap in self.store.gaps():
            if (gap.device, gap.source, gap.type, gap.epoch) == (device, source, type_, epoch):
                yield gap

    def _fill(self, device: str, source: str, type_: str, epoch: int, seq: int, now: float) -> None:
        for gap in self._gaps_of(device, source, type_, epoch):
            if not gap.first <= seq <= gap.last:
                continue
            self.store.delete_gap(gap)
            if gap.given_up:  # resolve the alert of the whole stretch; what is still missing re-alerts
                self._gap_alert(gap, now, False)
            for first, last in ((gap.first, seq - 1), (seq + 1, gap.last)):
                if first <= last:
                    self.store.put_gap(
                        Gap(device, source, type_, epoch, first, last, gap.opened, gap.requested)
                    )
            return

    def _check_gap(self, gap: Gap, now: float) -> None:
        if gap.requested is None and now - gap.opened >= self.settings.reorder_timeout_s:
            gap.requested = now
            args: dict[str, Any] = {"type": gap.type, "first": gap.first, "last": gap.last}
            if gap.source == CHAIN:
                args["by"] = "chain"
            else:
                args.update(by="seq", source=gap.source, epoch=gap.epoch)
            reason = f"missing seq {gap.first}-{gap.last} of {gap.source} {gap.type}"
            self._command(gap.device, RESEND, args, reason, now)
            self.store.put_gap(gap)
        elif (
            gap.requested is not None
            and not gap.given_up
            and now - gap.requested >= self.settings.resend_wait_s
        ):
            gap.given_up = True
            self.store.put_gap(gap)
            self._gap_alert(gap, now, True)

    def _gap_alert(self, gap: Gap, now: float, firing: bool) -> None:
        stretch = f"seq {gap.first}" if gap.first == gap.last else f"seqs {gap.first}-{gap.last}"
        if gap.source == CHAIN:
            self._console_alert(
                gap.device,
                "CRITICAL",
                "LogLine missing from the chain",
                f"LogLine {stretch} of {gap.device} never reached the console, even after asking its journal",
                now,
                firing,
                about=f"chain {gap.first}-{gap.last}",
                actions=["Run `vv verify` on the device: a removed LogLine breaks its chain there too"],
            )
        else:
            self._console_alert(
                gap.device,
                "WARNING",
                "Events missing from a device",
                f"{gap.type} {stretch} of {gap.source} (epoch {gap.epoch}) never arrived, even after asking"
                " its journal",
                now,
                firing,
                about=f"{gap.source} {gap.type} {gap.epoch} {gap.first}-{gap.last}",
            )

    # ------------------------------------------------------------------ chain witness
    def _witness(self, state: DeviceState, event: Event, now: float) -> None:
        data, device = event.data, state.device
        seq, digest, prev = int(data["seq"]), str(data["hash"]), str(data["prev"])
        verified, reason = self._verify(device, data)
        known = self.store.chain_at(device, seq)
        if any(entry.hash == digest for entry in known):
            return  # the same LogLine announced again (a redelivery or a re-announcement)
        video = str(data.get("video_id", ""))
        self.store.add_chain(
            ChainEntry(device, seq, digest, prev, video, str(data["key_id"]), verified, reason, now, event.id)
        )
        line = data.get("line") if isinstance(data.get("line"), dict) else {}
        assert isinstance(line, dict)
        summary = line.get("summary") if isinstance(line.get("summary"), dict) else {}
        assert isinstance(summary, dict)
        self._changes.append(
            Change(
                "logline",
                device,
                str(seq),
                {
                    "seq": seq,
                    "video_id": video,
                    "text": str(summary.get("text", "")),
                    "counts": summary.get("counts") if isinstance(summary.get("counts"), dict) else {},
                    "verified": verified,
                    "at": now,
                },
            )
        )
        if verified is False:
            self._console_alert(
                device,
                "CRITICAL",
                "LogLine signature does not verify",
                f"LogLine seq {seq} of {device} (video {video or '?'}): {reason}",
                now,
                True,
                about=f"chain {seq}",
                actions=["Compare the device's keys (`vv keys export`) with the fleet registry"],
            )
        head = state.chain_seq
        if known:
            self._fork(device, seq, f"two LogLines claim seq {seq}: {known[0].hash} and {digest}", now)
            if head is not None and seq < head:
                self._rewind(device, f"a new LogLine at seq {seq}, below the witnessed head {head}", now)
            return
        before = self.store.chain_at(device, seq - 1)
        if before and all(entry.hash != prev for entry in before):
            self._fork(
                device, seq, f"LogLine seq {seq} links to {prev}, not to the witnessed seq {seq - 1}", now
            )
        after = self.store.chain_at(device, seq + 1)
        if after and all(entry.prev != digest for entry in after):
            self._fork(
                device, seq + 1, f"the witnessed seq {seq + 1} does not link to the new seq {seq}", now
            )
        self._track_seq(device, CHAIN, LOGLINE, 0, seq, now)
        if state.chain_base is None or seq < state.chain_base:
            state.chain_base = seq  # the lowest witnessed: replicas may fold a chain's start out of order
        if head is None or seq > head:
            state.chain_seq, state.chain_hash, state.chain_verified = seq, digest, verified
            state.chain_time = _when(data["line"]["created_at"]) if verified else None  # checked: signed

    def _verify(self, device: str, data: Mapping[str, Any]) -> tuple[bool | None, str]:
        """(True, "") if the LogLine in the event is signed by one of the device's registered keys and
        is the one the event names; (False, why) if not; (None, why) when it cannot be checked."""
        keys = self.registry.keys(device)
        if keys is None:
            return None, "the device is not in the fleet registry"
        line = data.get("line")
        if not isinstance(line, dict):
            return None, "the event does not carry the LogLine"
        reason = schema_error(line) or verify_signature(line, keys)
        if reason is None:
            claimed = (device, data["seq"], data["prev"], data["hash"], data["key_id"], data.get("video_id"))
            actual = (
                line["device"],
                line["seq"],
                line["prev"],
                logline_hash(line),
                line["signature_details"]["key_id"],
                line["video"]["id"] if "video_id" in data else None,
            )
            if claimed != actual:
                reason = "the event's seq, prev, hash, key or video differ from its LogLine's"
        return reason is None, reason or ""

    def _anchored_head(self, state: DeviceState, document: dict[str, Any], said: float, now: float) -> None:
        """The sign node's signed head (in its health, published at `said`): behind the witnessed
        head means a rewind, unless the health is older than the witnessed head LogLine (both by
        the device's clock): replicas fold a device's health and LogLines apart, so a health may
        come late. A restored device's next LogLine is a fork at a witnessed seq all the same."""
        keys = self.registry.keys(state.device)
        if keys is None or state.chain_seq is None:
            return
        try:
            head = check_head(document, keys, state.device)
        except HeadError as exc:
            self._console_alert(
                state.device,
                "CRITICAL",
                "Chain head signature does not verify",
                f"The sign node's chain head of {state.device}: {exc}",
                now,
                True,
            )
            return
        if head.seq < state.chain_seq and (state.chain_time is None or said >= state.chain_time):
            self._rewind(
                state.device,
                f"the device's signed head is seq {head.seq}; the console witnessed seq {state.chain_seq}",
                now,
            )
        elif head.seq == state.chain_seq and head.hash != state.chain_hash:
            self._fork(state.device, head.seq, f"the device's head at seq {head.seq} is {head.hash}", now)

    def _fork(self, device: str, seq: int, details: str, now: float) -> None:
        self._console_alert(
            device,
            "CRITICAL",
            "LogLine chain fork",
            f"{device}: {details}",
            now,
            True,
            about=f"chain {seq}",
            actions=["The console keeps every LogLine it witnessed: compare them with the device's files"],
        )

    def _rewind(self, device: str, details: str, now: float) -> None:
        self._console_alert(
            device,
            "CRITICAL",
            "LogLine chain rewound",
            f"{device}: {details}; its storage was wiped, restored or tampered with",
            now,
            True,
            actions=["Run `vv verify` on the device and compare with the console's witness"],
        )

    # ------------------------------------------------------------------ records
    def _history(
        self,
        now: float,
        device: str,
        kind: str,
        key: str,
        severity: str,
        title: str,
        change: str,
        detail: str = "",
    ) -> None:
        self.store.add_history(HistoryEntry(now, device, kind, key, severity, title, change, detail))

    def _command(self, device: str, kind: str, args: dict[str, Any], reason: str, now: float) -> None:
        """A command of the console's own, recorded as an action; the service sends it."""
        record_command(self.store, kind, device, args, CONSOLE, reason, now, self.settings.command_ttl_s)
