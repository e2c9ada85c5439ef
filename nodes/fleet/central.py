"""`vv broker --central`: the central broker for the fleet PKI in `$VV_HOME/fleet`.

Kept apart from the edge broker's verb, which only adds the flags and hands over here.
"""

from __future__ import annotations

import argparse
import os
import sys

from bus.broker import BrokerError, TlsFiles, broker_command
from bus.broker_central import DEV_USER, render_central
from bus.config import load_settings
from nodes.fleet.pki import FleetCA, FleetError, console_cn


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The central broker's flags on `vv broker`."""
    parser.add_argument(
        "--central",
        action="store_true",
        help="run the fleet's central broker (TLS, client certificates from `vv fleet`) instead of the edge one",
    )
    parser.add_argument(
        "--listen",
        type=_listen,
        default=("0.0.0.0", 8883),
        metavar="HOST:PORT",
        help="with --central: where devices and consoles connect (default 0.0.0.0:8883)",
    )
    parser.add_argument(
        "--dev-listener",
        type=_port,
        metavar="PORT",
        help=f"with --central: also a plain loopback listener for development (login {DEV_USER}, "
        "password in VV_HOME/keys); NOT for production",
    )


def run(args: argparse.Namespace) -> int:
    """Render the central config and exec mosquitto on it (exit 2 when it cannot be rendered)."""
    settings = load_settings()
    fleet = FleetCA(settings.paths.home / "fleet")
    host, port = args.listen
    try:
        if not fleet.server_cert.exists():
            raise FleetError(
                f"no server certificate in {fleet.directory}: run `vv fleet ca init --server-name HOST` "
                "or `vv fleet server-cert HOST...`"
            )
        files = render_central(
            settings,
            TlsFiles(fleet.ca_cert, fleet.server_cert, fleet.server_key),
            crl=fleet.current_crl(),
            host=host,
            port=port,
            consoles=[console_cn(name) for name in sorted(fleet.consoles())],
            dev_port=args.dev_listener,
        )
        command = broker_command(files)
    except (BrokerError, FleetError) as exc:
        print(f"vv broker --central: {exc}", file=sys.stderr)
        return 2
    if args.dev_listener:
        print(
            f"vv broker --central: *** DEVELOPMENT LISTENER on 127.0.0.1:{args.dev_listener}: plain MQTT, "
            f"password login {DEV_USER} with console rights. Never run production like this. ***",
            file=sys.stderr,
        )
    print(
        f"vv broker --central: listening on {host}:{port} (TLS, client certificates), config {files.conf}",
        file=sys.stderr,
    )
    if args.print_config:
        print(files.conf)
        return 0
    sys.stderr.flush()
    os.execv(command[0], command)
