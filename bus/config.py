"""Settings: one TOML file (`VV_CONFIG`) plus `VV_<SECTION>_<KEY>` overrides, validated at start.

A bad key or value raises `ConfigError` with one line naming the key, so a mistyped setting
stops the process instead of being silently ignored.

Here live the core (device, home, log_level, mqtt, bus, broker) and the loader. Each node declares
its own section beside its code (`nodes/scan/settings.py`), a frozen dataclass registered with
`@section("scan")`; `import nodes` registers them all before settings load (bus never imports
nodes), and a node reads its section typed: `settings.section(ScanSettings)`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from bus.inputs import InputError, read_text_file, shown

Codec = Literal["msgpack", "json"]


class ConfigError(ValueError):
    """A setting is unknown or has a bad value; the message names the key."""


SectionT = TypeVar("SectionT")
_SECTIONS: dict[str, type[Any]] = {}  # name -> the node's settings dataclass


def section(name: str) -> Callable[[type[SectionT]], type[SectionT]]:
    """Register a node's settings dataclass as the `[name]` section of the settings (and of the
    `VV_<NAME>_<KEY>` variables): decorate the class with `@section("scan")`."""

    def register(cls: type[SectionT]) -> type[SectionT]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"settings section {name!r}: {cls.__name__} is not a dataclass")
        if name in _core_sections() or "_" in name or _SECTIONS.get(name, cls) is not cls:
            raise ValueError(f"settings section {name!r} is taken (or holds '_')")
        _SECTIONS[name] = cls
        return cls

    return register


def section_name(cls: type[Any]) -> str:
    """The section a settings class was registered as; LookupError when it never was."""
    for name, registered in _SECTIONS.items():
        if registered is cls:
            return name
    raise LookupError(f"{cls.__name__} is not a registered settings section (decorate it with @section)")


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str = ""  # default: each node its own (`<node>@<device>`), tools the device id (read-only)
    password: str = ""  # default: that user's secret in VV_HOME/keys/ (written by `vv broker`)
    tls_ca: str = ""
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600  # queued events survive a node being down this long
    will_delay_s: int = 5  # a reconnect within this window does not flap health to offline
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 30.0


@dataclass(frozen=True)
class BusSettings:
    codec: Codec = "msgpack"
    health_interval_s: float = 10.0
    max_event_bytes: int = 256 * 1024
    outbox_sync: Literal["normal", "full"] = "normal"  # sqlite synchronous mode for outbox/dedupe
    shared_group: str = ""  # non-empty: consume via $share/<group>/... with other workers
    # dedupe ids are kept this long (longer than any broker session, so a redelivery is recognised) ...
    dedupe_retention_s: float = 14 * 24 * 3600.0
    dedupe_max_ids: int = 1_000_000  # ... and at most this many per node (the oldest go first)
    prune_interval_s: float = 3600.0  # how often a running node prunes them
    deadletter_max_bytes: int = 16 * 1024 * 1024  # per node; the oldest half goes when it is full
    deadletter_max_age_days: float = 30.0
    deadletter_payload_bytes: int = 4096  # a refused payload is kept up to this, with its full sha256
    catchup_max_age_s: float = 24 * 3600.0  # a catch-up from the journal never reaches further back
    catchup_timeout_s: float = 10.0  # idle time without an answer before the journal is asked again
    catchup_retry_max_s: float = 30.0  # cap of the backoff between catch-up requests to a silent journal
    resend_window_s: float = (
        30.0  # after a lost connection, events the broker acknowledged this recently are re-sent
    )
    # A message whose handler failed transiently (OSError: storage full or read-only, I/O error, a
    # lock) stays unacknowledged and is retried with capped backoff; alert.error after this many tries.
    retry_min_s: float = 1.0
    retry_max_s: float = 15.0
    retry_alert_after: int = 4


@dataclass(frozen=True)
class BrokerSettings:
    max_packet_bytes: int = 1024 * 1024
    max_queued_messages: int = 100_000
    max_queued_bytes: int = 512 * 1024 * 1024
    autosave_interval: int = 1  # with autosave_on_changes: save after this many changes
    # The central broker's: each save writes its whole database, and every health beat of the fleet
    # is a change (800/s at 1,000 devices); at 1 it saves per beat and stalls (README, Fleet).
    central_autosave_interval: int = 1000
    persistent_client_expiration: str = "14d"
    # Every registered node gets its own credential; these get one too (comma-separated):
    nodes: str = ""  # `module:Class` nodes of your own
    instances: str = ""  # `NODE:INSTANCE` workers (`vv run NODE --instance INSTANCE`), e.g. "scan:2"


@dataclass(frozen=True)
class BridgeSettings:
    """`[bridge]`: the edge broker's link to the central one (a non-empty `address` turns it on).

    The certificate files come from `vv fleet enroll` (or `vv fleet csr` on the box); by default
    they are read from `VV_HOME/keys/fleet/` (ca.crt, device.crt, device.key).
    """

    address: str = ""  # host name or IP address of the central broker, as in its certificate
    port: int = 8883
    ca: str = ""
    cert: str = ""
    key: str = ""
    keepalive_s: int = 30  # the central broker marks the link down after 1.5 x this without traffic
    restart_min_s: int = 5  # reconnect backoff (mosquitto's decorrelated jitter between these)
    restart_max_s: int = 30

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"bridge.port: {self.port} is not a port number (1-65535)")
        if self.keepalive_s < 5:
            raise ConfigError(f"bridge.keepalive_s: {self.keepalive_s} is below mosquitto's minimum of 5")
        if not 1 <= self.restart_min_s <= self.restart_max_s:
            raise ConfigError("bridge.restart_min_s: must be at least 1 and not above bridge.restart_max_s")
        if any(c.isspace() or not c.isprintable() for c in self.address):
            raise ConfigError(f"bridge.address: {_brief(self.address)} is not a host name or address")


@dataclass(frozen=True)
class Settings:
    device: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    home: Path = Path("./var")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    bus: BusSettings = field(default_factory=BusSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    bridge: BridgeSettings = field(default_factory=BridgeSettings)
    # the nodes' own sections (`@section`), by name; a section not given takes its defaults
    sections: Mapping[str, Any] = field(default_factory=dict)

    def section(self, cls: type[SectionT]) -> SectionT:
        """A node's settings section, typed by its class: `settings.section(ScanSettings)`."""
        name = section_name(cls)
        value = self.sections.get(name)
        return value if isinstance(value, cls) else cls()

    @property
    def paths(self) -> VVPaths:
        """Absolute, so a path written into an event means the same file to every process."""
        return VVPaths(self.home.absolute())

    def mqtt_username(self, node: str) -> str:
        """A node's own broker user: the ACL lets it publish only what it declares it produces."""
        return f"{node}@{self.device}"

    def mqtt_secret(self, username: str) -> Path:
        """Where a broker user's password lives: `keys/mqtt.secret` for the device, else one per user."""
        return self.paths.keys / ("mqtt.secret" if username == self.device else f"mqtt-{username}.secret")

    def mqtt_credentials(self, username: str = "") -> tuple[str, str]:
        """The broker login: explicit settings first, else `username` (default: the device id, whose
        credential only reads) and the secret `vv broker` wrote for it."""
        username = self.mqtt.username or username or self.device
        password = self.mqtt.password
        secret = self.mqtt_secret(username)
        if not password and secret.exists():
            password = secret.read_text().strip()
        return username, password


