"""Settings: one TOML file (`VV_CONFIG`) plus `VV_<SECTION>_<KEY>` overrides, validated at start.

A bad key or value raises `ConfigError` with one line naming the key, so a mistyped setting
stops the process instead of being silently ignored.
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from bus.inputs import InputError, read_text_file, shown
from nodes.console.settings import ConsoleSettings

Codec = Literal["msgpack", "json"]
FsyncPolicy = Literal["always", "interval", "never"]


class ConfigError(ValueError):
    """A setting is unknown or has a bad value; the message names the key."""


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
    persistent_client_expiration: str = "14d"
    # Every registered node gets its own credential; these get one too (comma-separated):
    nodes: str = ""  # `module:Class` nodes of your own
    instances: str = ""  # `NODE:INSTANCE` workers (`vv run NODE --instance INSTANCE`), e.g. "scan:2"


@dataclass(frozen=True)
class JournalSettings:
    fsync: FsyncPolicy = "interval"
    fsync_interval_s: float = 0.2
    segment_bytes: int = 64 * 1024 * 1024
    # retention of sealed segments; a segment holding an event of a video still in the pipeline stays
    retention_days: float = 90.0  # older segments may go (0: keep every segment)
    max_bytes: int = 0  # cap on the journal's size, oldest removable segments first (0: no cap)
    export_before_delete: bool = True  # only segments a `vv export` archive in exports/ holds, same sha256
    retention_interval_s: float = 3600.0


@dataclass(frozen=True)
class ScanSettings:
    backend: Literal["auto", "ultralytics", "onnx", "openvino", "darknet", "hog"] = "auto"
    model: str = ""
    model_config: str = ""
    labels: str = ""
    detect_fps: float = 5.0
    imgsz: int = 320
    confidence: float = 0.25
    threads: int = 0  # 0: one per core
    batch: int = 1  # sampled frames per detector call (onnx/openvino: pays off with a batched export)
    motion_gating: bool = True
    motion_threshold: float = 0.002  # fraction of changed pixels that counts as motion
    motion_max_skip_s: float = 5.0  # run the detector at least this often, even on a static scene
    max_processing_s: float = 0.0  # 0: derived from the video's duration
    max_attempts: int = 3
    download_timeout_s: float = 5.0  # wait this long for a named model's download, then fall back


@dataclass(frozen=True)
class TrackSettings:
    """The tracker scan runs on every sampled frame (nodes/scan/tracking.py)."""

    max_lost_s: float = 2.0  # a track missed (occluded, undetected) this long has ended
    match_iou: float = 0.2  # least overlap of a detection with a track's predicted box to continue it
    thumbnails: int = 12  # reported tracks per video that get a crop and a full-frame JPEG


@dataclass(frozen=True)
class ObjectFilter:
    """Frigate's false-positive filters for one class; areas are fractions of the frame."""

    min_score: float = 0.5  # a detection below this never starts a track (it may continue one)
    threshold: float = (
        0.6  # the median score of a track must reach this (Frigate: 0.7; see bench/accuracy.py)
    )
    min_area: float = 0.0  # detections smaller than this share of the frame are ignored
    max_area: float = 1.0  # and larger ones
    min_frames: int = 3  # a track must be in view this many sampled frames to be reported
    min_s: float = 0.5  # and this many seconds


@dataclass(frozen=True)
class FilterSettings(ObjectFilter):
    """`[filters]` holds the defaults for every class; `[filters.classes.<label>]` overrides some of them."""

    classes: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(ObjectFilter)
        for label, overrides in self.classes.items():
            if not isinstance(overrides, dict):
                raise ConfigError(f"filters.classes.{label}: expected a table of filter settings")
            for key, value in overrides.items():
                if key not in hints:
                    raise ConfigError(f"filters.classes.{label}.{key}: unknown setting")
                overrides[key] = _coerce(f"filters.classes.{label}.{key}", hints[key], value)

    def for_label(self, label: str) -> ObjectFilter:
        """The filters of one class: the defaults with its overrides."""
        defaults = {f.name: getattr(self, f.name) for f in dataclasses.fields(ObjectFilter)}
        return ObjectFilter(**{**defaults, **self.classes.get(label, {})})


