"""A fleet for the fleet benchmarks, built the way an operator builds one: `vv fleet ca init`, `vv fleet
enroll`, the central broker run by `vv broker --central`, edge brokers by `vv broker` with their
bundle's `[bridge]`, and `vv console` over TLS with its enrolled credential; all real processes.

Also what both benchmarks measure with: when an alert becomes visible on the console's page (its live
stream, `Visibility`), TLS clients of the central broker, and percentiles.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bus import free_port, wait  # noqa: E402
from bus.broker import TlsFiles  # noqa: E402
from bus.config import Settings, load_settings  # noqa: E402
from nodes.console.store import SqliteStore  # noqa: E402

CONSOLE = "bench"
VIEWER, VIEWER_PASSWORD = "bench-viewer", "bench-viewer-password"


def pct(values: list[float], q: int) -> float:
    """The q-th percentile in milliseconds (values in seconds)."""
    if len(values) < 3:
        return float("nan")
    return statistics.quantiles(values, n=100)[q - 1] * 1000


def bundle_tls(directory: Path) -> TlsFiles:
    return TlsFiles(directory / "ca.crt", directory / "device.crt", directory / "device.key")


def tls_client(port: int, tls: TlsFiles, client_id: str = "") -> paho.Client:
    """A paho MQTT 5 client of the central broker with a fleet certificate, its loop running."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.tls_set(ca_certs=str(tls.ca), certfile=str(tls.cert), keyfile=str(tls.key))
    client.max_inflight_messages_set(100)
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError("could not connect to the central broker")
    return client


def subscribe(client: paho.Client, topic: str) -> None:
    done = threading.Event()
    client.on_subscribe = lambda *a: done.set()
    client.subscribe(topic, qos=1)
    if not done.wait(10):
        raise RuntimeError(f"could not subscribe to {topic}")


class Arrivals:
    """Arrival times of messages at a central subscriber, by payload (each one is unique)."""

    def __init__(self, marker: bytes = b"") -> None:
        self.marker = marker  # only payloads holding it are kept
        self.at: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        now = time.monotonic()
        if self.marker in message.payload:
            with self._lock:
                self.at.setdefault(bytes(message.payload), now)

    def snapshot(self) -> dict[bytes, float]:
        with self._lock:
            return dict(self.at)

    def seen(self, marker: bytes) -> list[float]:
        """Arrival times of the payloads holding `marker` so far."""
        with self._lock:
            return [at for payload, at in self.at.items() if marker in payload]


