"""Start the device: the broker (if asked, or if none is listening) and every node, supervised.

Each node runs as `vv run NODE` in its own process. One that exits is restarted with capped
exponential backoff; after `supervisor.max_restarts` restarts within `supervisor.restart_window_s`
it is FATAL: left down, with one alert.critical carrying its last output. The `supervisor` node in
this process publishes every child's pid, state and restart count in its health and restarts a
child on `cmd.supervisor.restart` {"args": {"node": NAME, "reason": TEXT, "pid": PID?}} (what the
monitor sends for a hung node). SIGINT/SIGTERM stop every child (nodes first, the broker last)
and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from bus.broker import BrokerError
from bus.config import load_settings
from bus.logs import setup_logging
from nodes.ops.up import NODE_TIER, SupervisorNode, child_specs

log = logging.getLogger("vv.up")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start `vv broker` as a supervised child (default: only when nothing listens on mqtt.host:port)",
    )
    parser.add_argument(
        "--nodes", help="comma-separated node names or module:Class specs (default: setting supervisor.nodes)"
    )
    parser.add_argument(
        "--reset", action="store_true", help="forget FATAL states and restart counts left by earlier runs"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also print every line the children write"
    )


async def _up(node: SupervisorNode) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = loop.create_task(node.main(handle_signals=False))
    stopper = loop.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    code = 0 if stop.is_set() else 1
    node.say("stopping every child (nodes first, a broker last)")
    await node.supervisor.stop(node.supervisor.names(tier=NODE_TIER))
    node.stop()  # the supervisor node disconnects (publishing offline) while the broker still runs
    try:
        await task
    except Exception:
        log.exception("the supervisor node failed")
        code = 1
    await node.supervisor.stop()
    stopper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stopper
    node.say("all children stopped")
    return code


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        specs = child_specs(settings, args.nodes, args.broker)
        node = SupervisorNode(settings, specs, reset=args.reset, echo=args.verbose)
    except (LookupError, ImportError, ValueError) as exc:
        print(f"vv up: {exc}", file=sys.stderr)
        return 2
    except BrokerError as exc:
        print(f"vv up: {exc}", file=sys.stderr)
        return 1
    setup_logging("supervisor", settings.device, settings.paths.logs, settings.log_level)
    for handler in logging.getLogger().handlers:  # the status lines replace INFO chatter on the terminal
        if type(handler) is logging.StreamHandler:
            handler.setLevel(logging.WARNING)
    node.say(f"vv up: {', '.join(s.name for s in specs)} on {settings.mqtt.host}:{settings.mqtt.port}")
    return asyncio.run(_up(node))
