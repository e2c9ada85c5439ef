"""Bus benchmark: events/s and latency through one real node process vs raw paho, same broker, same run.

Prints figures; asserts nothing. Usage: python bench/bus.py [--events N]
Goal (issue 2): a node sustains >= 50% of the raw paho QoS 1 rate with validation and the outbox
on, and p99 latency under 20 ms on loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bus import codec  # noqa: E402
from bus.broker import ADMIN_USER, broker_command, render_broker, secret_for  # noqa: E402
from bus.client import content_type_of, mqtt_properties  # noqa: E402
from bus.config import load_settings  # noqa: E402
from bus.envelope import MSGPACK, Event  # noqa: E402
from nodes.registry import broker_grants  # noqa: E402

DEVICE = "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client(port: int, user: str, password: str, on_message=None) -> paho.Client:  # type: ignore[no-untyped-def]
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.username_pw_set(user, password)
    c.max_inflight_messages_set(100)
    if on_message:
        c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def subscriber(port: int, creds: tuple[str, str], topic: str, qos: int, on_message) -> paho.Client:  # type: ignore[no-untyped-def]
    """A client subscribed to `topic`, returned once the broker confirmed the subscription."""
    sub = client(port, *creds, on_message=on_message)
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.subscribe(topic, qos=qos)
    subscribed.wait(5)
    return sub


def wait(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return False


def raw_paho(port: int, creds: tuple[str, str], n: int, qos: int) -> float:
    """One publisher, one subscriber, 300-byte payloads: messages/s end to end."""
    got = [0]
    done = threading.Event()

    def on_message(c, u, m):  # type: ignore[no-untyped-def]
        got[0] += 1
        if got[0] == n:
            done.set()

    sub = subscriber(port, creds, f"vv/{DEVICE}/raw/{qos}", qos, on_message)
    pub = client(port, *creds)
    payload = os.urandom(300)
    start = time.perf_counter()
    infos = [pub.publish(f"vv/{DEVICE}/raw/{qos}", payload, qos=qos) for _ in range(n)]
    done.wait(120)
    elapsed = time.perf_counter() - start
    for info in infos[-5:]:
        info.wait_for_publish(5)
    pub.loop_stop(), sub.loop_stop(), pub.disconnect(), sub.disconnect()
    return got[0] / elapsed


def raw_latency(port: int, creds: tuple[str, str], n: int, rate: float) -> list[float]:
    """The harness's own floor: raw paho QoS 1 publish -> broker -> subscriber, paced like the node run."""
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []
    done = threading.Event()

    def on_message(c, u, m):  # type: ignore[no-untyped-def]
        latencies.append(time.perf_counter() - sent_at[m.payload[:8]])
        if len(latencies) == n:
            done.set()

    sub = subscriber(port, creds, f"vv/{DEVICE}/raw/latency", 1, on_message)
    pub = client(port, *creds)
    start = time.perf_counter()
    for i in range(n):
        target = start + i / rate
        while time.perf_counter() < target:
            time.sleep(0.0002)
        key = i.to_bytes(8, "big")
        sent_at[key] = time.perf_counter()
        pub.publish(f"vv/{DEVICE}/raw/latency", key + os.urandom(292), qos=1)
    done.wait(60)
    pub.loop_stop(), sub.loop_stop(), pub.disconnect(), sub.disconnect()
    return latencies


def node_run(port: int, creds: tuple[str, str], n: int, rate: float | None) -> tuple[float, list[float]]:
    """Publish n video.new to the relay node; time until each scan.done answer arrives."""
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    done = threading.Event()

    def on_message(c, u, m):  # type: ignore[no-untyped-def]
        doc = codec.decode(m.payload, content_type_of(m))
        start = sent_at.get(doc.get("causationid"))
        if start is not None:
            latencies.append(time.perf_counter() - start)
            if len(latencies) == n:
                done.set()

    sub = subscriber(port, creds, f"vv/{DEVICE}/scan/done", 1, on_message)
    pub = client(port, *creds)
    fixture = json.loads((REPO / "schemas/fixtures/video.new/valid-1.json").read_text())
    props = mqtt_properties(PacketTypes.PUBLISH)
    props.ContentType = MSGPACK
    events = [
        Event(
            type="video.new", source=f"vv://{DEVICE}/bench", device=DEVICE, epoch=1, seq=i + 1, data=fixture
        )
        for i in range(n)
    ]
    payloads = [(e.id, codec.encode(e.to_dict(), MSGPACK)) for e in events]
    start = time.perf_counter()
    for i, (event_id, payload) in enumerate(payloads):
        if rate:
            target = start + i / rate
            while time.perf_counter() < target:
                time.sleep(0.0002)
        sent_at[event_id] = time.perf_counter()
        pub.publish(f"vv/{DEVICE}/video/new", payload, qos=1, properties=props)
    done.wait(300)
    elapsed = time.perf_counter() - start
    pub.loop_stop(), sub.loop_stop(), pub.disconnect(), sub.disconnect()
    return len(latencies) / elapsed, latencies


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if len(values) > 2 else float("nan")


