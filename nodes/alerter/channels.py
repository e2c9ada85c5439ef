"""Where notifications go: Apprise URLs, a Prometheus Alertmanager, PagerDuty Events v2.

Channels are configured by one setting, `alerter.channels` (env `VV_ALERTER_CHANNELS`), which
is either a JSON list of channel tables or the path of a `.toml` file (`[[channels]]` tables) or
a `.json` file (a list, or `{"channels": [...]}`). Each table has a `kind` and:

| kind | keys | what is sent |
| --- | --- | --- |
| `apprise` | `url` or `urls` (any Apprise URL: slack://, tgram://, mailto://, ntfy://, discord://, json:// and jsons:// for generic webhooks, ...) | one text message per group update |
| `alertmanager` | `url` (base URL, e.g. http://am:9093), `resend_s` (default 60) | `POST /api/v2/alerts`; firing alerts are re-sent every `resend_s` (Alertmanager resolves what it stops hearing about after its resolve_timeout), resolved ones carry `endsAt` |
| `pagerduty` | `routing_key`, `url` (default the Events v2 endpoint) | one event per alert, our alert id as `dedup_key`: `trigger`, then `resolve` |

Common keys: `name` (default: the kind, numbered when a kind repeats; it names the channel's
queue, so keep it stable), `min_severity` (INFO, WARNING (default), ERROR, CRITICAL).
Example: `VV_ALERTER_CHANNELS='[{"kind": "apprise", "url": "ntfy://ntfy.sh/my-edge", "min_severity": "ERROR"}]'`.

`send` is blocking (the node runs it in a thread, with a timeout: Apprise's per-service throttle,
several seconds between posts for many services, sleeps there, never in the event loop; grouping
keeps the number of posts low) and raises `ChannelError`; `retryable=False` means the
service refused the notification itself (HTTP 4xx other than 408/429): retrying cannot help.
"""

from __future__ import annotations

import json
import re
import tomllib
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import apprise

from bus.alerts import SEVERITIES, Severity
from bus.config import ConfigError
from bus.inputs import InputError, read_text_file

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
SETTING = "alerter.channels"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
COMMON_KEYS = {"kind", "name", "min_severity"}
PD_SEVERITY = {"INFO": "info", "WARNING": "warning", "ERROR": "error", "CRITICAL": "critical"}


class ChannelError(Exception):
    """A notification was not delivered; `retryable` says whether trying again can help."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Channel(ABC):
    """One destination of notifications, with the lowest severity it wants."""

    kind: ClassVar[str]
    resend_s: float | None = None  # re-send firing alerts this often (a receiver that expires them)

    def __init__(self, name: str, min_severity: Severity) -> None:
        self.name, self.min_severity = name, min_severity

    @abstractmethod
    def send(self, alerts: Sequence[Mapping[str, Any]], group: str, timeout: float) -> None:
        """Deliver the alerts of one group update (blocking); raise ChannelError if not delivered."""

    @abstractmethod
    def target(self) -> str:
        """Where it sends, without secrets (for health and logs)."""


# ----------------------------------------------------------------- rendering for people
def render_alert(alert: Mapping[str, Any]) -> str:
    """One alert as plain text: what, where, how often, what to do, and its id for the logs."""
    resolved = alert["status"] == "resolved"
    lines = [
        f"[{'RESOLVED' if resolved else 'FIRING'}] {alert['severity']}: {alert['title']}",
        f"device: {alert['hostname']} · source: {alert['source_component']} · count: {alert['count']}"
        f" · since: {alert.get('starts_at') or alert['timestamp']}"
        + (f" · resolved: {alert['ends_at']}" if resolved and alert.get("ends_at") else ""),
    ]
    if alert.get("message_details"):
        lines.append(str(alert["message_details"]))
    if alert.get("suggested_actions"):
        lines.append("Suggested actions:")
        lines.extend(f"- {action}" for action in alert["suggested_actions"])
    if alert.get("context"):
        lines.append("Context: " + ", ".join(f"{k}={v}" for k, v in sorted(alert["context"].items())))
    lines.append(f"Alert id: {alert['alert_id']}")
    return "\n".join(lines)


def render_message(alerts: Sequence[Mapping[str, Any]], group: str) -> tuple[str, str, apprise.NotifyType]:
    """Title, body and Apprise type of one group update."""
    firing = [a for a in alerts if a["status"] == "firing"]
    worst = max((a["severity"] for a in firing or alerts), key=SEVERITIES.index)
    if len(alerts) == 1:
        alert = alerts[0]
        label = "RESOLVED" if alert["status"] == "resolved" else alert["severity"]
        title = f"[{label}] {alert['title']} on {alert['hostname']}"
        if alert["count"] > 1:
            title += f" (x{alert['count']})"
    else:
        title = f"[{worst}] {group}: {len(firing)} firing, {len(alerts) - len(firing)} resolved"
    if not firing:
        kind = apprise.NotifyType.SUCCESS
    elif worst in ("ERROR", "CRITICAL"):
        kind = apprise.NotifyType.FAILURE
    else:
        kind = apprise.NotifyType.WARNING if worst == "WARNING" else apprise.NotifyType.INFO
    return title, "\n\n---\n\n".join(render_alert(a) for a in alerts), kind


# ----------------------------------------------------------------- channels
class AppriseChannel(Channel):
    """Any service Apprise knows, by URL; Apprise's own per-service throttle applies (in our thread)."""

    kind = "apprise"

    def __init__(self, name: str, min_severity: Severity, urls: Sequence[str]) -> None:
        super().__init__(name, min_severity)
        self.apprise = apprise.Apprise()
        self._targets: list[str] = []
        for index, url in enumerate(urls):
            plugin = apprise.Apprise.instantiate(url)
            if plugin is None:
                scheme = url.split("://", 1)[0] if "://" in url else "?"
                raise ConfigError(f"urls[{index}]: Apprise does not understand this URL (scheme {scheme!r})")
            self.apprise.add(plugin)
            self._targets.append(plugin.url(privacy=True))  # type: ignore[no-untyped-call]

    def send(self, alerts: Sequence[Mapping[str, Any]], group: str, timeout: float) -> None:
        title, body, kind = render_message(alerts, group)
        result = self.apprise.notify(
            body=body, title=title, notify_type=kind, body_format=apprise.NotifyFormat.TEXT, timeout=timeout
        )
        with result:
            if not result:
                problems = [e.message for e in result.logs() if e.level in ("WARNING", "ERROR", "CRITICAL")]
                raise ChannelError(problems[-1] if problems else f"not delivered ({result.status.name})")

    def target(self) -> str:
        return ", ".join(self._targets)


