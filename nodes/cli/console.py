"""`vv console`: run the central console service (fleet state, alerts, chain witness) in the foreground.

It connects to the central broker named by the `[console]` settings (TLS with the console's
enrolled certificate, or a plain loopback listener for development), folds what every device
bridges into its store under `console.home`, and sends operators' actions back as commands.
`vv fleet status|alerts|ack|silence|history` read and write that store.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys

import aiomqtt

from bus.config import load_settings
from bus.logs import setup_logging
from nodes.console.service import connection, serve, store_name
from nodes.console.settings import ConsoleSettings
from nodes.console.store import StoreError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Settings: [console] host, port, ca, cert, key, home, reorder_timeout_s, stale_factor, history_days,"
        " database_url (PostgreSQL, shared by replicas), shared_group"
    )


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    console = settings.section(ConsoleSettings)
    if bool(console.cert) != bool(console.key):
        print("vv console: console.cert and console.key go together", file=sys.stderr)
        return 2
    try:
        connection(settings).tls_context()
    except (OSError, ssl.SSLError) as exc:
        print(f"vv console: console.ca, console.cert or console.key unusable: {exc}", file=sys.stderr)
        return 2
    setup_logging("console", settings.device, settings.paths.logs, settings.log_level)
    try:
        asyncio.run(serve(settings))
    except aiomqtt.MqttError as exc:
        print(f"vv console: central broker {console.host}:{console.port}: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"vv console: console store {store_name(settings)}: {exc}", file=sys.stderr)
        return 1
    return 0
