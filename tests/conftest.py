"""Fixtures: a real mosquitto per test on a free loopback port, real node processes, a bus probe."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from pg import PgServer
from pg import missing as pg_missing

from bus import codec
from bus.broker import ADMIN_USER, BrokerFiles, TlsFiles, broker_command, render_broker, secret_for
from bus.client import content_type_of, mqtt_properties
from bus.config import Settings, load_settings
from bus.envelope import JSON, MSGPACK, Event
from nodes.registry import broker_grants

REPO = Path(__file__).resolve().parent.parent
FIXTURES_DIR = REPO / "schemas" / "fixtures"
SHARED = Path(os.environ.get("VV_SHARED", REPO.parent / "shared"))
DEVICE = "edge1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll a condition that is observed, not slept on; fail with a message on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Broker:
    """A real mosquitto rendered from the repo's edge.conf; can be killed and restarted on the same port."""

    def __init__(self, files: BrokerFiles, port: int, log_path: Path) -> None:
        self.files, self.port, self.log_path = files, port, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(broker_command(self.files), stdout=log, stderr=log)
        wait_until(self._accepting, 10, "mosquitto to accept connections")

    def _accepting(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {self.log_path.read_text()[-2000:]}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass
class VV:
    """One device under test: its VV_HOME, settings, environment for child processes, broker."""

    home: Path
    env: dict[str, str]
    settings: Settings
    broker: Broker
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(
        self, *args: str, log_name: str | None = None, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log_path = self.home / f"{log_name or args[-1].replace(':', '_').replace('/', '_')}.out"
        log = log_path.open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "nodes.cli", *args],
            env={**self.env, **(extra_env or {})},
            cwd=REPO,
            stdout=log,
            stderr=log,
        )
        self.procs.append(proc)
        return proc

    def vv(
        self, *args: str, timeout: float = 60, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nodes.cli", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
        )

    def probe(self, topic: str = f"vv/{DEVICE}/#", username: str | None = None) -> Probe:
        user = username or ADMIN_USER
        return Probe(self.broker.port, user, secret_for(self.settings, user), topic)

    def admin(self) -> tuple[str, str]:
        return ADMIN_USER, secret_for(self.settings, ADMIN_USER)

    def login(self, node: str) -> tuple[str, str]:
        """The credential a node process connects with (`<node>@<device>`)."""
        return self.settings.mqtt_credentials(self.settings.mqtt_username(node))


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 10) -> None:
    """SIGTERM, then SIGKILL if it is still there after `grace_s`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def device_env(home: Path, device: str, port: int) -> dict[str, str]:
    """The environment of a device under test: its VV_HOME and broker port, quick health and reconnects."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("VV_")},
        "VV_HOME": str(home),
        "VV_DEVICE": device,
        "VV_MQTT_PORT": str(port),
        "VV_BUS_HEALTH_INTERVAL_S": "0.5",
        "VV_MQTT_RECONNECT_MAX_S": "1",
        "VV_MQTT_WILL_DELAY_S": "1",
        "VV_SHARED": str(SHARED),
        # the test nodes and the scan workers tests run get their own credentials, like real ones
        "VV_BROKER_NODES": "echo_node:Echo,echo_node:Preparing,crashy_node:Crashy,failing_node:Fragile,failing_node:BackgroundCrash",
        "VV_BROKER_INSTANCES": "scan:a,scan:b",
        "VV_CONSOLE_HTTP_PORT": "0",  # no console web page unless a test asks for one (on a free port)
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def vv(tmp_path: Path) -> Iterator[VV]:
    home = tmp_path / "home"
    port = free_port()
    env = device_env(home, DEVICE, port)
    settings = load_settings(env)
    files = render_broker(settings, grants=broker_grants(settings))
    broker = Broker(files, port, tmp_path / "mosquitto.log")
    broker.start()
    device = VV(home=home, env=env, settings=settings, broker=broker)
    yield device
    for proc in device.procs:
        stop_process(proc)
    broker.stop()


