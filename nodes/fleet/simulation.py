"""`vv fleet sim`: many simulated devices against a real central broker, each over its own TLS
connection with its own enrolled certificate, so the central ACL is exercised as a real fleet does.

Run on the central host (the fleet CA is in `$VV_HOME/fleet`). Each device behaves like a box with a
bridge: it announces its link on `vv/<device>/bridge/state` (retained, "0" as its will), publishes
the retained health of its nodes every interval, bursts of alerts that later resolve, a flapping
node on some devices, a signed LogLine per video (a video a minute by default) with the sign
node's chain head in its health, and on some devices a link outage of `outage_s`. It speaks MQTT
3.1.1 like the bridge (no content type: the console decodes by topic) and reads its own `cmd/#`.
Everything is bounded: the run ends after `duration_s` or `max_messages`, whichever comes first.

The devices' certificates (`$VV_HOME/fleet/sim/<device>/`) and signing keys are issued once and
registered in the fleet registry (site "sim", tag "sim"); a later run resumes each device's key and
LogLine chain from its `state.json`, so the console witnesses one continuing chain, not a rewind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import signal
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiomqtt

from bus.envelope import Event
from bus.fsutil import atomic_write_json
from nodes.fleet.pki import FleetCA, FleetError
from nodes.fleet.sim import SimDevice, wire

log = logging.getLogger("vv.fleet.sim")

SIM_TAG = "sim"
NODES = ("ingest", "scan", "summarize", "sign", "journal", "monitor", "disk", "alerter")
# (severity, node, title) of the troubles a device's alert bursts are about
TROUBLES = (
    ("WARNING", "disk", "Disk space low"),
    ("ERROR", "ingest", "Camera stream stalled"),
    ("WARNING", "scan", "Scan backlog growing"),
    ("CRITICAL", "monitor", "Node keeps crashing"),
)
MAX_DEVICES = 10_000


@dataclass(frozen=True)
class SimPlan:
    """What to simulate; the figures are per device unless they say otherwise."""

    devices: int
    duration_s: float
    host: str = "127.0.0.1"
    port: int = 8883
    health_interval_s: float = 10.0
    video_interval_s: float = 60.0
    burst_every_s: float = 120.0  # mean time between a device's alert bursts (exponential)
    flapping: float = 0.1  # share of devices with a node that keeps going offline and back
    outages: float = 0.1  # share of devices whose link goes down once, for outage_s
    outage_s: float = 20.0
    max_messages: int = 5_000_000  # for the whole fleet
    prefix: str = "sim-"
    seed: int = 1
    connect_concurrency: int = 50  # TLS handshakes in flight while the fleet connects

    def names(self) -> list[str]:
        width = len(str(self.devices))
        return [f"{self.prefix}{i:0{width}d}" for i in range(1, self.devices + 1)]


@dataclass
class SimSummary:
    devices: int
    connected: int = 0  # devices that connected at least once
    never_connected: list[str] = field(default_factory=list)
    published: dict[str, int] = field(default_factory=dict)  # by kind: health, alert, logline, link
    commands: int = 0  # cmd messages the devices received (the console's resyncs, acks, silences)
    outages: int = 0
    connection_errors: int = 0
    elapsed_s: float = 0.0
    ended_by: str = "duration"

    def ok(self) -> bool:
        return not self.never_connected

    def lines(self) -> list[str]:
        total = sum(self.published.values())
        rate = total / self.elapsed_s if self.elapsed_s else 0.0
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.published.items()))
        return [
            f"{self.devices} devices, {self.connected} connected, ended by {self.ended_by} after "
            f"{self.elapsed_s:.1f}s",
            f"published {total} messages ({rate:.0f}/s): {kinds or 'none'}",
            f"commands received {self.commands}, link outages {self.outages}, connection errors "
            f"{self.connection_errors}",
            *([f"never connected: {', '.join(self.never_connected[:10])}"] if self.never_connected else []),
        ]


@dataclass
class SimBundle:
    """One simulated device on disk: its bundle directory and its resumable state."""

    device: SimDevice
    directory: Path

    def tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.directory / "ca.crt"))
        context.load_cert_chain(str(self.directory / "device.crt"), str(self.directory / "device.key"))
        return context

    def save(self) -> None:
        dev = self.device
        atomic_write_json(
            self.directory / "state.json",
            {"seed": dev.seed.hex(), "epoch": dev.epoch, "head": dev.chain[-1] if dev.chain else None},
            mode=0o600,
        )


def prepare(fleet: FleetCA, plan: SimPlan) -> dict[str, SimBundle]:
    """The plan's devices: resumed where a bundle and state exist, else enrolled now (one batch)."""
    root = fleet.directory / "sim"
    registry = fleet.devices()
    bundles: dict[str, SimBundle] = {}
    fresh: dict[str, SimDevice] = {}
    for name in plan.names():
        directory = root / name
        state_file = directory / "state.json"
        if name in registry and state_file.exists() and (directory / "device.key").exists():
            state = json.loads(state_file.read_text())
            device = SimDevice(name, int(state["epoch"]) + 1, bytes.fromhex(state["seed"]), state["head"])
        else:
            device = fresh[name] = SimDevice(name)
        bundles[name] = SimBundle(device, directory)
    if fresh:
        fleet.enroll_devices(
            {name: dev.signing_keys() for name, dev in fresh.items()},
            root,
            site=SIM_TAG,
            tags=[SIM_TAG],
            renew=lambda record: SIM_TAG in record.get("tags", []),
        )
    for bundle in bundles.values():
        bundle.save()
    return bundles


