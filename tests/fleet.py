"""A fleet under test: a central broker rendered by `vv broker --central` with certificates from
`vv fleet`, and edge devices whose brokers `vv broker` renders with the `[bridge]` of their bundle.
Built from conftest's pieces (free ports, Broker, VV, Probe, Publisher)."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from conftest import REPO, VV, Broker, Probe, Publisher, device_env, free_port, stop_process

from bus.broker import BrokerFiles, TlsFiles
from bus.config import load_settings

CONSOLE = "main"


def run_vv(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodes.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def checked(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def bundle_tls(directory: Path) -> TlsFiles:
    return TlsFiles(directory / "ca.crt", directory / "device.crt", directory / "device.key")


class FleetRig:
    """The central side in `root/central` (its VV_HOME holds the CA) and any number of edges."""

    def __init__(self, root: Path, extra_edge_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.env = device_env(root / "central", "central", free_port())
        self.home = root / "central"
        checked(run_vv(self.env, "fleet", "ca", "init", "--server-name", "127.0.0.1"))
        self.console_tls = bundle_tls(
            Path(checked(run_vv(self.env, "fleet", "enroll", "--console", CONSOLE)))
        )
        self.central: Broker | None = None
        self.edges: dict[str, VV] = {}
        self.extra_edge_env = extra_edge_env or {}
        self.clients: list[Probe | Publisher] = []

    def start_central(self, *extra: str) -> Broker:
        conf = Path(
            checked(
                run_vv(
                    self.env,
                    "broker",
                    "--central",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--print-config",
                    *extra,
                )
            )
        )
        files = BrokerFiles(conf.parent, conf, conf.parent / "data", None, conf.parent / "acl.conf")
        self.central = Broker(files, self.port, self.root / "central-mosquitto.log")
        self.central.start()
        return self.central

    def enroll(self, device: str, *args: str) -> Path:
        return Path(checked(run_vv(self.env, "fleet", "enroll", device, "--port", str(self.port), *args)))

    def add_edge(self, device: str, env: dict[str, str] | None = None) -> VV:
        """Enrol `device`, install its bundle as the box would (keys/fleet/, bridge.toml as its
        config) and start its broker rendered by `vv broker`."""
        bundle = self.enroll(device)
        home = self.root / device
        shutil.copytree(bundle, home / "keys" / "fleet")
        port = free_port()
        edge_env = {
            **device_env(home, device, port),
            "VV_CONFIG": str(home / "keys" / "fleet" / "bridge.toml"),
            **self.extra_edge_env,
            **(env or {}),
        }
        conf = Path(checked(run_vv(edge_env, "broker", "--print-config")))
        files = BrokerFiles(
            conf.parent, conf, conf.parent / "data", conf.parent / "passwd", conf.parent / "acl.conf"
        )
        broker = Broker(files, port, self.root / f"{device}-mosquitto.log")
        broker.start()
        edge = VV(home=home, env=edge_env, settings=load_settings(edge_env), broker=broker)
        self.edges[device] = edge
        return edge

    def console_probe(self, topic: str = "vv/#", session: str = "") -> Probe:
        assert self.central is not None
        probe = Probe(self.port, "", "", topic, tls=self.console_tls, session=session)
        self.clients.append(probe)
        return probe

    def console_publisher(self, device: str) -> Publisher:
        publisher = Publisher(self.port, device=device, node="console", tls=self.console_tls)
        self.clients.append(publisher)
        return publisher

    def device_publisher(self, device: str, target: str | None = None) -> Publisher:
        """A client of the central broker holding `device`'s certificate (as a stolen one would)."""
        publisher = Publisher(
            self.port, device=target or device, tls=bundle_tls(self.root / device / "keys" / "fleet")
        )
        self.clients.append(publisher)
        return publisher

    def edge_probe(self, device: str, topic: str, node: str = "", session: str = "") -> Probe:
        """A client of `device`'s edge broker: the admin login, or a node's own (`node`)."""
        edge = self.edges[device]
        username, password = edge.login(node) if node else edge.admin()
        probe = Probe(edge.broker.port, username, password, topic, session=session)
        self.clients.append(probe)
        return probe

    def edge_publisher(self, device: str, node: str) -> Publisher:
        edge = self.edges[device]
        publisher = Publisher(edge.broker.port, *edge.login(node), device=device, node=node)
        self.clients.append(publisher)
        return publisher

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for edge in self.edges.values():
            for proc in edge.procs:  # the edges' nodes a test ran
                stop_process(proc)
            edge.broker.stop()
        if self.central:
            self.central.stop()


class Console:
    """`vv console` on the central host, connected over TLS with its enrolled certificate."""

    def __init__(self, rig: FleetRig, extra_env: dict[str, str] | None = None) -> None:
        tls = rig.console_tls
        self.env = {
            **rig.env,
            "VV_CONSOLE_NAME": CONSOLE,
            "VV_CONSOLE_HOST": "127.0.0.1",
            "VV_CONSOLE_PORT": str(rig.port),
            "VV_CONSOLE_CA": str(tls.ca),
            "VV_CONSOLE_CERT": str(tls.cert),
            "VV_CONSOLE_KEY": str(tls.key),
            **(extra_env or {}),
        }
        self.log = (rig.root / "console.out").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nodes.cli", "console"],
            env=self.env,
            cwd=REPO,
            stdout=self.log,
            stderr=self.log,
        )

    def fleet(self, *args: str) -> Any:
        """`vv fleet ARGS --json` as the operator runs it on the central host."""
        result = subprocess.run(
            [sys.executable, "-m", "nodes.cli", "fleet", *args, "--json"],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode in (0, 1), result.stderr
        return json.loads(result.stdout) if result.stdout.strip() else None

    def device(self, device: str) -> dict[str, Any] | None:
        return next((d for d in self.fleet("status") or [] if d["device"] == device), None)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self.log.close()


def attempt(
    port: int,
    *,
    tls: TlsFiles | None = None,
    ca_only: Path | None = None,
    login: tuple[str, str] | None = None,
) -> str:
    """Try to connect and say how it ended: "connected", or why not."""
    outcome: list[str] = []
    done = threading.Event()

    def finish(text: str) -> None:
        outcome.append(text)
        done.set()

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    if tls:
        client.tls_set(ca_certs=str(tls.ca), certfile=str(tls.cert), keyfile=str(tls.key))
    elif ca_only:
        client.tls_set(ca_certs=str(ca_only))
    if login:
        client.username_pw_set(*login)
    client.on_connect = lambda c, u, f, rc, p: finish("connected" if not rc.is_failure else f"refused: {rc}")
    client.on_disconnect = lambda c, u, f, rc, p: finish(f"disconnected: {rc}")
    client.on_connect_fail = lambda c, u: finish("connection failed")
    try:
        client.connect("127.0.0.1", port)
    except (ssl.SSLError, OSError) as exc:
        return f"handshake failed: {exc}"
    client.loop_start()
    try:
        assert done.wait(10), "neither connected nor refused"
    finally:
        client.loop_stop()
        client.disconnect()
    return outcome[0]