@dataclass(frozen=True)
class SummarizeSettings:
    describer: str = ""  # "module:function" turning a summary into text (e.g. an LLM); default: built-in
    max_gap_s: float = 2.0  # tracks closer in time than this make one activity segment of the timeline


@dataclass(frozen=True)
class SignSettings:
    alg: Literal["ed25519", "hmac-sha256"] = "ed25519"
    key_id: str = ""
    failpoint: Literal["", "after-write"] = ""  # testing only: exit right after writing a LogLine


@dataclass(frozen=True)
class ReconcilerSettings:
    interval_s: float = 30.0
    ingested_s: float = 900.0  # longest a video may wait for its scan before it is re-announced
    scanned_s: float = 300.0
    summarized_s: float = 120.0
    max_attempts: int = 3  # re-announcements before the video is quarantined


@dataclass(frozen=True)
class IngestSettings:
    poll_interval_s: float = 2.0  # rescan of input/ (the fallback without inotify, a safety net with it)
    settle_s: float = 1.0  # a file renamed into input/ is complete when two looks this far apart agree
    stable_s: float = 10.0  # a file written in place: size and mtime unchanged this long (slow copies pause)
    incomplete_grace_s: float = 60.0  # written in place, unreadable, younger than this: wait, not quarantine
    retry_min_s: float = 5.0  # a file whose ingest failed (storage fault) is retried with backoff
    retry_max_s: float = 300.0
    inotify: bool = True  # wake on directory events where the kernel offers them


@dataclass(frozen=True)
class DvrSettings:
    url: str = ""  # RTSP/HTTP URL or a device path, read with OpenCV's FFmpeg backend
    camera: str = "cam1"  # segment names: input/<camera>-<UTC stamp>.mp4
    segment_s: float = 60.0
    codec: str = "mp4v"  # fourcc of the written segments
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    retry_min_s: float = 1.0
    retry_max_s: float = 60.0
    error_after_attempts: int = 5  # alert.error after this many failed attempts in a row
    critical_after_s: float = 900.0  # alert.critical when the stream is down this long


@dataclass(frozen=True)
class AlerterSettings:
    channels: str = ""  # a JSON list of channel tables, or the path of a .toml/.json file of them
    window_s: float = 300.0  # repeats closer than this fold into one episode (counted, not re-sent)
    group_wait_s: float = 30.0  # a new group waits this long to collect a burst before its first notification
    group_interval_s: float = 300.0  # then at most one notification per group this often
    repeat_interval_s: float = 4 * 3600.0  # a still-firing alert is notified again after this long
    expire_s: float = 7 * 86400.0  # an unresolved alert not seen for this long is forgotten
    inhibit_offline: bool = True  # mute a node's own alerts while its health says offline
    queue_max: int = 10_000  # notifications kept on disk per channel while it is down
    max_alerts: int = 10_000  # alerts tracked at once; beyond it the least recently seen are forgotten
    retry_min_s: float = 1.0
    retry_max_s: float = 300.0
    send_timeout_s: float = 30.0


@dataclass(frozen=True)
class DiskSettings:
    interval_s: float = 60.0
    # a level is entered when EITHER the free percent or the free GB is below its threshold
    warn_percent: float = 20.0
    warn_free_gb: float = 50.0
    critical_percent: float = 10.0
    critical_free_gb: float = 10.0
    # a level is left only once both figures are this far above its thresholds (no flapping)
    hysteresis_percent: float = 2.0
    hysteresis_gb: float = 2.0