class Simulation:
    """The fleet's connections in one asyncio loop; `run` until the plan's bounds."""

    def __init__(self, plan: SimPlan, bundles: dict[str, SimBundle]) -> None:
        self.plan, self.bundles = plan, bundles
        self.summary = SimSummary(devices=len(bundles))
        self.clients: dict[str, aiomqtt.Client] = {}  # the devices connected now
        self._connected: set[str] = set()
        self._stop = asyncio.Event()
        self._connecting = asyncio.Semaphore(plan.connect_concurrency)
        self._end = 0.0

    async def run(self) -> SimSummary:
        started = time.monotonic()
        self._end = started + self.plan.duration_s
        rng = random.Random(self.plan.seed)
        tasks = [
            asyncio.create_task(self._device(bundle, random.Random(rng.random())))
            for bundle in self.bundles.values()
        ]
        await self._pause(self.plan.duration_s)
        self._stop.set()
        await asyncio.gather(*tasks)
        self.summary.elapsed_s = time.monotonic() - started
        self.summary.connected = len(self._connected)
        self.summary.never_connected = sorted(set(self.bundles) - self._connected)
        for bundle in self.bundles.values():
            bundle.save()
        return self.summary

    def stop(self) -> None:
        """End the run now (a signal, a benchmark that has its figures); `run` returns its summary."""
        if not self._stop.is_set():
            self.summary.ended_by = "stop"
        self._stop.set()

    async def send(self, device: str, event: Event) -> None:
        """Publish `event` over `device`'s own connection (benchmarks' marked alerts)."""
        topic, payload = wire(event)
        await self.clients[device].publish(topic, payload, qos=1)

    # ------------------------------------------------------------------ one device
    async def _device(self, bundle: SimBundle, rng: random.Random) -> None:
        plan, name = self.plan, bundle.device.device
        outage_at = self._end
        if rng.random() < plan.outages:
            outage_at = time.monotonic() + rng.uniform(0.2, 0.6) * plan.duration_s
        flapper = rng.choice(NODES) if rng.random() < plan.flapping else None
        behaviour = Behaviour(bundle.device, rng, plan, flapper)
        while not self._stop.is_set():
            try:
                async with contextlib.AsyncExitStack() as stack:
                    client = aiomqtt.Client(
                        plan.host,
                        plan.port,
                        identifier=f"vv-{name}-bridge",
                        protocol=aiomqtt.ProtocolVersion.V311,
                        clean_session=True,
                        tls_context=bundle.tls(),
                        will=aiomqtt.Will(link_topic(name), b"0", qos=1, retain=True),
                        keepalive=60,
                    )
                    async with self._connecting:
                        await stack.enter_async_context(client)
                    self._connected.add(name)
                    self.clients[name] = client
                    stack.callback(self.clients.pop, name, None)
                    await self._publish(client, "link", link_topic(name), b"1", retain=True)
                    await client.subscribe(f"vv/{name}/cmd/#", qos=1)
                    listening = asyncio.create_task(self._commands(client))
                    stack.callback(listening.cancel)
                    until = min(outage_at, self._end)
                    await self._live(client, behaviour, until)
                    await self._publish(client, "link", link_topic(name), b"0", retain=True)
            except aiomqtt.MqttError as exc:
                self.summary.connection_errors += 1
                log.debug("%s: %s", name, exc)
                await self._pause(rng.uniform(1.0, 3.0))
                continue
            if outage_at < self._end and not self._stop.is_set():
                self.summary.outages += 1
                await self._pause(plan.outage_s)
                outage_at = self._end
                continue
            return

    async def _live(self, client: aiomqtt.Client, behaviour: Behaviour, until: float) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            due = behaviour.next_at()
            if min(due, until) > now:
                await self._pause(min(due, until) - now)
                continue
            if now >= until:
                return
            for kind, topic, payload, retain in behaviour.step(now):
                await self._publish(client, kind, topic, payload, retain)

    async def _publish(
        self, client: aiomqtt.Client, kind: str, topic: str, payload: bytes, retain: bool = False
    ) -> None:
        await client.publish(topic, payload, qos=1, retain=retain)
        self.summary.published[kind] = self.summary.published.get(kind, 0) + 1
        if sum(self.summary.published.values()) >= self.plan.max_messages and not self._stop.is_set():
            self.summary.ended_by = "max_messages"
            self._stop.set()

    async def _commands(self, client: aiomqtt.Client) -> None:
        async for _message in client.messages:
            self.summary.commands += 1

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, seconds))