@dataclass(frozen=True)
class VVPaths:
    """The on-device filesystem layout under VV_HOME (see ARCHITECTURE.md)."""

    home: Path

    @property
    def input(self) -> Path:
        return self.home / "input"

    @property
    def storage(self) -> Path:
        return self.home / "storage"

    @property
    def corrupted(self) -> Path:
        return self.home / "corrupted"

    @property
    def journal(self) -> Path:
        return self.home / "journal"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def exports(self) -> Path:
        return self.home / "exports"

    @property
    def keys(self) -> Path:
        return self.home / "keys"

    @property
    def state(self) -> Path:
        return self.home / "state"

    def storage_for(self, video_id: str, when: datetime | None = None) -> Path:
        """`storage/YYYY/MM/DD/<video_id>/`, dated by ingest time (UTC)."""
        when = when or datetime.now(UTC)
        return self.storage / f"{when:%Y}" / f"{when:%m}" / f"{when:%d}" / video_id


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _brief(value: Any) -> str:
    """A value for a one-line message: repr (control characters escaped), cut when long."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


# Bounds beyond "a finite number, not negative", by key.
_LIMITS: dict[str, tuple[float, float]] = {"mqtt.port": (1, 65535)}


def coerce(key: str, hint: Any, value: Any) -> Any:
    """Turn a TOML or environment value into the declared type, or raise naming the key."""
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}: {_brief(value)} is not one of {', '.join(map(str, choices))}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{key}: {_brief(value)} is not a boolean")
    if hint in (int, float):
        return _number(key, hint, value)
    if hint is Path:
        if not isinstance(value, str | Path) or not str(value):
            raise ConfigError(f"{key}: {_brief(value)} is not a path")
        return Path(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: {_brief(value)} is not a string")
        return value
    if origin is dict:
        if isinstance(value, str):  # from the environment: a JSON object
            try:
                value = json.loads(value)
            except ValueError:
                raise ConfigError(f"{key}: {value!r} is not a JSON object") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table")
        return value
    if origin in (typing.Union, types.UnionType):  # pragma: no cover - no optional settings yet
        raise ConfigError(f"{key}: unsupported type")
    raise ConfigError(f"{key}: unsupported setting type {hint!r}")


def _number(key: str, hint: type[int] | type[float], value: Any) -> Any:
    """A finite int or float within its key's `_LIMITS`, else not negative (NaN would pass `< 0`)."""
    what = "an integer" if hint is int else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{key}: {_brief(value)} is not {what}")
    try:
        number = hint(value)
    except (OverflowError, ValueError):
        raise ConfigError(f"{key}: {_brief(value)} is not {what}") from None
    if hint is int and isinstance(value, float) and value != number:
        raise ConfigError(f"{key}: {_brief(value)} is not an integer")
    if not math.isfinite(number):
        raise ConfigError(f"{key}: {_brief(value)} is not a finite number")
    low, high = _LIMITS.get(key, (0, math.inf))
    if number < low:
        raise ConfigError(
            f"{key}: {_brief(value)} must not be negative"
            if low == 0
            else f"{key}: {_brief(value)} is below {low}"
        )
    if number > high:
        raise ConfigError(f"{key}: {_brief(value)} is above {high}")
    return number