@dataclass(frozen=True)
class SupervisorSettings:
    """`vv up`: which nodes run as its children and how crashed ones are restarted."""

    # comma-separated names or module:Class specs; "": every registered node (dvr only with dvr.url)
    nodes: str = ""
    max_restarts: int = 5  # restarts within restart_window_s before the child is FATAL (not restarted)
    restart_window_s: float = 300.0
    stability_s: float = 60.0  # a child up this long has its restart count reset
    startup_grace_s: float = 5.0  # a child is "starting" this long, then "running"
    backoff_min_s: float = 1.0
    backoff_max_s: float = 60.0
    stop_timeout_s: float = 10.0  # SIGTERM, then SIGKILL after this long
    log_lines: int = 50  # last lines of each child's output kept for status and alerts
    fatal_retry_s: float = 900.0  # a FATAL child is tried again after this (the disk was freed); 0: never


@dataclass(frozen=True)
class MonitorSettings:
    """The monitor node: liveness, self-healing restarts, resources, stuck videos, storage, jobs."""

    # who restarts a node: vv (`cmd.supervisor.restart` to `vv up`) or systemd (`systemctl restart vv-<node>`)
    supervisor: Literal["vv", "systemd"] = "vv"
    check_interval_s: float = 5.0
    failure_threshold: int = 3  # missed beats before a node is unhealthy (HEALTHCHECK_FAILURE_THRESHOLD)
    startup_grace_s: float = 30.0  # after a restart (or the monitor's start) a node is not judged this long
    max_restart_attempts: int = 5  # within restart_window_s, then FATAL (CONTAINER_MAX_RESTART_ATTEMPTS)
    restart_window_s: float = 600.0
    stability_s: float = 300.0  # a node up this long has its restart count reset
    backoff_min_s: float = 5.0
    backoff_max_s: float = 300.0
    cpu_percent: float = 90.0  # of one core, per node process; 0 turns the check off
    memory_percent: float = 50.0  # resident memory as a share of RAM; 0 turns the check off
    resource_sustain_s: float = 120.0  # above a threshold this long before the WARNING
    journal_check_s: float = 60.0  # how often the journal is folded for stuck videos
    stuck_ingested_s: float = 1800.0  # per stage: longer than this without moving on is stuck; 0: no limit
    stuck_scanned_s: float = 900.0
    stuck_summarized_s: float = 600.0
    storage_probe: str = ""  # directory the write probe goes to; "": VV_HOME/storage
    job_grace: float = 1.5  # a job is overdue when its last success is older than period_s x this
    log_lines: int = 20  # last app.log lines of a node put in its FATAL alert


@dataclass(frozen=True)
class Settings:
    device: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    home: Path = Path("./var")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    bus: BusSettings = field(default_factory=BusSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    journal: JournalSettings = field(default_factory=JournalSettings)
    scan: ScanSettings = field(default_factory=ScanSettings)
    track: TrackSettings = field(default_factory=TrackSettings)
    filters: FilterSettings = field(default_factory=FilterSettings)
    summarize: SummarizeSettings = field(default_factory=SummarizeSettings)
    sign: SignSettings = field(default_factory=SignSettings)
    reconciler: ReconcilerSettings = field(default_factory=ReconcilerSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    dvr: DvrSettings = field(default_factory=DvrSettings)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    alerter: AlerterSettings = field(default_factory=AlerterSettings)
    disk: DiskSettings = field(default_factory=DiskSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)

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


def _coerce(key: str, hint: Any, value: Any) -> Any:
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
            kwargs[key] = _coerce(name, hint, value)
    return cls(**kwargs)


def _env_overrides(environ: typing.Mapping[str, str]) -> dict[str, Any]:
    """Map `VV_<SECTION>_<KEY>` and `VV_<KEY>` onto the settings tree."""
    hints = typing.get_type_hints(Settings)
    sections = {name for name, hint in hints.items() if dataclasses.is_dataclass(hint)}
    top = set(hints) - sections
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
    settings: Settings = _build(Settings, _merge(values, _env_overrides(environ)), "")
    device = settings.device
    if not device or not device.isprintable() or any(c in device for c in " /+#"):
        raise ConfigError(
            f"device: {_brief(device)} must be non-empty, printable and free of spaces, '/', '+', '#'"
        )
    return settings
