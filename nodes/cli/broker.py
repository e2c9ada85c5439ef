"""Run the edge broker: mosquitto with mosquitto/edge.conf rendered for VV_HOME.

Without --dev: persistence on, no anonymous access, a password file (secrets in VV_HOME/keys) and
an ACL: each node its own user, publishing only the event types its class declares, its health and
alerts, and reading only what it consumes; the device user reads only; `vv-admin` reads and writes.
With `[bridge]` settings, a bridge to the central broker. `--central` runs the fleet's central
broker instead (nodes/fleet/central.py).
"""

from __future__ import annotations

import argparse
import os
import sys

from bus.broker import BrokerError, broker_command, render_broker
from bus.config import load_settings
from nodes.fleet import central
from nodes.registry import broker_grants


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dev", action="store_true", help="anonymous, loopback-only broker for development (NOT for devices)"
    )
    parser.add_argument("--print-config", action="store_true", help="render the config, print its path, exit")
    central.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.central:
        return central.run(args)
    settings = load_settings()
    try:
        files = render_broker(settings, dev=args.dev, grants=() if args.dev else broker_grants(settings))
        command = broker_command(files)
    except (BrokerError, LookupError, ImportError) as exc:
        print(f"vv broker: {exc}", file=sys.stderr)
        return 2
    if args.dev:
        print(
            "vv broker: *** DEVELOPMENT MODE: anonymous access, no ACL, loopback only. "
            "Never run a device like this. ***",
            file=sys.stderr,
        )
    print(f"vv broker: config {files.conf}, data {files.data_dir}", file=sys.stderr)
    if settings.bridge.address:
        link = f"{settings.bridge.address}:{settings.bridge.port}"
        print(
            f"vv broker: bridge to the central broker {link} as vv-{settings.device}-bridge", file=sys.stderr
        )
    if args.print_config:
        print(files.conf)
        return 0
    sys.stderr.flush()
    os.execv(command[0], command)  # mosquitto takes our pid: signals and exit code are its own
