"""The supervisor node of `vv up` (nodes/cli/up.py): which children to run, and the node that runs them.

The `supervisor` node publishes every child's pid, state and restart count in its health and
restarts a child on `cmd.supervisor.restart` {"args": {"node": NAME, "reason": TEXT, "pid": PID?}}
(what the monitor sends for a hung node); the restart policy itself is nodes/ops/supervisor.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import socket
import sys
import time
from typing import Any, TextIO

from bus.broker import Grant, mosquitto_binary
from bus.client import MqttError
from bus.config import Settings
from bus.envelope import JSON, Event, utc_now
from bus.node import Node, RejectedMessage, on, on_health
from bus.topics import health_topic
from bus.version import VERSION
from nodes.dvr.settings import DvrSettings
from nodes.ops.settings import SupervisorSettings
from nodes.ops.supervisor import Child, ChildSpec, EventKind, RestartPolicy, Supervisor
from nodes.registry import NODES, load_node_class

log = logging.getLogger("vv.up")

BROKER_TIER, NODE_TIER = 0, 1


ALERT_OUTPUT_LINES = 20


def default_nodes(settings: Settings) -> list[str]:
    """Every registered node whose module is part of this build; dvr only when a stream is set."""
    names = []
    for name, target in NODES.items():
        if name == "dvr" and not settings.section(DvrSettings).url:
            continue
        try:
            found = importlib.util.find_spec(target.partition(":")[0]) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            names.append(name)
    return names


def node_name(spec: str) -> str:
    """The name a spec runs under (its health topic): registry names as they are, module:Class by import."""
    if spec in NODES:
        return spec
    return load_node_class(spec).name  # raises LookupError / ImportError with a clear message


def broker_listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def child_specs(settings: Settings, nodes: str | None, broker: bool | None) -> list[ChildSpec]:
    """The children of `vv up`: the broker (when asked, or when nothing listens), then the nodes."""
    text = settings.section(SupervisorSettings).nodes if nodes is None else nodes
    wanted = [s.strip() for s in text.split(",") if s.strip()] or default_nodes(settings)
    specs: list[ChildSpec] = []
    host, port = settings.mqtt.host, settings.mqtt.port
    if broker is True or (broker is None and not broker_listening(host, port)):
        mosquitto_binary()  # fail now with the install hint, not in a restart loop
        specs.append(
            ChildSpec(
                "broker",
                (sys.executable, "-m", "nodes.cli", "broker"),
                tier=BROKER_TIER,
                ready=lambda: broker_listening(host, port),
            )
        )
    for spec in wanted:
        specs.append(ChildSpec(node_name(spec), (sys.executable, "-m", "nodes.cli", "run", spec), NODE_TIER))
    return specs


class SupervisorNode(Node):
    """The bus side of `vv up`: child status in health, restarts on command, an alert when one is FATAL."""

    name = "supervisor"

    def __init__(
        self,
        settings: Settings,
        specs: list[ChildSpec],
        *,
        reset: bool = False,
        echo: bool = False,
        out: TextIO = sys.stdout,
    ) -> None:
        super().__init__(settings)
        cfg = settings.section(SupervisorSettings)
        self.supervisor = Supervisor(
            specs,
            RestartPolicy.from_settings(cfg, cfg.max_restarts),
            history_path=self.paths.state / "supervisor.json",
            startup_grace_s=cfg.startup_grace_s,
            stop_timeout_s=cfg.stop_timeout_s,
            log_lines=max(cfg.log_lines, ALERT_OUTPUT_LINES),
            listener=self._on_child,
            fatal_retry_s=cfg.fatal_retry_s,
        )
        self.reset, self.echo, self.out = reset, echo, out
        self._reported: dict[str, int] = {}  # node child -> pid reported started (subscribed)

    async def setup(self) -> None:
        await self.supervisor.start(reset=self.reset)

    def health_details(self) -> dict[str, Any]:
        return {"children": self.supervisor.status()}

    @on_health
    async def child_health(self, node: str, health: dict[str, Any]) -> None:
        """A node child is started once it is subscribed: its process publishes health online after
        its subscriptions, so that (with its current pid, not a retained one of an earlier run) is
        what `vv up` reports as started."""
        child = self.supervisor.children.get(node)
        if child is None or child.spec.tier != NODE_TIER or health.get("status") != "online":
            return
        pid = health.get("pid")
        if pid is not None and pid == child.pid and self._reported.get(node) != pid:
            self._reported[node] = pid
            self.say(f"{node:<12} {'started':<11} subscribed, pid {pid}")

    @on("cmd.supervisor.restart")
    async def restart(self, event: Event) -> None:
        args = event.data["args"]
        node, pid = args.get("node"), args.get("pid")
        if not isinstance(node, str) or not node:
            raise RejectedMessage("cmd.supervisor.restart needs args.node, the name of a child")
        if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
            raise RejectedMessage(f"cmd.supervisor.restart: args.pid must be an integer, not {pid!r}")
        reason = args.get("reason") or event.data.get("reason") or f"requested by {event.source}"
        result = await self.supervisor.restart(node, str(reason), pid)
        self.say(f"{node:<12} command     {result}")

    def say(self, line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", file=self.out, flush=True)

    async def _on_child(self, child: Child, kind: EventKind, message: str) -> None:
        if kind == "line":
            if self.echo:
                print(f"[{child.name}] {message}", file=self.out, flush=True)
            return
        label: str = "FATAL" if kind == "fatal" else kind
        if kind == "started" and child.spec.tier == NODE_TIER:
            label = "launched"  # "started" is said once it is subscribed (child_health)
        self.say(f"{child.name:<12} {label:<11} {message}")
        if kind in ("exited", "fatal") and child.spec.tier == NODE_TIER:
            await self._publish_child_offline(child, f"FATAL: {message}" if kind == "fatal" else message)
        if kind == "exited" and child.process is not None and (child.process.returncode or 0) < 0:
            await self.alerts.fire(
                f"killed:{child.name}",
                "ERROR",
                "Node killed by a signal",
                f"{child.name} ended without a word: {message}. A SIGKILL is often the kernel's "
                "out-of-memory killer; it is restarted.",
                context={"node": child.name},
                actions=[
                    "Check `journalctl -k | grep -i -E 'killed process|out of memory'` and the node's memory",
                    f"Read logs/app.log (lines with node={child.name}) for what it was doing",
                ],
            )
        if kind == "fatal":
            await self._alert_fatal(child)
        elif kind == "running":
            await self.alerts.resolve(f"fatal:{child.name}", f"{child.name} is running again")
            await self.alerts.resolve(f"killed:{child.name}", f"{child.name} is running again")

    async def _publish_child_offline(self, child: Child, reason: str) -> None:
        """The child's retained health says it is down at once: a process that died cannot, and its
        last will comes only after the will delay (or never, when the broker went down with it)."""
        document = {
            "node": child.name,
            "device": self.device,
            "status": "offline",
            "time": utc_now(),
            "version": VERSION,
            "reason": reason,
            "details": {"reported_by": "supervisor", "restarts": child.tracker.total},
        }
        try:
            await self.publish_document(health_topic(self.device, child.name), document, JSON, retain=True)
        except MqttError as exc:
            log.warning("offline health of %s not published: %s", child.name, exc)

    @classmethod
    def grant(cls, settings: Settings, node: str) -> Grant:
        """Besides its own: the health of its children, which it reports when they die."""
        base = super().grant(settings, node)
        return dataclasses.replace(base, write=(*base.write, health_topic(settings.device, "+")))

    async def _alert_fatal(self, child: Child) -> None:
        policy = child.tracker.policy
        reasons = "\n".join(f"  - {r}" for r in child.tracker.reasons())
        output = "\n".join(f"  {line}" for line in list(child.lines)[-ALERT_OUTPUT_LINES:])
        await self.alerts.fire(
            f"fatal:{child.name}",
            "CRITICAL",
            "Node keeps crashing",
            f"{child.name} was restarted {len(child.tracker.restarts)} times within {policy.window_s:g}s "
            f"and failed again; {self.supervisor.retry_note()}.\nRestart reasons:\n{reasons}\n"
            f"Last output:\n{output or '  (none)'}",
            context={"node": child.name, "restarts": child.tracker.total},
            actions=[
                f"Read the last output above and logs/app.log (lines with node={child.name})",
                f"After fixing the cause: restart `vv up --reset`, or publish cmd.supervisor.restart "
                f'with args {{"node": "{child.name}"}}',
            ],
        )