def mqtt_client(
    port: int, username: str = "", password: str = "", *, tls: TlsFiles | None = None, session: str = ""
) -> paho.Client:
    """A paho MQTT 5 client connected (its loop not started): a password login, or a fleet certificate (`tls`);
    `session` names a persistent session (kept an hour) instead of a clean one."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=session, protocol=paho.MQTTv5)
    if tls:
        client.tls_set(ca_certs=str(tls.ca), certfile=str(tls.cert), keyfile=str(tls.key))
    else:
        client.username_pw_set(username, password)
    properties = None
    if session:
        properties = mqtt_properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=not session, properties=properties)
    return client


class Probe:
    """A real paho client in a thread that records every message it sees, decoded."""

    def __init__(
        self,
        port: int,
        username: str,
        password: str,
        topic: str,
        *,
        tls: TlsFiles | None = None,
        session: str = "",
    ) -> None:
        self.messages: list[tuple[str, Any]] = []
        # every message undecoded: (monotonic arrival time, topic, payload, retain flag)
        self.received: list[tuple[float, str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt_client(port, username, password, tls=tls, session=session)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise AssertionError("probe could not subscribe")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            doc = codec.decode(message.payload, content_type_of(message))  # type: ignore[arg-type]
        except codec.DecodeError:
            doc = message.payload
        with self._lock:
            self.messages.append((message.topic, doc))
            self.received.append((time.monotonic(), message.topic, message.payload, message.retain))

    def payloads(self, topic: str) -> list[tuple[float, bytes, bool]]:
        """(arrival time, raw payload, retain flag) of every message on `topic`, in order."""
        with self._lock:
            return [(at, payload, retain) for at, t, payload, retain in self.received if t == topic]

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            docs = [d for t, d in self.messages if isinstance(d, dict) and "specversion" in d]
        return [d for d in docs if event_type is None or d["type"] == event_type]

    def health(self, node: str) -> list[dict[str, Any]]:
        with self._lock:
            return [d for t, d in self.messages if t.endswith(f"/health/{node}") and isinstance(d, dict)]

    def wait_event(
        self,
        event_type: str,
        count: int = 1,
        timeout: float = 15,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        def found() -> list[dict[str, Any]] | None:
            hits = [e for e in self.events(event_type) if where is None or where(e)]
            return hits if len(hits) >= count else None

        return wait_until(found, timeout, f"{count} x {event_type}")  # type: ignore[no-any-return]

    def wait_health(self, node: str, status: str, timeout: float = 15, after: int = 0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            docs = self.health(node)[after:]
            return next((d for d in reversed(docs) if d.get("status") == status), None)

        return wait_until(found, timeout, f"health of {node} = {status}")  # type: ignore[no-any-return]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Publisher:
    """Publishes valid envelopes as a producer would (own epoch and seq), QoS 1, waiting for PUBACK."""

    def __init__(
        self,
        port: int,
        username: str = "",
        password: str = "",
        device: str = DEVICE,
        node: str = "tester",
        *,
        tls: TlsFiles | None = None,
    ) -> None:
        self.device, self.node, self.seq = device, node, 0
        self.client = mqtt_client(port, username, password, tls=tls)
        self.client.loop_start()

    def event(self, event_type: str, data: dict[str, Any], subject: str | None = None) -> Event:
        self.seq += 1
        ctype = JSON if event_type.split(".")[0] in ("alert", "cmd") else MSGPACK
        return Event(
            type=event_type,
            source=f"vv://{self.device}/{self.node}",
            device=self.device,
            epoch=1,
            seq=self.seq,
            data=data,
            subject=subject,
            datacontenttype=ctype,
        )

    def publish(self, event: Event, topic: str | None = None) -> None:
        envelope = event.to_dict()
        self.raw(
            topic or f"vv/{event.device}/{event.type.replace('.', '/')}",
            codec.encode(envelope, event.datacontenttype),
            event.datacontenttype,
        )

    def raw(self, topic: str, payload: bytes, content_type: str | None = None) -> int:
        props = mqtt_properties(PacketTypes.PUBLISH)
        if content_type:
            props.ContentType = content_type
        info = self.client.publish(topic, payload, qos=1, properties=props)
        info.wait_for_publish(10)
        return int(info.rc)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def silent_network() -> Iterator[dict[str, str]]:
    """Proxy settings for a network that swallows requests (a black-holed link): the proxy takes the
    connection and never answers, so an unbounded download would hang for minutes."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        yield {"HTTPS_PROXY": url, "HTTP_PROXY": url, "https_proxy": url, "http_proxy": url}


@pytest.fixture
def probe(vv: VV) -> Iterator[Probe]:
    p = vv.probe()
    yield p
    p.close()


@pytest.fixture
def publisher(vv: VV) -> Iterator[Publisher]:
    p = Publisher(vv.broker.port, *vv.admin())
    yield p
    p.close()


def store_video(vv: VV, content: bytes, name: str = "clip.mp4") -> dict[str, Any]:
    """Place bytes in storage as ingest would, bypassing its checks; the `video.new` data for them."""
    digest = hashlib.sha256(content).hexdigest()
    path = vv.settings.paths.storage_for(digest[:32]) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    data = json.loads((FIXTURES_DIR / "video.new" / "valid-1.json").read_text())
    data["video"].update(id=digest[:32], path=str(path), sha256=digest, bytes=len(content))
    data["original_name"] = name
    return dict(data)


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """One real PostgreSQL for the session (tests/pg.py); skipped where its binaries are missing."""
    reason = pg_missing()
    if reason is not None:
        pytest.skip(reason)
    server = PgServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
