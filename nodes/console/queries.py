"""The console's queries, mounted by `vv fleet`: status, alerts, ack, silence, history.

They read the console's store beside the running service (SQLite WAL: readers never block it);
`ack` and `silence` only record an action with its author, which the service sends to the devices
as a `cmd` (at once, or when the central broker is reachable again; even if given while it is down).
Exit codes: 0 ok, 1 a failure found (`status`: a device down or stale) or no store yet, 2 bad usage.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from bus.config import load_settings
from bus.envelope import rfc3339
from nodes.console.actions import (
    ActionError,
    active_silences,
    alert_ref,
    find_alert,
    parse_duration,
    parse_matchers,
    parse_moment,
    parse_ref,
    record_ack,
    record_silence,
    silenced_by,
)
from nodes.console.registry import Registry
from nodes.console.service import open_store, store_name, store_path
from nodes.console.settings import ConsoleSettings
from nodes.console.store import ConsoleStore, StoreError

SEVERITIES = ("CRITICAL", "ERROR", "WARNING", "INFO")


def _stamp(when: float | None) -> str:
    return rfc3339(datetime.fromtimestamp(when, UTC)) if when is not None else "-"


def _store() -> ConsoleStore | None:
    settings = load_settings()
    path = store_path(settings)
    if not settings.section(ConsoleSettings).database_url and not path.exists():
        print(
            f"vv fleet: no console store at {path}: run `vv console` with this VV_HOME first", file=sys.stderr
        )
        return None
    try:
        return open_store(settings)
    except StoreError as exc:
        print(f"vv fleet: console store {store_name(settings)}: {exc}", file=sys.stderr)
        return None


def _author(args: argparse.Namespace) -> str:
    return str(args.author or getpass.getuser())


# ------------------------------------------------------------------ status
def _status_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _status(args: argparse.Namespace) -> int:
    store = _store()
    if store is None:
        return 1
    settings = load_settings()
    registry = Registry(settings.section(ConsoleSettings).registry_path(settings.paths.home))
    registry.refresh()
    rows: list[dict[str, Any]] = []
    for state in store.devices():
        enrolled = registry.devices.get(state.device)
        nodes = store.health(state.device)
        firing = Counter(a.severity for a in store.alerts(device=state.device, status="firing"))
        rows.append(
            {
                "device": state.device,
                "link": state.link,
                "link_incident": state.link_incident,
                "stale": state.stale,
                "nodes_online": sum(1 for n in nodes if n.status != "offline"),
                "nodes_total": len(nodes),
                "firing": {severity: firing[severity] for severity in SEVERITIES if firing[severity]},
                "chain_head": None
                if state.chain_seq is None
                else {"seq": state.chain_seq, "hash": state.chain_hash, "verified": state.chain_verified},
                "last_seen": _stamp(state.last_seen),
                "version": state.version,
                "disk": state.disk,
                "revoked": enrolled.revoked if enrolled else "",
            }
        )
    store.close()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'DEVICE':<20} {'LINK':<7} {'NODES':<6} {'FIRING':<22} {'CHAIN HEAD':<22} LAST SEEN")
        for row in rows:
            counts = " ".join(f"{sev[0]}:{n}" for sev, n in row["firing"].items()) or "-"
            head = row["chain_head"]
            chain = (
                "-" if head is None else f"{head['seq']}:{head['hash'][:12]}{'' if head['verified'] else '?'}"
            )
            link = "revoked" if row["revoked"] else row["link"] + ("*" if row["stale"] else "")
            online = f"{row['nodes_online']}/{row['nodes_total']}"
            print(f"{row['device']:<20} {link:<7} {online:<6} {counts:<22} {chain:<22} {row['last_seen']}")
    return 1 if any(row["link"] == "down" or row["stale"] for row in rows) else 0


# ------------------------------------------------------------------ alerts
def _alerts_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--severity", type=str.upper, choices=SEVERITIES, help="only this severity")
    parser.add_argument("--device", help="only this device")
    parser.add_argument("--all", action="store_true", help="resolved alerts too (default: firing only)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _alerts(args: argparse.Namespace) -> int:
    store = _store()
    if store is None:
        return 1
    silences = active_silences(store, time.time())
    alerts = store.alerts(device=args.device, status=None if args.all else "firing")
    rows: list[dict[str, Any]] = []
    for alert in alerts:
        if args.severity and alert.severity != args.severity:
            continue
        silence = silenced_by(alert, silences)
        muted: dict[str, str] = {"acked_by": alert.acked_by} if alert.acked_by else {}
        if silence is not None:
            muted = {**muted, "silenced_by": silence.author, "silenced_until": silence.until}
        rows.append(
            {
                "ref": alert_ref(alert),
                **{k: v for k, v in asdict(alert).items() if k not in ("document", "acked_at")},
                "first_seen": _stamp(alert.first_seen),
                "last_seen": _stamp(alert.last_seen),
                "changed": _stamp(alert.changed),
                "muted": muted,
            }
        )
    store.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'ALERT':<26} {'SEVERITY':<9} {'STATUS':<9} {'COUNT':>5} {'LAST SEEN':<25} {'MUTED':<6} TITLE")
    for row in rows:
        mark = "ack" if row["muted"].get("acked_by") else ""
        mark = "sil" if "silenced_by" in row["muted"] else mark
        print(
            f"{row['ref']:<26} {row['severity']:<9} {row['status']:<9} {row['count']:>5} {row['last_seen']:<25}"
            f" {mark:<6} {row['title']}"
        )
    return 0


# ------------------------------------------------------------------ ack and silence
def _ack_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("alert", metavar="ALERT", help="DEVICE:KEY, the ALERT column of `vv fleet alerts`")
    parser.add_argument("--comment", default="", help="why (kept with the action)")
    parser.add_argument("--author", help="who acks (default: your login name)")


def _ack(args: argparse.Namespace) -> int:
    try:
        parse_ref(args.alert)
    except ActionError as exc:
        print(f"vv fleet ack: {exc}", file=sys.stderr)
        return 2
    store = _store()
    if store is None:
        return 1
    settings = load_settings()
    try:
        alert = find_alert(store, args.alert)
        action = record_ack(
            store,
            alert,
            _author(args),
            args.comment,
            time.time(),
            settings.section(ConsoleSettings).command_ttl_s,
        )
    except ActionError as exc:
        print(f"vv fleet ack: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(
        f"ack of {alert_ref(alert)} ({alert.title}) recorded as action {action}: the console sends it to {alert.device}"
    )
    return 0


def _silence_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "matchers",
        nargs="+",
        metavar="MATCHER",
        help="KEY=VALUE on title, source_component or dedup_key; device=ID targets",
    )
    parser.add_argument("--for", dest="duration", required=True, metavar="DURATION", help="e.g. 30m, 2h, 1d")
    parser.add_argument("--comment", required=True, help="why (shown beside the muted alerts)")
    parser.add_argument("--author", help="who silences (default: your login name)")


def _silence(args: argparse.Namespace) -> int:
    try:
        matcher, devices = parse_matchers(args.matchers)
        duration = parse_duration(args.duration)
    except ActionError as exc:
        print(f"vv fleet silence: {exc}", file=sys.stderr)
        return 2
    store = _store()
    if store is None:
        return 1
    try:
        ids = record_silence(store, matcher, devices, duration, _author(args), args.comment, time.time())
    except ActionError as exc:
        print(f"vv fleet silence: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"silence recorded as action(s) {', '.join(map(str, ids))}: the console sends it to the device(s)")
    return 0


# ------------------------------------------------------------------ history
def _history_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="only this device")
    parser.add_argument("--since", help="RFC 3339 time, or a duration back from now (e.g. 2h); default: 1d")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _history(args: argparse.Namespace) -> int:
    try:
        now = time.time()
        since = parse_moment(args.since or "", now, now - 86400)
    except ActionError as exc:
        print(f"vv fleet history: {exc}", file=sys.stderr)
        return 2
    store = _store()
    if store is None:
        return 1
    entries = store.history(device=args.device, since=since)
    store.close()
    if args.json:
        print(json.dumps([{**asdict(e), "at": _stamp(e.at)} for e in entries], indent=2))
        return 0
    for entry in entries:
        what = f"{entry.severity} {entry.title}" if entry.kind == "alert" else entry.title
        print(f"{_stamp(entry.at)}  {entry.device:<20} {entry.change:<11} {what}")
    return 0


Query = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]
QUERIES: dict[str, Query] = {
    "status": (
        _status_args,
        _status,
        "one line per device: link, nodes, firing alerts, chain head, last seen",
    ),
    "alerts": (_alerts_args, _alerts, "the fleet's alerts, folded, with who muted them"),
    "ack": (_ack_args, _ack, "acknowledge an alert until it resolves (sent to the device's alerter)"),
    "silence": (
        _silence_args,
        _silence,
        "silence matching alerts for a while (sent to the devices' alerters)",
    ),
    "history": (_history_args, _history, "alert and device state changes"),
}
