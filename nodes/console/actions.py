"""Actions: operators' and the console's commands, recorded with their author, sent as `cmd` events.

An action is a row in the store first (so `vv fleet ack` works while the service is down, and
every action keeps its author); the service turns each pending row into a `cmd.<node>.<verb>` event
for its device. A 3.1.1 bridge strips MQTT 5 expiry, so each carries `until` in its data: the edge
ignores it after that (a silence's end, else `console.command_ttl_s` from when it was given).
The args of each command are defined in schemas/cmd.schema.json's `$defs` and checked here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bus.envelope import JSON, Event, parse_time, rfc3339
from bus.schemas import validate_command_args
from nodes.console.store import Action, AlertState, ConsoleStore

SILENCE_KEYS = ("dedup_key", "source_component", "title")  # what the device's alerter matches on
TARGET_KEY = "device"  # a matcher on the device chooses where the silence goes
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


class ActionError(ValueError):
    """An action cannot be recorded as given; the message says why."""


def command_event(action: Action, epoch: int, seq: int) -> Event:
    """The cmd event of an action: for its device, from `vv://<device>/console`."""
    validate_command_args(action.kind, action.args)
    data: dict[str, Any] = {"args": action.args, "until": action.until, "author": action.author}
    if action.comment:
        data["reason"] = action.comment
    return Event(
        type=action.kind,
        source=f"vv://{action.device}/console",
        device=action.device,
        epoch=epoch,
        seq=seq,
        data=data,
        datacontenttype=JSON,
    )


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `2h`, `1d12h`: seconds; ActionError otherwise."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise ActionError(f"duration {text!r} is not like 90s, 15m, 2h or 1d12h")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    if total <= 0:
        raise ActionError("a duration must be longer than 0s")
    return total


def parse_moment(text: str, now: float, default: float) -> float:
    """An RFC 3339 time, or a duration back from now (2h, 1d), as seconds since the epoch;
    `default` when empty; ActionError otherwise."""
    if not text:
        return default
    try:
        return now - parse_duration(text)
    except ActionError:
        pass
    try:
        return parse_time(text).timestamp()
    except ValueError:
        raise ActionError(f"{text!r} is neither an RFC 3339 time nor a duration like 2h") from None


def alert_ref(alert: AlertState) -> str:
    """How people name a folded alert: `<device>:<first 12 digits of its dedup_key>`."""
    return f"{alert.device}:{alert.dedup_key[:12]}"


def parse_ref(ref: str) -> tuple[str, str]:
    """(device, dedup_key prefix) of `device:key prefix` (6 or more hex digits); ActionError otherwise."""
    device, _, prefix = ref.rpartition(":")
    if not device or not re.fullmatch(r"[0-9a-f]{6,64}", prefix):
        raise ActionError(f"{ref!r} is not DEVICE:KEY (the ALERT column of `vv fleet alerts`)")
    return device, prefix


def find_alert(store: ConsoleStore, ref: str) -> AlertState:
    """The one alert `ref` names; ActionError otherwise."""
    device, prefix = parse_ref(ref)
    matches = [a for a in store.alerts(device=device) if a.dedup_key.startswith(prefix)]
    if len(matches) != 1:
        raise ActionError(f"{ref!r} names {'no' if not matches else len(matches)} alerts")
    return matches[0]


def record_command(
    store: ConsoleStore,
    kind: str,
    device: str,
    args: dict[str, Any],
    author: str,
    comment: str,
    now: float,
    ttl_s: float,
) -> int:
    """Record a command for one device (resync, pause/resume ingest, resend...), valid for `ttl_s`."""
    validate_command_args(kind, args)
    until = rfc3339(datetime.fromtimestamp(now, UTC) + timedelta(seconds=ttl_s))
    return store.add_action(now, author, kind, device, args, until, comment)


def record_ack(
    store: ConsoleStore, alert: AlertState, author: str, comment: str, now: float, ttl_s: float
) -> int:
    """Record an ack: the device's alerter mutes the alert until it resolves."""
    args: dict[str, Any] = {"dedup_key": alert.dedup_key}
    if comment:
        args["comment"] = comment
    return record_command(store, "cmd.alerter.ack", alert.device, args, author, comment, now, ttl_s)


def parse_matchers(texts: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """`key=value` matchers: the alerter's matcher, and the devices named by `device=` (may repeat)."""
    matcher: dict[str, str] = {}
    devices: list[str] = []
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not value or key.endswith(("!", "~")) or value.startswith("~"):
            raise ActionError(
                f"matcher {text!r} is not KEY=VALUE (only equality: the device's alerter matches exactly)"
            )
        if key == TARGET_KEY:
            devices.append(value)
        elif key in SILENCE_KEYS:
            matcher[key] = value
        else:
            raise ActionError(f"matcher key {key!r} is not one of {TARGET_KEY}, {', '.join(SILENCE_KEYS)}")
    if not matcher:
        raise ActionError(
            f"a silence needs a matcher on {', '.join(SILENCE_KEYS)} (device= only chooses where)"
        )
    return matcher, devices


def record_silence(
    store: ConsoleStore,
    matcher: dict[str, str],
    devices: Sequence[str],
    duration_s: float,
    author: str,
    comment: str,
    now: float,
) -> list[int]:
    """Record one silence per device (all known devices when none is named); returns action ids."""
    targets = list(devices) or [state.device for state in store.devices()]
    if not targets:
        raise ActionError("no device known to the console yet: name one with device=ID")
    until = rfc3339(datetime.fromtimestamp(now + duration_s, UTC))
    args = {"matcher": matcher, "until": until}
    validate_command_args("cmd.alerter.silence", args)
    with store.transaction():
        return [
            store.add_action(now, author, "cmd.alerter.silence", device, args, until, comment)
            for device in targets
        ]


def active_silences(store: ConsoleStore, now: float) -> list[Action]:
    """Silences not yet expired, as recorded (shown centrally beside the alerts they mute)."""
    return [
        action
        for action in store.actions()
        if action.kind == "cmd.alerter.silence" and parse_time(action.until).timestamp() > now
    ]


def silenced_by(alert: AlertState, silences: Sequence[Action]) -> Action | None:
    """The silence muting `alert`, if any: same device and every matcher field equal."""
    for silence in silences:
        matcher = silence.args["matcher"]
        fields = {
            "dedup_key": alert.dedup_key,
            "source_component": alert.source_component,
            "title": alert.title,
        }
        if silence.device == alert.device and all(fields[key] == value for key, value in matcher.items()):
            return silence
    return None
