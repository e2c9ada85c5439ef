"""Fleet link benchmark: an alert raised on an edge node -> visible on the console's page (its live stream).

Real processes throughout (bench/fleet_lab.py): the central broker (`vv broker --central`, TLS),
one edge broker (`vv broker`) bridged to it over TLS with the device's enrolled certificate, and
`vv console` over TLS with its own. The alerts are published on the edge broker with the disk
node's own login, one at a time, each a new incident (its own dedup key); for each we record when
it reached a plain subscriber of the central broker (the bridge hop) and when the console's page
showed it on its live stream (SSE, logged in as a viewer, as a browser follows it).
Beside it, in the same run and interleaved with it, the raw central broker's round trip: a
publisher and a subscriber of the central broker itself, TLS, QoS 1, the same payload size.

Run: `.venv/bin/python bench/fleet_link.py [--alerts N]`. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from paho.mqtt.packettypes import PacketTypes

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bus import client, wait  # noqa: E402
from bench.fleet_lab import Arrivals, Lab, bundle_tls, pct, subscribe, tls_client  # noqa: E402
from bus.client import mqtt_properties  # noqa: E402
from nodes.fleet.sim import SimDevice, wire  # noqa: E402

DEVICE = "A"
RAW_TOPIC = f"vv/{DEVICE}/health/bench/rtt"  # a device may write it; the console does not subscribe to it


def run(alerts: int) -> None:
    with tempfile.TemporaryDirectory(prefix="vv-fleet-link-") as tmp:
        lab = Lab(Path(tmp))
        try:
            lab.start_central()
            edge = lab.add_edge(DEVICE)
            lab.start_console()
            visible = lab.visibility()

            central = Arrivals()
            watcher = lab.console_client(central.on_message)
            subscribe(watcher, f"vv/{DEVICE}/alert/#")
            subscribe(watcher, RAW_TOPIC)
            raw_out = tls_client(lab.port, bundle_tls(Path(tmp) / DEVICE / "keys" / "fleet"), "bench-raw")
            disk = client(edge.mqtt.port, *edge.mqtt_credentials(edge.mqtt_username("disk")))
            props = mqtt_properties(PacketTypes.PUBLISH)
            props.ContentType = "application/json"
            sim = SimDevice(DEVICE)

            # the bridge's own notification says the link is up; then one alert through to the store
            subscribe(watcher, f"vv/{DEVICE}/bridge/state")
            if not wait(lambda: b"1" in central.at and disk.is_connected() and lab.console_knows(1), 60):
                raise RuntimeError("the bridge did not come up")
            warm = sim.alert("warm-up", node="disk")
            visible.want(DEVICE, warm.data["dedup_key"])
            disk.publish(*wire(warm), qos=1, properties=props)
            if visible.wait_for(DEVICE, warm.data["dedup_key"], 60) is None:
                raise RuntimeError("the console did not fold the warm-up alert")

            raw_rtt: list[float] = []
            bridged: list[float] = []
            stored: list[float] = []
            lost = 0
            for i in range(alerts):
                event = sim.alert(f"bench alert {i}", severity="WARNING", node="disk")
                topic, payload = wire(event)
                # raw: the same bytes through the central broker alone
                marker = payload + b" "
                sent = time.monotonic()
                raw_out.publish(RAW_TOPIC, marker, qos=1, properties=props)
                if wait(lambda m=marker: m in central.at, 10):
                    raw_rtt.append(central.at[marker] - sent)
                # the fleet path: edge broker -> bridge -> central -> console -> store
                key = event.data["dedup_key"]
                visible.want(DEVICE, key)
                sent = time.monotonic()
                disk.publish(topic, payload, qos=1, properties=props)
                seen = visible.wait_for(DEVICE, key, 10)
                if seen is None:
                    lost += 1
                    continue
                stored.append(seen - sent)
                if payload in central.at:
                    bridged.append(central.at[payload] - sent)
            visible.close()
            for c in (watcher, raw_out, disk):
                c.loop_stop()
                c.disconnect()
        finally:
            lab.close()

    print(f"fleet link, {alerts} alerts one at a time (TLS central broker, MQTT 3.1.1 bridge, QoS 1)")
    rows = [
        ("raw central broker round trip (TLS, QoS 1)", raw_rtt),
        ("edge node -> bridge -> central subscriber", bridged),
        ("edge node -> console page's live stream", stored),
    ]
    for name, values in rows:
        print(
            f"  {name:<46} n {len(values):5d}   p50 {pct(values, 50):7.1f} ms   p99 {pct(values, 99):7.1f} ms"
        )
    if lost:
        print(f"  {lost} alert(s) not visible within 10 s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--alerts", type=int, default=1000, help="alerts to send (default 1000)")
    args = parser.parse_args()
    run(args.alerts)


if __name__ == "__main__":
    main()