def post_json(url: str, body: Any, timeout: float) -> None:
    """POST a JSON document; HTTP errors become ChannelError (4xx other than 408/429: not retryable)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "vv-edge-alerter"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip()
        retryable = exc.code in (408, 429) or exc.code >= 500
        raise ChannelError(f"HTTP {exc.code} from {redact_url(url)}: {detail}", retryable) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise ChannelError(f"{redact_url(url)}: {reason}") from None


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class AlertmanagerChannel(Channel):
    """Thin client of the Alertmanager v2 API: it groups, routes and dedupes on its side."""

    kind = "alertmanager"

    def __init__(self, name: str, min_severity: Severity, url: str, resend_s: float) -> None:
        super().__init__(name, min_severity)
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.resend_s = resend_s

    @staticmethod
    def payload(alert: Mapping[str, Any]) -> dict[str, Any]:
        item: dict[str, Any] = {
            "labels": {
                "alertname": alert["title"],
                "severity": str(alert["severity"]).lower(),
                "device": alert["hostname"],
                "source_component": alert["source_component"],
                "dedup_key": alert["dedup_key"],
            },
            "annotations": {
                "summary": alert["title"],
                "description": alert["message_details"],
                "suggested_actions": "\n".join(alert["suggested_actions"]),
                "context": json.dumps(alert["context"], sort_keys=True, default=str),
                "count": str(alert["count"]),
            },
            "startsAt": alert.get("starts_at") or alert["timestamp"],
        }
        if alert["status"] == "resolved":
            item["endsAt"] = alert.get("ends_at") or alert["timestamp"]
        return item

    def send(self, alerts: Sequence[Mapping[str, Any]], group: str, timeout: float) -> None:
        post_json(self.url, [self.payload(a) for a in alerts], timeout)

    def target(self) -> str:
        return redact_url(self.url)


class PagerDutyChannel(Channel):
    """PagerDuty Events v2: our alert id is the dedup_key, so our resolve closes the incident."""

    kind = "pagerduty"

    def __init__(self, name: str, min_severity: Severity, routing_key: str, url: str) -> None:
        super().__init__(name, min_severity)
        self.routing_key, self.url = routing_key, url

    def event(self, alert: Mapping[str, Any]) -> dict[str, Any]:
        if alert["status"] == "resolved":
            return {
                "routing_key": self.routing_key,
                "event_action": "resolve",
                "dedup_key": alert["alert_id"],
            }
        return {
            "routing_key": self.routing_key,
            "event_action": "trigger",
            "dedup_key": alert["alert_id"],
            "client": "VV Edge",
            "payload": {
                "summary": f"{alert['title']} on {alert['hostname']}"[:1024],
                "source": alert["hostname"],
                "severity": PD_SEVERITY[alert["severity"]],
                "component": alert["source_component"],
                "timestamp": alert.get("starts_at") or alert["timestamp"],
                "custom_details": {
                    "message": alert["message_details"],
                    "count": alert["count"],
                    "suggested_actions": alert["suggested_actions"],
                    "context": alert["context"],
                },
            },
        }

    def send(self, alerts: Sequence[Mapping[str, Any]], group: str, timeout: float) -> None:
        for alert in alerts:  # a retry re-sends all of them: PagerDuty dedupes by dedup_key
            post_json(self.url, self.event(alert), timeout)

    def target(self) -> str:
        return redact_url(self.url)


# ----------------------------------------------------------------- configuration
def read_channel_tables(value: str) -> list[dict[str, Any]]:
    """The channel tables of the setting: inline JSON, or a .toml/.json file."""
    text = value.strip()
    if not text:
        return []
    tables: Any
    if text.startswith("["):
        try:
            tables = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{SETTING}: not a valid JSON list: {exc}") from None
    else:
        path = Path(text).expanduser()
        try:
            raw = read_text_file(path)
        except InputError as exc:
            raise ConfigError(f"{SETTING}: cannot read the file: {exc}") from None
        try:
            if path.suffix == ".toml":
                tables = tomllib.loads(raw).get("channels", [])
            elif path.suffix == ".json":
                doc = json.loads(raw)
                tables = doc.get("channels", []) if isinstance(doc, dict) else doc
            else:
                raise ConfigError(f"{SETTING}: {path} must be a .toml or .json file, or give a JSON list")
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{SETTING}: {path} is not valid: {exc}") from None
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{SETTING}: expected a list of channel tables")
    return tables


def _string(table: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"{where}.{key}: {'missing' if value is None else repr(value) + ' is not'} a non-empty string"
        )
    return value


def _one_token(url: str) -> bool:
    """A URL is one printable token: a space or "\\n" in it is a paste mistake or an injection."""
    return url.isprintable() and not any(c.isspace() for c in url)


def _http_url(url: str, where: str) -> str:
    """An http(s) URL with a host, checked at start (before: "http://" passed, and "http://[x"
    raised ValueError from urlsplit, a traceback, at the first alert or at start)."""
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and _one_token(url)
        port_ok = parts.port is None or parts.port > 0  # .port raises ValueError when out of range
    except ValueError as exc:
        raise ConfigError(f"{where}.url: not a valid URL ({exc})") from None  # unparsed: may hold a secret
    if not (valid and port_ok):
        raise ConfigError(f"{where}.url: {redact_url(url)!r} is not an http(s) URL with a host")
    return url


def build_channel(table: Mapping[str, Any], name: str, where: str) -> Channel:
    """One channel from its table; every mistake is a ConfigError naming the key."""
    kind = table.get("kind")
    allowed = {
        "apprise": {"url", "urls"},
        "alertmanager": {"url", "resend_s"},
        "pagerduty": {"routing_key", "url"},
    }
    if kind not in allowed:
        raise ConfigError(f"{where}.kind: {kind!r} is not one of {', '.join(allowed)}")
    unknown = sorted(set(table) - COMMON_KEYS - allowed[kind])
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} for kind {kind}")
    severity = table.get("min_severity", "WARNING")
    if severity not in SEVERITIES:
        raise ConfigError(f"{where}.min_severity: {severity!r} is not one of {', '.join(SEVERITIES)}")
    if kind == "apprise":
        urls = table.get("urls", [table["url"]] if "url" in table else [])
        if isinstance(urls, str):
            urls = [urls]
        if not urls or not all(isinstance(u, str) and u for u in urls):
            raise ConfigError(f"{where}: an apprise channel needs `url` or `urls` (non-empty strings)")
        for index, url in enumerate(urls):
            if not _one_token(url):
                raise ConfigError(f"{where}.urls[{index}]: holds spaces or control characters")
        try:
            return AppriseChannel(name, severity, urls)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None
    url = _http_url(_string(table, "url", where, PAGERDUTY_URL if kind == "pagerduty" else None), where)
    if kind == "alertmanager":
        resend = table.get("resend_s", 60.0)
        if isinstance(resend, bool) or not isinstance(resend, int | float) or resend <= 0:
            raise ConfigError(f"{where}.resend_s: {resend!r} is not a positive number")
        return AlertmanagerChannel(name, severity, url, float(resend))
    return PagerDutyChannel(name, severity, _string(table, "routing_key", where), url)


def load_channels(value: str) -> list[Channel]:
    """Every channel of the `alerter.channels` setting, with unique, stable names."""
    tables = read_channel_tables(value)
    kinds = Counter(str(t.get("kind")) for t in tables)
    seen: Counter[str] = Counter()
    channels: list[Channel] = []
    for index, table in enumerate(tables):
        where = f"{SETTING}[{index}]"
        kind = str(table.get("kind"))
        seen[kind] += 1
        name = table.get("name", kind if kinds[kind] == 1 else f"{kind}-{seen[kind]}")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ConfigError(f"{where}.name: {name!r} must be 1-64 letters, digits, '_', '.', '-'")
        if any(c.name == name for c in channels):
            raise ConfigError(f"{where}.name: {name!r} is used twice")
        channels.append(build_channel(table, name, where))
    return channels
