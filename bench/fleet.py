"""Fleet console benchmark with the simulator: N = 100, 500, 1,000 devices.

For each N, a fresh central broker (`vv broker --central`, TLS), `vv console` (a real process over
TLS, SQLite store) and `vv fleet sim --devices N` as its own process: N devices, each on its own TLS
connection with its own enrolled certificate, publishing a realistic background (8 nodes' health
every 10 s at each device's own phase, alert bursts, flapping nodes, a signed LogLine a minute). On
top of it, one more enrolled device (`bench-probe`, its own certificate and connection, in this
process) publishes:
- latency: marked alerts, each a new incident, at 20/s -> visible on the console's page (its live
  stream, SSE, logged in as a viewer: bench/fleet_lab.py `Visibility`), p50/p99;
  beside it the same alerts' arrival at a raw subscriber of the same broker (console credential);
- ingestion: a flood of alerts, each a new incident, as fast as QoS 1 with 100 in flight allows;
  rate = alerts / (last visible - first sent) for the console and for the raw subscriber;
- the console process's CPU (user + system over the measured span / wall time, % of one core) and
  peak RSS, sampled with psutil; the simulator's CPU likewise.
All of it shares the machine's cores (2 here, with other jobs): figures are for everything on one box.

Run: `.venv/bin/python bench/fleet.py [--devices 100 500 1000] [--markers 200] [--flood 2000]`.
Prints a table, asserts nothing. Goals: p99 < 1 s at 1,000; console >= 50% of raw; RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from paho.mqtt.packettypes import PacketTypes

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bus import wait  # noqa: E402
from bench.fleet_lab import Arrivals, Lab, Visibility, bundle_tls, pct, subscribe, tls_client  # noqa: E402
from bus.client import mqtt_properties  # noqa: E402
from nodes.fleet.sim import SimDevice, wire  # noqa: E402

PROBE = "bench-probe"
FLOOD = "bench flood"
MARKER_RATE = 20.0  # marked alerts per second


@dataclass
class Row:
    devices: int
    ready_s: float
    console: list[float]
    raw: list[float]
    lost: int
    console_rate: float
    raw_rate: float
    console_cpu: float
    sim_cpu: float
    rss_mb: float
    resyncs: int  # the page's stream overflowed and was told to re-read (its events were dropped)


class Sampler:
    """A process's peak RSS, sampled every 0.2 s, and its CPU seconds between start and stop."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cpu0 = self._t0 = 0.0

    def _cpu(self) -> float:
        times = self.proc.cpu_times()
        return float(times.user + times.system)

    def start(self) -> None:
        self._cpu0, self._t0 = self._cpu(), time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.NoSuchProcess:  # the run failed and its processes are gone
                return

    def stop(self) -> float:
        """CPU, percent of one core, over the sampled span."""
        self._stop.set()
        self._thread.join(2)
        self.peak = max(self.peak, self.proc.memory_info().rss)
        return 100 * (self._cpu() - self._cpu0) / (time.monotonic() - self._t0)


