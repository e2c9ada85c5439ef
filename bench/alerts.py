"""Alerter benchmark: alerts/s the alerter folds and forwards.

- fold: the pure decision logic in-process (observe + due, notifications written to the on-disk
  queue as the node does), N alerts over K keys.
- end to end: a real mosquitto, a real `vv run alerter` process and a local HTTP receiver behind
  an Apprise json:// URL. N alerts over K keys are published at full speed, then K resolves; the
  clock stops when the receiver holds the resolve of every key and their counts add up to N, so
  every alert was received, validated, folded and its episode forwarded.

Run: `.venv/bin/python bench/alerts.py [--alerts N] [--keys K]`. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bus import client, free_port, wait  # noqa: E402
from bus import codec  # noqa: E402
from bus.alerts import build_alert  # noqa: E402
from bus.broker import ADMIN_USER, broker_command, render_broker, secret_for  # noqa: E402
from bus.client import mqtt_properties  # noqa: E402
from bus.config import load_settings  # noqa: E402
from bus.envelope import JSON, Event  # noqa: E402
from nodes.alerter.fold import Fold, FoldSettings, Route  # noqa: E402
from nodes.alerter.queue import DiskQueue  # noqa: E402
from nodes.registry import broker_grants  # noqa: E402

DEVICE = "bench"


def sample_alerts(n: int, keys: int, resolved: bool = False) -> list[dict[str, Any]]:
    return [
        build_alert(
            severity="WARNING",
            title="Bench alert",
            details=f"occurrence {i}",
            source="bench",
            device=DEVICE,
            context={"key": f"k{i % keys}"},
            actions=["nothing to do"],
            status="resolved" if resolved else "firing",
        )
        for i in range(n)
    ]


def fold_rate(n: int, keys: int) -> float:
    """Alerts/s through Fold.observe + due (every 100 alerts), deliveries written to a DiskQueue."""
    docs = sample_alerts(n, keys)
    with tempfile.TemporaryDirectory() as tmp:
        fold = Fold(
            FoldSettings(group_wait_s=0, group_interval_s=0), [Route("bench", "INFO")], Path(tmp) / "f.json"
        )
        queue = DiskQueue(Path(tmp) / "queue", 100_000)
        start = time.perf_counter()
        for i, doc in enumerate(docs):
            fold.observe(doc)
            if i % 100 == 99:
                for delivery in fold.due():
                    queue.put(delivery.to_dict())
                fold.save()
        elapsed = time.perf_counter() - start
    return n / elapsed


class Receiver:
    """Counts what came back: resolved alert ids and their counts, from json:// bodies."""

    def __init__(self) -> None:
        self.resolved: dict[str, int] = {}
        self.posts = 0
        self.done = threading.Event()
        self.expected = (0, 0)
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                outer.record(body["message"])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def record(self, message: str) -> None:
        with self.lock:
            self._record(message)

    def _record(self, message: str) -> None:
        self.posts += 1
        for section in message.split("\n\n---\n\n"):
            if section.startswith("[RESOLVED]"):
                ident = re.search(r"Alert id: ([0-9a-f]{64})", section)
                count = re.search(r"count: (\d+)", section)
                if ident and count:
                    self.resolved[ident[1]] = int(count[1])
        keys, total = self.expected
        if len(self.resolved) == keys and sum(self.resolved.values()) == total:
            self.done.set()


def end_to_end_rate(n: int, keys: int, autosave: int = 1000) -> tuple[float, int]:
    """Alerts/s from the first publish until every episode's resolve (with its full count) arrived."""
    receiver = Receiver()
    receiver.expected = (keys, n)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        channels = [
            {"kind": "apprise", "url": f"json://127.0.0.1:{receiver.port}/bench", "min_severity": "INFO"}
        ]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("VV_")},
            "VV_HOME": f"{tmp}/home",
            "VV_DEVICE": DEVICE,
            "VV_MQTT_PORT": str(port),
            "VV_ALERTER_CHANNELS": json.dumps(channels),
            "VV_ALERTER_GROUP_WAIT_S": "0",
            "VV_ALERTER_GROUP_INTERVAL_S": "0.05",
            "VV_BROKER_AUTOSAVE_INTERVAL": str(autosave),
            "PYTHONPATH": str(REPO),
        }
        settings = load_settings(env)
        broker = subprocess.Popen(
            broker_command(render_broker(settings, grants=broker_grants(settings))),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        node: subprocess.Popen[bytes] | None = None
        try:
            creds = (ADMIN_USER, secret_for(settings, ADMIN_USER))
            wait(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 10)
            online = threading.Event()

            def on_health(c: paho.Client, u: Any, m: paho.MQTTMessage) -> None:
                if json.loads(m.payload).get("status") == "online":
                    online.set()

            watcher = client(port, *creds, on_message=on_health)
            watcher.subscribe(f"vv/{DEVICE}/health/alerter", qos=1)
            node = subprocess.Popen(
                [sys.executable, "-m", "nodes.cli", "run", "alerter"],
                env=env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if not online.wait(30):
                raise RuntimeError("the alerter did not come online")
            pub = client(port, *creds)
            props = mqtt_properties(PacketTypes.PUBLISH)
            props.ContentType = JSON
            docs = sample_alerts(n, keys) + sample_alerts(keys, keys, resolved=True)
            payloads = [
                codec.encode(
                    Event(
                        type="alert.warning",
                        source=f"vv://{DEVICE}/bench",
                        device=DEVICE,
                        epoch=1,
                        seq=i + 1,
                        data=doc,
                    ).to_dict(),
                    JSON,
                )
                for i, doc in enumerate(docs)
            ]
            start = time.perf_counter()
            for payload in payloads:
                pub.publish(f"vv/{DEVICE}/alert/warning", payload, qos=1, properties=props)
            finished = receiver.done.wait(300)
            elapsed = time.perf_counter() - start
            pub.loop_stop(), watcher.loop_stop(), pub.disconnect(), watcher.disconnect()
            if not finished:
                raise RuntimeError(f"only {len(receiver.resolved)} of {keys} resolves arrived")
        finally:
            if node is not None:
                node.terminate()
                node.wait(10)
            broker.terminate()
            broker.wait(10)
            receiver.server.shutdown()
    return n / elapsed, receiver.posts


def alerts_per_second(alerts: int = 5000, keys: int = 50, autosave: int = 1000) -> dict[str, float]:
    """Print and return the alerter's figures: in-process fold rate, end-to-end fold-and-forward rate.

    `autosave` is the broker's autosave_interval: 1 (the edge default) makes mosquitto's
    persistence the bottleneck, 1000 measures the alerter itself.
    """
    fold = fold_rate(alerts * 10, keys)
    e2e, posts = end_to_end_rate(alerts, keys, autosave)
    print(
        f"alerter benchmark: {os.cpu_count()} cores, alerts over {keys} keys, broker autosave_interval {autosave}"
    )
    print(
        f"  {'fold in-process (observe + due + queue write)':<52} {fold:>9.0f} alerts/s  ({alerts * 10} alerts)"
    )
    print(
        f"  {'end to end: broker > alerter > json:// receiver':<52} {e2e:>9.0f} alerts/s  "
        f"({alerts} alerts folded into {posts} notifications)"
    )
    return {"fold_alerts_per_s": fold, "end_to_end_alerts_per_s": e2e, "notifications": posts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument(
        "--autosave", type=int, default=1000, help="broker autosave_interval (edge default: 1)"
    )
    args = parser.parse_args()
    alerts_per_second(args.alerts, args.keys, args.autosave)


if __name__ == "__main__":
    main()