def link_topic(device: str) -> str:
    return f"vv/{device}/bridge/state"


Message = tuple[str, str, bytes, bool]  # kind, topic, payload, retained


class Behaviour:
    """What one device publishes when (no MQTT here): health beats, alert bursts, a flapping
    node, LogLines. `next_at` says when something is due; `step` returns what is due now."""

    def __init__(self, device: SimDevice, rng: random.Random, plan: SimPlan, flapper: str | None) -> None:
        self.device, self.rng, self.plan, self.flapper = device, rng, plan, flapper
        now = time.monotonic()
        # devices of a real fleet started at different times: each beats at its own phase of the interval
        # (all in one second, 1,000 devices' 8,000 documents arrive together every interval)
        self.health_at = now + rng.uniform(0, plan.health_interval_s)
        self.video_at = now + rng.uniform(0, plan.video_interval_s)
        self.burst_at = now + rng.expovariate(1 / plan.burst_every_s)
        self.beats = 0
        self.firing: list[tuple[str, str, str]] = []

    def next_at(self) -> float:
        return min(self.health_at, self.video_at, self.burst_at)

    def step(self, now: float) -> list[Message]:
        out: list[Message] = []
        if now >= self.video_at:
            self.video_at += self.plan.video_interval_s
            out.append(self._event("logline", self.device.logline_event(self.device.logline())))
        if now >= self.burst_at:
            self.burst_at = now + self.rng.expovariate(1 / self.plan.burst_every_s)
            out.extend(self._burst())
        if now >= self.health_at:
            self.health_at += self.plan.health_interval_s
            out.extend(self._health())
        return out

    def _event(self, kind: str, event: Event) -> Message:
        topic, payload = wire(event)
        return kind, topic, payload, False

    def _alert(self, trouble: tuple[str, str, str], status: str) -> Message:
        severity, node, title = trouble
        return self._event("alert", self.device.alert(title, severity, status, node))

    def _burst(self) -> list[Message]:
        """Half the time a firing trouble resolves; otherwise one fires, repeated 1-5 times."""
        if self.firing and self.rng.random() < 0.5:
            return [self._alert(self.firing.pop(0), "resolved")]
        trouble = self.rng.choice(TROUBLES)
        if trouble not in self.firing:
            self.firing.append(trouble)
        return [self._alert(trouble, "firing") for _ in range(self.rng.randint(1, 5))]

    def _health(self) -> list[Message]:
        self.beats += 1
        dev, out = self.device, list[Message]()
        for node in NODES:
            status = "online"
            if node == self.flapper and self.beats % 4 in (2, 3):
                status = "offline"  # down two beats in four: the console sees it come and go
            if node == "sign" and dev.chain and status == "online":
                doc = dev.sign_health(dev.first + len(dev.chain) - 1)
                doc["details"]["health_interval_s"] = self.plan.health_interval_s
            else:
                doc = dev.health(node, self.plan.health_interval_s, status)
            out.append(("health", f"vv/{dev.device}/health/{node}", json.dumps(doc).encode(), True))
        if self.flapper and self.beats % 4 in (2, 0):  # the flapping node's own alert follows it
            firing = self.beats % 4 == 2
            alert = dev.alert(
                f"{self.flapper} keeps restarting", "WARNING", "firing" if firing else "resolved"
            )
            out.append(self._event("alert", alert))
        return out