class Visibility:
    """When alerts became visible on the console's page: the moment its live stream (`/api/events`,
    SSE, logged in as a viewer, as a browser follows it) first shows each wanted (device, dedup_key)
    with the wanted count; and how many distinct alerts of a title prefix it has shown (a flood's
    progress). A stream too slow for the fold is told to re-read ("resync"): counted as `resyncs`."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url, self.user, self.password = url, user, password
        self.seen: dict[tuple[str, str], float] = {}
        self.resyncs = 0
        self._wanted: dict[tuple[str, str], int] = {}  # key -> count the page must show
        self._titles: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._client = httpx.Client(base_url=url, timeout=httpx.Timeout(30, read=None))
        self._open = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        """Log in and open the stream; returns once it is open."""
        response = self._client.post(
            "/login", data={"username": self.user, "password": self.password, "next": "/"}
        )
        if response.status_code != 303:
            raise RuntimeError(f"console login refused: HTTP {response.status_code}")
        self._cookie = response.headers["set-cookie"].split(";", 1)[0]  # Secure: sent by hand over http
        self._thread.start()
        if not self._open.wait(30):
            raise RuntimeError("the console's live stream did not open")

    def want(self, device: str, dedup_key: str, count: int = 1) -> None:
        with self._lock:
            self._wanted[(device, dedup_key)] = count

    def _run(self) -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            self._client.stream("GET", "/api/events", headers={"cookie": self._cookie}) as response,
        ):
            kind = ""
            for line in response.iter_lines():
                if line.startswith("retry:"):
                    self._open.set()
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    self._on_change(kind, json.loads(line[6:]))

    def _on_change(self, kind: str, data: dict[str, Any]) -> None:
        at = time.monotonic()
        if kind == "resync":
            self.resyncs += 1
        if kind != "alert":
            return
        key = (data["device"], data["key"])
        with self._lock:
            self._titles.setdefault(key, data["title"])
            wanted = self._wanted.get(key)
            if wanted is not None and data["count"] >= wanted:
                self.seen[key] = at
                del self._wanted[key]

    def count_titled(self, prefix: str) -> int:
        with self._lock:
            return sum(1 for title in self._titles.values() if title.startswith(prefix))

    def wait_for(self, device: str, dedup_key: str, timeout: float) -> float | None:
        if wait(lambda: (device, dedup_key) in self.seen, timeout):
            return self.seen[(device, dedup_key)]
        return None

    def close(self) -> None:
        self._client.close()  # ends the stream; its thread returns
        self._thread.join(5)


class Lab:
    """A fleet PKI and central side in `root/central`; edges and the console added on demand."""

    def __init__(self, root: Path, central_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.home = root / "central"
        self.env = {**self._env(self.home, "central", free_port()), **(central_env or {})}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.vv("fleet", "ca", "init", "--server-name", "127.0.0.1")
        self.console_tls = bundle_tls(Path(self.vv("fleet", "enroll", "--console", CONSOLE)))
        self.edge_settings: dict[str, Settings] = {}

    @staticmethod
    def _env(home: Path, device: str, port: int) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("VV_")},
            "VV_HOME": str(home),
            "VV_DEVICE": device,
            "VV_MQTT_PORT": str(port),
            "PYTHONPATH": str(REPO),
        }

    def vv(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "nodes.cli", *args],
            env=env or self.env,
            cwd=REPO,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"vv {' '.join(args)}: {result.stderr}")
        return result.stdout.strip()

    def spawn(self, name: str, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.out").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "nodes.cli", *args], env=env, cwd=REPO, stdout=log, stderr=log
        )
        self.procs.append(proc)
        return proc

    def _listening(self, port: int, proc: subprocess.Popen[bytes], name: str) -> None:
        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: see {self.root / (name + '.out')}")
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        if not wait(up, 15):
            raise RuntimeError(f"{name} is not listening on {port}")

    def start_central(self) -> None:
        proc = self.spawn("central", self.env, "broker", "--central", "--listen", f"127.0.0.1:{self.port}")
        self._listening(self.port, proc, "central")

    def add_edge(self, device: str) -> Settings:
        """Enrol `device`, install its bundle as the box would and run its broker with the bridge."""
        bundle = Path(self.vv("fleet", "enroll", device, "--port", str(self.port)))
        home = self.root / device
        shutil.copytree(bundle, home / "keys" / "fleet")
        port = free_port()
        env = {**self._env(home, device, port), "VV_CONFIG": str(home / "keys" / "fleet" / "bridge.toml")}
        settings = load_settings(env)
        self._listening(port, self.spawn(device, env, "broker"), device)
        self.edge_settings[device] = settings
        return settings

    def start_console(self, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """`vv console` with its web page on a free port and a viewer to log in as (`visibility`)."""
        self.http_port = free_port()
        env = {
            **self.env,
            "VV_CONSOLE_NAME": CONSOLE,
            "VV_CONSOLE_HOST": "127.0.0.1",
            "VV_CONSOLE_PORT": str(self.port),
            "VV_CONSOLE_CA": str(self.console_tls.ca),
            "VV_CONSOLE_CERT": str(self.console_tls.cert),
            "VV_CONSOLE_KEY": str(self.console_tls.key),
            "VV_CONSOLE_HTTP_PORT": str(self.http_port),
            **(extra or {}),
        }
        self.vv("console", "users", "add", VIEWER, "--role", "viewer", env=env, stdin=VIEWER_PASSWORD + "\n")
        proc = self.spawn("console", env, "console")
        self._listening(self.http_port, proc, "console")
        return proc

    def visibility(self) -> Visibility:
        """The console page's live stream, open."""
        visible = Visibility(f"http://127.0.0.1:{self.http_port}", VIEWER, VIEWER_PASSWORD)
        visible.start()
        return visible

    @property
    def store_file(self) -> Path:
        return self.home / "console" / "console.sqlite"

    def console_knows(self, devices: int) -> bool:
        """Whether the console's store holds at least `devices` devices (it is subscribed and folding)."""
        if not self.store_file.exists():
            return False
        store = SqliteStore(self.store_file)
        try:
            return len(store.devices()) >= devices
        finally:
            store.close()

    def console_client(self, on_message: Callable[..., None] | None = None) -> paho.Client:
        client = tls_client(self.port, self.console_tls)
        if on_message:
            client.on_message = on_message
        return client

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