def _build(cls: type[Any], values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(cls)}
    for key, value in values.items():
        name = shown(f"{prefix}{key}")  # a key comes from the file or the environment: escape it
        if key not in known:
            raise ConfigError(f"{name}: unknown setting")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: expected a [{name}] table")
            kwargs[key] = _build(hint, value, f"{name}.")  # type: ignore[arg-type]
        else:
            kwargs[key] = coerce(name, hint, value)
    return cls(**kwargs)


def _core_sections() -> set[str]:
    """The tables of the core settings (mqtt, bus, broker)."""
    return {f.name for f in dataclasses.fields(Settings) if dataclasses.is_dataclass(f.default_factory)}


def _env_overrides(environ: typing.Mapping[str, str]) -> dict[str, Any]:
    """Map `VV_<SECTION>_<KEY>` and `VV_<KEY>` onto the settings tree."""
    sections = _core_sections() | set(_SECTIONS)
    top = {f.name for f in dataclasses.fields(Settings)} - sections - {"sections"}
    tree: dict[str, Any] = {}
    for var, value in environ.items():
        if not var.startswith("VV_") or var == "VV_CONFIG":
            continue
        rest = var[3:].lower()
        if rest in top:
            tree[rest] = value
            continue
        section, _, key = rest.partition("_")
        if section in sections and key:
            tree.setdefault(section, {})[key] = value
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(environ: typing.Mapping[str, str] | None = None) -> Settings:
    """Read `VV_CONFIG` (if set), apply `VV_*` overrides, validate everything."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_path = environ.get("VV_CONFIG")
    if config_path:
        try:
            values = tomllib.loads(read_text_file(Path(config_path)))
        except InputError as exc:
            raise ConfigError(f"VV_CONFIG: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"VV_CONFIG: {shown(config_path)} is not valid TOML: {shown(exc)}") from None
    values = _merge(values, _env_overrides(environ))
    if "sections" in values:  # the field holding the nodes' sections is no setting
        raise ConfigError("sections: unknown setting")
    nodes = {name: values.pop(name) for name in list(values) if name in _SECTIONS}
    settings: Settings = _build(Settings, values, "")
    built: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        given = nodes.get(name, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{name}: expected a [{name}] table")
        built[name] = _build(cls, given, f"{name}.")
    settings = dataclasses.replace(settings, sections=built)
    device = settings.device
    if not device or not device.isprintable() or any(c in device for c in " /+#"):
        raise ConfigError(
            f"device: {_brief(device)} must be non-empty, printable and free of spaces, '/', '+', '#'"
        )
    return settings
