"""`[console]` settings: how the console reaches the central broker, where it keeps its store, and the
figures of its fold (reorder timeout, staleness, link debounce, retention)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bus.config import ConfigError, section


@section("console")
@dataclass(frozen=True)
class ConsoleSettings:
    name: str = (
        "console"  # MQTT client id `vv-console-<name>` (a fixed id: its session queues while it is down)
    )
    host: str = "127.0.0.1"  # the central broker
    port: int = 8883
    ca: str = (
        ""  # TLS: the fleet CA; with cert/key the console's enrolled credential (`vv fleet enroll --console`)
    )
    cert: str = ""
    key: str = ""
    check_hostname: bool = True
    username: str = ""  # a plain (loopback, development) listener only; TLS uses the certificate's CN
    password: str = ""
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    receive_maximum: int = 1000  # QoS 1 messages in flight from the central broker (MQTT 5 Receive Maximum)
    home: str = ""  # "": VV_HOME/console (the SQLite store lives there)
    registry: str = ""  # "": VV_HOME/fleet/devices.json, written by `vv fleet enroll`
    # A gap in a producer's seq may be reordering across the bridge: wait this long before asking the
    # device's journal to re-send it, then resend_wait_s for the answer before it counts as missing.
    reorder_timeout_s: float = 5.0
    resend_wait_s: float = 30.0
    stale_factor: float = 3.0  # a device silent for this many of its health intervals is stale
    default_health_interval_s: float = 10.0  # for health documents that do not state theirs
    # A bridge down for less than this is a flap, not an incident: an edge broker restart or a
    # network blip re-establishes a mosquitto bridge within a few seconds (it retries at once on
    # start, then every few seconds); 15 s covers that and still pages within one health interval
    # or two of a real outage.
    link_debounce_s: float = 15.0
    history_days: float = 30.0  # alert and device history, seen event ids and sent actions older go
    command_ttl_s: float = 24 * 3600.0  # `until` of a command without its own end (ack, resync, resend)
    tick_s: float = 0.5  # how often staleness, debounced links, gaps and pending actions are checked
    # Scale-out (README "Scaling the console"): a PostgreSQL DSN (postgresql://user@host/db) puts the
    # store in PostgreSQL, shared by every replica; "": SQLite under `home`, one console.
    database_url: str = ""
    # Replicas on one database split alerts and LogLines with the MQTT 5 shared subscription
    # $share/<shared_group>/...; each still reads health and bridge state itself. "": plain subscriptions.
    shared_group: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.receive_maximum <= 65535:
            raise ConfigError(
                f"console.receive_maximum: {self.receive_maximum} is not within 1-65535 (MQTT 5)"
            )

    def home_path(self, vv_home: Path) -> Path:
        return Path(self.home) if self.home else vv_home / "console"

    def registry_path(self, vv_home: Path) -> Path:
        return Path(self.registry) if self.registry else vv_home / "fleet" / "devices.json"

    # The web page (nodes/console/web), served by `vv console` in the same process.
    http_host: str = "127.0.0.1"  # loopback by default: put TLS in front with a reverse proxy (README)
    http_port: int = 8380  # 0: no web page (the service and `vv fleet` only)
    users_file: str = ""  # "": <home>/users.json, written by `vv console users add` (argon2id hashes)
    # Session cookies carry Secure: browsers then send them over https only. Turn off only for plain
    # http on loopback (development, tests); behind a TLS proxy keep it on.
    cookie_secure: bool = True
    session_hours: float = 12.0  # a login lasts this long without use

    def users_path(self, vv_home: Path) -> Path:
        return Path(self.users_file) if self.users_file else self.home_path(vv_home) / "users.json"
