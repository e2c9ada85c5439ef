"""What each page shows, as plain JSON-able data read from the store: the fleet grid's tiles, the
alerts grouped and filtered, one device, the history. No HTTP here, so it is tested without a server.

A device's state, worst first: offline (its bridge reports the link down, or every node said
goodbye), stale (health stopped), critical / error (firing alerts), degraded (some nodes offline),
warning, ok, unknown (nothing heard yet). The page sorts tiles by it, then by firing counts.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from bus.envelope import rfc3339
from nodes.console.actions import active_silences, alert_ref, silenced_by
from nodes.console.registry import Enrolled, Registry
from nodes.console.store import AlertState, ConsoleStore, DeviceState, HistoryEntry, NodeHealth

SEVERITIES = ("CRITICAL", "ERROR", "WARNING", "INFO")
STATES = ("offline", "stale", "critical", "error", "degraded", "warning", "ok", "unknown")
GROUPS = {"severity": "severity", "device": "device", "component": "source_component"}


def stamp(when: float | None) -> str | None:
    return None if when is None else rfc3339(datetime.fromtimestamp(when, UTC))


def device_state(state: DeviceState, nodes: list[NodeHealth], firing: Counter[str]) -> str:
    """One word for a tile's colour (see the module's docstring for the order)."""
    if state.link == "down" or (nodes and all(n.status == "offline" for n in nodes)):
        return "offline"
    if state.stale:
        return "stale"
    if firing["CRITICAL"]:
        return "critical"
    if firing["ERROR"]:
        return "error"
    if any(n.status != "online" for n in nodes):
        return "degraded"
    if firing["WARNING"]:
        return "warning"
    return "ok" if nodes or state.link == "up" else "unknown"


def _offline(state: DeviceState | None) -> bool:
    return state is not None and (state.link == "down" or state.stale)


def tiles(
    store: ConsoleStore, registry: Registry, query: Mapping[str, str], only: Collection[str] | None = None
) -> dict[str, Any]:
    """The fleet grid: one tile per device seen or enrolled, worst first; `site`/`tag` filter,
    `group` (site or tag) groups. `only` names the devices a live update needs (a few reads each,
    instead of the whole fleet's)."""
    registry.refresh()
    health: dict[str, list[NodeHealth]] = {}
    firing: dict[str, Counter[str]] = {}
    if only is None:
        states = {s.device: s for s in store.devices()}
        for device in registry.devices:
            states.setdefault(device, DeviceState(device))
        nodes: list[NodeHealth] = store.health()
        alerts = store.alerts(status="firing")
    else:
        found = {name: store.device(name) for name in only}
        states = {n: s or DeviceState(n) for n, s in found.items() if s is not None or n in registry.devices}
        nodes = [node for name in states for node in store.health(name)]
        alerts = [alert for name in states for alert in store.alerts(device=name, status="firing")]
    for node in nodes:
        health.setdefault(node.device, []).append(node)
    for alert in alerts:
        firing.setdefault(alert.device, Counter())[alert.severity] += 1
    rows: list[dict[str, Any]] = []
    for device, state in states.items():
        enrolled = registry.devices.get(device)
        if query.get("site") and (enrolled.site if enrolled else "") != query["site"]:
            continue
        if query.get("tag") and (enrolled is None or query["tag"] not in enrolled.tags):
            continue
        rows.append(_tile(state, enrolled, health.get(device, []), firing.get(device)))
    rows.sort(
        key=lambda r: (STATES.index(r["state"]), *(-r["firing"].get(s, 0) for s in SEVERITIES), r["device"])
    )
    group = query.get("group", "")
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        keys = [row["site"]] if group == "site" else row["tags"] if group == "tag" else [""]
        for key in keys or [""]:
            groups.setdefault(key, []).append(row)
    return {
        "groups": [{"name": name, "devices": devices} for name, devices in groups.items()],
        "totals": dict(Counter(row["state"] for row in rows)),
        "sites": sorted({e.site for e in registry.devices.values() if e.site}),
        "tags": sorted({t for e in registry.devices.values() for t in e.tags}),
    }


def _tile(
    state: DeviceState, enrolled: Enrolled | None, nodes: list[NodeHealth], firing: Counter[str] | None
) -> dict[str, Any]:
    counts = firing or Counter()
    return {
        "device": state.device,
        "state": device_state(state, nodes, counts),
        "link": state.link,
        "stale": state.stale,
        **_enrolment(enrolled),
        "nodes_online": sum(1 for n in nodes if n.status == "online"),
        "nodes_total": len(nodes),
        "firing": {sev: counts[sev] for sev in SEVERITIES if counts[sev]},
        "chain": _chain(state),
        "last_seen": stamp(state.last_seen),
        "version": state.version,
    }


def _enrolment(enrolled: Enrolled | None) -> dict[str, Any]:
    """What the registry says of a device, as its tile and its page show it."""
    return {
        "site": enrolled.site if enrolled else "",
        "tags": list(enrolled.tags) if enrolled else [],
        "enrolled": enrolled is not None,
        "revoked": enrolled.revoked if enrolled else "",
    }


def _chain(state: DeviceState) -> dict[str, Any] | None:
    if state.chain_seq is None:
        return None
    return {
        "seq": state.chain_seq,
        "hash": state.chain_hash,
        "base": state.chain_base,
        "verified": state.chain_verified,
    }


def alert_row(alert: AlertState, state: DeviceState | None, silences: list[Any]) -> dict[str, Any]:
    """An alert as the page shows it, with why it is muted (ack, silence, its device offline)."""
    muted: list[dict[str, Any]] = []
    if alert.acked_by:
        muted.append({"why": "ack", "by": alert.acked_by, "at": stamp(alert.acked_at)})
    silence = silenced_by(alert, silences)
    if silence is not None:
        muted.append(
            {"why": "silence", "by": silence.author, "until": silence.until, "comment": silence.comment}
        )
    if alert.status == "firing" and alert.source_component != "console" and _offline(state):
        muted.append({"why": "device offline", "by": "", "detail": "its alerts wait on the device"})
    return {
        "ref": alert_ref(alert),
        "device": alert.device,
        "dedup_key": alert.dedup_key,
        "severity": alert.severity,
        "component": alert.source_component,
        "title": alert.title,
        "details": alert.details,
        "status": alert.status,
        "count": alert.count,
        "first_seen": stamp(alert.first_seen),
        "last_seen": stamp(alert.last_seen),
        "changed": stamp(alert.changed),
        "muted": muted,
    }


def alerts(store: ConsoleStore, query: Mapping[str, str], now: float) -> dict[str, Any]:
    """Alerts filtered by the URL's severity, device, component, status (firing | resolved | all),
    muted (show | hide), grouped by `group` (severity, device, component) with folded counts."""
    status = query.get("status", "firing")
    states = {s.device: s for s in store.devices()}
    silences = active_silences(store, now)
    rows = []
    for alert in store.alerts(device=query.get("device") or None, status=None if status == "all" else status):
        if query.get("severity") and alert.severity != query["severity"].upper():
            continue
        if query.get("component") and alert.source_component != query["component"]:
            continue
        row = alert_row(alert, states.get(alert.device), silences)
        if query.get("muted") == "hide" and row["muted"]:
            continue
        rows.append(row)
    rows.sort(key=lambda r: (_rank(r["severity"]), r["status"] != "firing", r["device"], r["title"]))
    field = GROUPS.get(query.get("group", "severity"), "severity")
    key = "component" if field == "source_component" else field
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    order = sorted(groups, key=lambda g: (_rank(g), g)) if key == "severity" else sorted(groups)
    return {
        "group": key,
        "groups": [
            {
                "name": name,
                "alerts": groups[name],
                "count": len(groups[name]),
                "events": sum(r["count"] for r in groups[name]),
            }
            for name in order
        ],
        "silences": [
            {
                "device": s.device,
                "matcher": s.args["matcher"],
                "until": s.until,
                "by": s.author,
                "comment": s.comment,
            }
            for s in silences
        ],
    }


def _rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


def device(
    store: ConsoleStore, registry: Registry, name: str, loglines: list[dict[str, Any]], now: float
) -> dict[str, Any] | None:
    """One device: its nodes and their health details, its alerts, recent LogLines, chain status."""
    registry.refresh()
    state = store.device(name)
    enrolled = registry.devices.get(name)
    if state is None and enrolled is None:
        return None
    state = state or DeviceState(name)
    nodes = store.health(name)
    every = store.alerts(device=name)
    firing = Counter(a.severity for a in every if a.status == "firing")
    silences = active_silences(store, now)
    return {
        "device": name,
        "state": device_state(state, nodes, firing),
        "link": state.link,
        "link_changed": stamp(state.link_changed),
        "stale": state.stale,
        "last_seen": stamp(state.last_seen),
        "health_at": stamp(state.health_at),
        "version": state.version,
        "disk": state.disk,
        **_enrolment(enrolled),
        "keys": sorted(enrolled.keys) if enrolled else [],
        "chain": _chain(state),
        "nodes": [
            {
                "node": n.node,
                "status": n.status,
                "time": n.time,
                "seen": stamp(n.seen),
                "interval_s": n.interval_s,
                "version": n.version,
                "details": n.document.get("details", {}),
            }
            for n in nodes
        ],
        "alerts": [alert_row(a, state, silences) for a in every],
        "loglines": [{**line, "at": stamp(line.get("at"))} for line in loglines],
    }


HISTORY_FIELDS = ("at", "device", "kind", "key", "severity", "title", "change", "detail")


def history(
    store: ConsoleStore, since: float, until: float, query: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Alert and device state changes in [since, until), optionally of one device or kind, newest first."""
    entries: list[HistoryEntry] = store.history(device=query.get("device") or None, since=since)
    kind = query.get("kind", "")
    rows = [
        {**asdict(e), "at": stamp(e.at)} for e in entries if e.at < until and (not kind or e.kind == kind)
    ]
    rows.reverse()
    return rows


def history_csv(rows: list[dict[str, Any]]) -> str:
    """RFC 4180 CSV; a cell a spreadsheet would run as a formula (titles come from devices) is quoted
    with a leading apostrophe."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HISTORY_FIELDS, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row[k]) for k in HISTORY_FIELDS})
    return out.getvalue()


def _cell(value: Any) -> Any:
    return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