def measure(args: argparse.Namespace, autosave: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {
            **os.environ,
            "VV_HOME": f"{tmp}/home",
            "VV_DEVICE": DEVICE,
            "VV_MQTT_PORT": str(port),
            "VV_BROKER_AUTOSAVE_INTERVAL": str(autosave),
            "VV_BROKER_NODES": "bench.relay_node:Relay",
            "PYTHONPATH": str(REPO),
        }
        settings = load_settings(env)
        files = render_broker(settings, grants=broker_grants(settings))
        broker = subprocess.Popen(broker_command(files), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 10)
            creds = (ADMIN_USER, secret_for(settings, ADMIN_USER))
            raw1 = raw_paho(port, creds, args.events, 1)
            raw0 = raw_paho(port, creds, args.events, 0)
            paced = min(args.latency_rate, raw1 / 4)
            raw_lat = raw_latency(port, creds, min(args.events, int(paced * 10)), paced)
            node = subprocess.Popen(
                [
                    sys.executable,
                    *(["-m", "cProfile", "-o", args.profile] if args.profile else []),
                    "-m",
                    "nodes.cli",
                    "run",
                    "bench.relay_node:Relay",
                ],
                env=env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=open(args.node_log, "ab") if args.node_log else subprocess.DEVNULL,  # noqa: SIM115
            )
            try:
                time.sleep(1.0)  # the bench (not a test) gives the node a moment to subscribe
                node_run(port, creds, 200, None)  # warm-up
                rate, flood_lat = node_run(port, creds, args.events, None)
                _, paced_lat = node_run(port, creds, min(args.events, int(paced * 10)), paced)
            finally:
                node.terminate()
                node.wait(10)
        finally:
            broker.terminate()
            broker.wait(10)
    print(f"\nbroker autosave_on_changes, autosave_interval {autosave}:")
    print(f"  {'raw paho QoS 1 (300 B, 1 pub + 1 sub)':<48} {raw1:>9.0f} msg/s")
    print(f"  {'raw paho QoS 0':<48} {raw0:>9.0f} msg/s")
    print(
        f"  {f'raw paho QoS 1 latency paced at {paced:.0f} msg/s':<48} p50 {pct(raw_lat, 50):7.1f} ms   p99 {pct(raw_lat, 99):7.1f} ms"
    )
    print(
        f"  {'node: publish > validate > handle > publish':<48} {rate:>9.0f} events/s  ({rate / raw1:.0%} of raw QoS 1)"
    )
    print(
        f"  {'  latency at full load':<48} p50 {pct(flood_lat, 50):7.1f} ms   p99 {pct(flood_lat, 99):7.1f} ms"
    )
    print(
        f"  {f'  latency paced at {paced:.0f} events/s':<48} p50 {pct(paced_lat, 50):7.1f} ms   p99 {pct(paced_lat, 99):7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--latency-rate", type=float, default=200.0, help="paced rate for the latency run")
    parser.add_argument(
        "--autosave",
        type=int,
        action="append",
        help="broker autosave_interval(s) to compare (default: 1 and 1000)",
    )
    parser.add_argument("--node-log", help="append the node's stderr to this file")
    parser.add_argument("--profile", help="write a cProfile of the node process to this file")
    args = parser.parse_args()
    print(f"bus benchmark: {args.events} events, mosquitto on loopback, {os.cpu_count()} cores")
    for autosave in args.autosave or [1, 1000]:
        measure(args, autosave)
    print("\ngoal: node >= 50% of raw QoS 1 in the same configuration; paced p99 < 20 ms")


if __name__ == "__main__":
    main()