# ---------------------------------------------------------------------- `vv fleet sim`
def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _seconds(text: str) -> float:
    value = _number(text)
    if not 0 < value < 1e7:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _share(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0 and 1")
    return value


def _count(limit: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or not 1 <= int(text) <= limit:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {limit}")
        return int(text)

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`vv fleet sim`'s flags."""
    parser.add_argument(
        "--devices", type=_count(MAX_DEVICES), required=True, metavar="N", help="simulated devices"
    )
    parser.add_argument(
        "--duration", type=_seconds, required=True, metavar="S", help="run this long, then stop (seconds)"
    )
    parser.add_argument(
        "--address", default="127.0.0.1", help="the central broker's address (its certificate must name it)"
    )
    parser.add_argument(
        "--port", type=_count(65535), default=8883, help="the central broker's TLS port (8883)"
    )
    parser.add_argument(
        "--health-interval", type=_seconds, default=10.0, metavar="S", help="each node's health beat (10)"
    )
    parser.add_argument(
        "--video-interval", type=_seconds, default=60.0, metavar="S", help="a signed LogLine every S (60)"
    )
    parser.add_argument(
        "--burst-every",
        type=_seconds,
        default=120.0,
        metavar="S",
        help="mean time between alert bursts (120)",
    )
    parser.add_argument("--flapping", type=_share, default=0.1, help="share of devices with a flapping node")
    parser.add_argument("--outages", type=_share, default=0.1, help="share of devices whose link drops once")
    parser.add_argument("--outage", type=_seconds, default=20.0, metavar="S", help="outage length")
    parser.add_argument(
        "--max-messages", type=_count(10**9), default=5_000_000, metavar="N", help="stop after N publishes"
    )
    parser.add_argument("--prefix", default="sim-", help="device ids are PREFIX0001...")
    parser.add_argument("--seed", type=int, default=1, help="the behaviour's random seed")
    parser.add_argument("--json", action="store_true", help="the summary as JSON")


async def _until_signalled(simulation: Simulation) -> SimSummary:
    """Run to the plan's bounds, or stop early (and still summarise) on SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, simulation.stop)
    return await simulation.run()


def run(args: argparse.Namespace, fleet: FleetCA) -> int:
    """Enrol (or resume) the devices, run them, print the summary; 1 if a device never connected."""
    plan = SimPlan(
        devices=args.devices,
        duration_s=args.duration,
        host=args.address,
        port=args.port,
        health_interval_s=args.health_interval,
        video_interval_s=args.video_interval,
        burst_every_s=args.burst_every,
        flapping=args.flapping,
        outages=args.outages,
        outage_s=args.outage,
        max_messages=args.max_messages,
        prefix=args.prefix,
        seed=args.seed,
    )
    try:
        started = time.monotonic()
        bundles = prepare(fleet, plan)
        print(
            f"vv fleet sim: {len(bundles)} devices ready in {time.monotonic() - started:.1f}s "
            f"(certificates in {fleet.directory / 'sim'})",
            file=sys.stderr,
        )
    except FleetError as exc:
        print(f"vv fleet sim: {exc}", file=sys.stderr)
        return 2
    summary = asyncio.run(_until_signalled(Simulation(plan, bundles)))
    if args.json:
        print(json.dumps(asdict(summary), indent=2))
    else:
        print("\n".join(summary.lines()))
    return 0 if summary.ok() else 1