def measure(lab: Lab, n: int, markers: int, flood: int) -> Row:
    started = time.monotonic()
    probe_tls = bundle_tls(Path(lab.vv("fleet", "enroll", PROBE, "--port", str(lab.port))))
    console = lab.start_console()
    sim = lab.spawn(
        "sim", lab.env, "fleet", "sim", "--devices", str(n), "--duration", "3600", "--port", str(lab.port),
        "--outages", "0", "--seed", str(n),
    )  # fmt: skip
    raw = Arrivals(b"bench ")
    watcher = lab.console_client(raw.on_message)
    subscribe(watcher, f"vv/{PROBE}/alert/+")
    probe = tls_client(lab.port, probe_tls, f"vv-{PROBE}-bridge")
    visible = lab.visibility()
    props = mqtt_properties(PacketTypes.PUBLISH)  # none: MQTT 3.1.1 bridges strip the content type
    device = SimDevice(PROBE)
    try:
        probe.publish(f"vv/{PROBE}/bridge/state", b"1", qos=1, retain=True).wait_for_publish(10)
        if (
            not wait(lambda: lab.console_knows(n + 1) or sim.poll() is not None, 600)
            or sim.poll() is not None
        ):
            raise RuntimeError(f"the simulated fleet did not come up (see {lab.root / 'sim.out'})")
        ready = time.monotonic() - started
        console_use, sim_use = Sampler(console.pid), Sampler(sim.pid)
        console_use.start()
        sim_use.start()

        sent: dict[tuple[str, str], tuple[float, bytes]] = {}
        for i in range(markers):
            event = device.alert(f"bench marker {i}", "WARNING")
            topic, payload = wire(event)
            key = (PROBE, event.data["dedup_key"])
            visible.want(*key)
            at = time.monotonic()
            sent[key] = (at, payload)
            probe.publish(topic, payload, qos=1, properties=props)
            time.sleep(max(0.0, at + 1 / MARKER_RATE - time.monotonic()))  # the pace, not a wait for state
        wait(lambda: set(sent) <= set(visible.seen), 120)
        console_lat = [visible.seen[k] - at for k, (at, _) in sent.items() if k in visible.seen]
        arrived = raw.snapshot()
        raw_lat = [arrived[p] - at for at, p in sent.values() if p in arrived]

        messages = [wire(device.alert(f"{FLOOD} {j}", "INFO")) for j in range(flood)]
        flood_at = time.monotonic()
        for topic, payload in messages:
            probe.publish(topic, payload, qos=1, properties=props)
        raw_done = wait(lambda: len(raw.seen(FLOOD.encode())) >= flood, 120)
        raw_last = max(raw.seen(FLOOD.encode()), default=0.0)
        counted = wait_count(visible, flood, flood_at + 300)
        console_rate = flood / (counted - flood_at) if counted else float("nan")
        raw_rate = flood / (raw_last - flood_at) if raw_done else float("nan")
        console_cpu, sim_cpu = console_use.stop(), sim_use.stop()
        lost = markers - len(console_lat)
        return Row(
            n, ready, console_lat, raw_lat, lost, console_rate, raw_rate, console_cpu, sim_cpu,
            console_use.peak / 2**20, visible.resyncs,
        )  # fmt: skip
    finally:
        visible.close()
        for client in (watcher, probe):
            client.loop_stop()
            client.disconnect()


def wait_count(visible: Visibility, total: int, deadline: float) -> float | None:
    """When the console held all `total` flood alerts (a count every 20 ms: the poll costs CPU)."""
    while visible.count_titled(FLOOD) < total:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)
    return time.monotonic()


def print_row(row: Row) -> None:
    ratio = 100 * row.console_rate / row.raw_rate
    print(
        f"{row.devices:>7} {row.ready_s:>7.0f} {pct(row.console, 50):>8.1f} {pct(row.console, 99):>8.1f}"
        f" {pct(row.raw, 50):>7.1f} {pct(row.raw, 99):>7.1f} {row.lost:>5} {row.console_rate:>9.0f}"
        f" {row.raw_rate:>7.0f} {ratio:>6.0f}% {row.console_cpu:>6.0f}% {row.sim_cpu:>6.0f}% {row.rss_mb:>7.1f}",
        flush=True,
    )
    if row.resyncs:
        print(f"        the page's live stream overflowed {row.resyncs} time(s): those changes were dropped")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, nargs="+", default=[100, 500, 1000], help="fleet sizes")
    parser.add_argument("--markers", type=int, default=200, help="marked alerts per size (latency)")
    parser.add_argument("--flood", type=int, default=2000, help="flood alerts per size (ingestion rate)")
    parser.add_argument(
        "--autosave",
        type=int,
        help="the central broker's autosave_interval in changes (default: the shipped 1000)",
    )
    args = parser.parse_args()
    print("alert published by a device -> visible on the console page's live stream and at a raw subscriber")
    print(f"central broker autosave_interval {args.autosave or 1000} (autosave_on_changes)")
    print(
        f"{'devices':>7} {'ready s':>7} {'p50 ms':>8} {'p99 ms':>8} {'raw p50':>7} {'raw p99':>7} {'lost':>5}"
        f" {'console/s':>9} {'raw/s':>7} {'ratio':>7} {'console':>7} {'sim':>7} {'rss MB':>7}"
    )
    for n in args.devices:
        with tempfile.TemporaryDirectory(prefix=f"vv-fleet-bench-{n}-") as tmp:
            central = {"VV_BROKER_CENTRAL_AUTOSAVE_INTERVAL": str(args.autosave)} if args.autosave else {}
            lab = Lab(Path(tmp), central)
            try:
                lab.start_central()
                print_row(measure(lab, n, args.markers, args.flood))
            finally:
                lab.close()
    print("goals at 1,000 devices: p99 < 1000 ms; console >= 50% of raw; RSS < 300 MB")


if __name__ == "__main__":
    main()
