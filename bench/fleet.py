"""Fleet console benchmark with the simulator: N = 100, 500, 1,000 devices.

For each N, a fresh central broker (`vv broker --central`, TLS) and `vv console` (a real process over
TLS, SQLite store), and `vv fleet sim`'s engine in this process: N devices, each on its own TLS
connection with its own enrolled certificate, publishing their realistic background (health every
10 s for 8 nodes, alert bursts, flapping nodes, a signed LogLine a minute). Then:
- latency: marked alerts (each a new incident) published at a steady rate from random devices ->
  visible at the console (bench/fleet_lab.py `Visibility`: its store polled every 5 ms today; the
  page's live stream once it lands), p50/p99;
- ingestion: every device floods F alerts at once; rate = alerts / (last visible - first sent), for
  the console (its store's folded counts) and for a raw subscriber of the same broker (console
  credential, QoS 1, counting the same messages) in the same run;
- the console process's CPU (user + system seconds over the run / wall time) and peak RSS (psutil).
The simulator, the poller and the raw subscriber share this process and the machine's cores with
the console and the broker: figures are for everything on one box.

Run: `.venv/bin/python bench/fleet.py [--devices 100 500 1000] [--markers 200]`. Prints a table,
asserts nothing. Goals: p99 < 1 s at 1,000; console >= 50% of the raw rate; RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bus import wait  # noqa: E402
from bench.fleet_lab import Lab, Visibility, pct, subscribe  # noqa: E402
from nodes.fleet.pki import FleetCA  # noqa: E402
from nodes.fleet.simulation import SimPlan, Simulation, prepare  # noqa: E402

FLOOD_TITLE = "bench flood"
MARKER_RATE = 20.0  # marked alerts per second


@dataclass
class Row:
    devices: int
    ready_s: float
    latencies: list[float]
    lost: int
    console_rate: float
    raw_rate: float
    cpu_percent: float
    rss_mb: float


class RawCounter:
    """A raw subscriber of the central broker: when it received the n-th flood message."""

    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0
        self._lock = threading.Lock()

    def on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        if FLOOD_TITLE.encode() in message.payload:
            with self._lock:
                self.count += 1
                self.last = time.monotonic()


class Sampler:
    """The console's peak RSS, sampled every 0.2 s; its CPU seconds between start and stop."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cpu0 = 0.0
        self._t0 = 0.0

    def _cpu(self) -> float:
        times = self.proc.cpu_times()
        return float(times.user + times.system)

    def start(self) -> None:
        self._cpu0, self._t0 = self._cpu(), time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> float:
        """CPU percent of one core over the sampled span."""
        self._stop.set()
        self._thread.join(2)
        self.peak = max(self.peak, self.proc.memory_info().rss)
        return 100 * (self._cpu() - self._cpu0) / (time.monotonic() - self._t0)


async def measure(lab: Lab, n: int, markers: int, flood: int) -> Row:
    plan = SimPlan(devices=n, duration_s=3600, port=lab.port, outages=0.0, seed=n)
    started = time.monotonic()
    bundles = prepare(FleetCA(lab.home / "fleet"), plan)
    console = lab.start_console()
    sim = Simulation(plan, bundles)
    running = asyncio.create_task(sim.run())
    raw = RawCounter()
    raw_client = lab.console_client(raw.on_message)
    subscribe(raw_client, "vv/+/alert/+")
    visible = Visibility(lab.store_file)
    visible.start()
    try:
        while not (len(sim.clients) == n and lab.console_knows(n)):
            if time.monotonic() - started > 300:
                raise RuntimeError(f"{len(sim.clients)} of {n} devices connected after 300 s")
            await asyncio.sleep(0.2)
        ready = time.monotonic() - started
        sampler = Sampler(console.pid)
        sampler.start()

        # latency: marked alerts at a steady rate from random devices
        rng = random.Random(n)
        names = sorted(bundles)
        sent: dict[tuple[str, str], float] = {}
        for i in range(markers):
            name = rng.choice(names)
            event = bundles[name].device.alert(f"bench marker {i}", "WARNING")
            key = (name, event.data["dedup_key"])
            visible.want(*key)
            sent[key] = time.monotonic()
            await sim.send(name, event)
            await asyncio.sleep(max(0.0, sent[key] + 1 / MARKER_RATE - time.monotonic()))
        await asyncio.to_thread(wait, lambda: set(sent) <= set(visible.seen), 30)
        latencies = [visible.seen[k] - at for k, at in sent.items() if k in visible.seen]

        # ingestion: every device floods `flood` alerts at once, each a new incident
        events = {
            name: [bundles[name].device.alert(f"{FLOOD_TITLE} {name} {j}", "INFO") for j in range(flood)]
            for name in names
        }

        async def send_all(name: str) -> None:
            for event in events[name]:
                await sim.send(name, event)

        total = n * flood
        counted: list[float] = []

        def console_done() -> bool:
            while visible.count_titled(FLOOD_TITLE) < total:  # a count every 20 ms: the poll costs CPU
                if time.monotonic() - flood_at > 120:
                    return False
                time.sleep(0.02)
            counted.append(time.monotonic())
            return True

        flood_at = time.monotonic()
        await asyncio.gather(*(send_all(name) for name in names))
        await asyncio.to_thread(console_done)
        await asyncio.to_thread(wait, lambda: raw.count >= total, 30)
        console_rate = total / (counted[0] - flood_at) if counted else float("nan")
        raw_rate = raw.count / (raw.last - flood_at) if raw.count else float("nan")
        cpu = sampler.stop()
        return Row(
            n, ready, latencies, markers - len(latencies), console_rate, raw_rate, cpu, sampler.peak / 2**20
        )
    finally:
        visible.close()
        raw_client.loop_stop()
        raw_client.disconnect()
        sim.stop()
        await running


def run(sizes: list[int], markers: int) -> list[Row]:
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix=f"vv-fleet-bench-{n}-") as tmp:
            lab = Lab(Path(tmp))
            try:
                lab.start_central()
                rows.append(asyncio.run(measure(lab, n, markers, max(5, 5000 // n))))
            finally:
                lab.close()
        print_row(rows[-1])
    return rows


def print_row(row: Row) -> None:
    ratio = 100 * row.console_rate / row.raw_rate if row.raw_rate else float("nan")
    print(
        f"{row.devices:>7} {row.ready_s:>8.1f} {pct(row.latencies, 50):>8.1f} {pct(row.latencies, 99):>8.1f}"
        f" {row.lost:>5} {row.console_rate:>10.0f} {row.raw_rate:>10.0f} {ratio:>6.0f}% {row.cpu_percent:>6.0f}%"
        f" {row.rss_mb:>7.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, nargs="+", default=[100, 500, 1000], help="fleet sizes")
    parser.add_argument("--markers", type=int, default=200, help="marked alerts per size (latency)")
    args = parser.parse_args()
    print("alert published by a simulated device -> visible at the console (store poll, 5 ms)")
    print(
        f"{'devices':>7} {'ready s':>8} {'p50 ms':>8} {'p99 ms':>8} {'lost':>5} {'console/s':>10} {'raw/s':>10}"
        f" {'ratio':>7} {'cpu':>7} {'rss MB':>7}"
    )
    run(args.devices, args.markers)
    print("goals at 1,000 devices: p99 < 1000 ms; console >= 50% of raw; RSS < 300 MB")


if __name__ == "__main__":
    main()
