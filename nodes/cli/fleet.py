"""`vv fleet`: enrol devices and consoles with the fleet CA, and see and act on the fleet.

On the central host (`$VV_HOME/fleet` holds the CA, the server certificate and the registries):
  vv fleet ca init --server-name central.example.net    the CA (key 0600) and the broker's certificate
  vv fleet enroll cam-gw-01 --site depot --tag north     a bundle for the box: ca.crt, device.crt,
                                                        device.key (0600), bridge.toml
  vv fleet enroll cam-gw-01 --csr device.csr            the same for a key that never left the box
  vv fleet enroll --console main                        the console's credential (CN console:main)
  vv fleet revoke cam-gw-01 --reason "stolen"           its certificate onto the CRL (crl.pem); then
                                                        restart the central broker (a reload keeps
                                                        its open connection)
  vv fleet crl                                          crl.pem written unless current (for a copy)
On the box:
  vv fleet csr                                          a key (0600) and a CSR in $VV_HOME/keys/fleet
The console's views (status, alerts, ack, silence, history) come with the console service.
  vv fleet sim --devices 100 --duration 60             simulated devices against the central broker
Exit codes: 0 done, 1 refused (a CA or enrolment already there, a CSR that does not match, an
unknown device to revoke), 2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import typing
from collections.abc import Callable
from pathlib import Path

from bus.argtypes import output_dir
from bus.config import load_settings
from bus.inputs import shown
from nodes.fleet import simulation
from nodes.fleet.pki import (
    CA_DAYS,
    CERT_DAYS,
    FleetCA,
    FleetError,
    check_device_id,
    load_certificate,
    make_csr,
    read_signing_keys,
)

Query = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]


def _console_queries() -> dict[str, Query]:
    """The console's subcommands (status, alerts, ack, silence, history) where it is installed."""
    try:
        module = importlib.import_module("nodes.console.queries")
    except ModuleNotFoundError as exc:
        if exc.name not in ("nodes.console", "nodes.console.queries"):
            raise
        return {}
    return typing.cast(dict[str, Query], module.QUERIES)


QUERIES = _console_queries()


def _device(text: str) -> str:
    try:
        return check_device_id(text)
    except FleetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _days(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 36500:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days (1-36500)")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    ca = verbs.add_parser("ca", help="the fleet CA").add_subparsers(
        dest="ca_verb", required=True, metavar="init"
    )
    init = ca.add_parser("init", help="create the fleet CA in VV_HOME/fleet (refuses to replace one)")
    init.add_argument("--name", default="VV Edge fleet CA", help="the CA's common name")
    init.add_argument("--days", type=_days, default=CA_DAYS, help=f"validity (default {CA_DAYS})")
    init.add_argument(
        "--server-name",
        action="append",
        default=[],
        metavar="HOST",
        help="also issue the central broker's certificate for this name or address (repeatable)",
    )
    init.add_argument("--force", action="store_true", help="replace an existing CA (every enrolment dies)")

    server = verbs.add_parser("server-cert", help="(re)issue the central broker's TLS certificate")
    server.add_argument("hosts", nargs="+", metavar="HOST", help="names and addresses devices connect to")
    server.add_argument("--days", type=_days, default=CERT_DAYS, help=f"validity (default {CERT_DAYS})")

    enroll = verbs.add_parser("enroll", help="issue a device (or --console) its certificate bundle")
    enroll.add_argument("device", nargs="?", type=_device, metavar="DEVICE", help="the device id (its CN)")
    enroll.add_argument("--console", type=_device, metavar="NAME", help="issue the console NAME instead")
    enroll.add_argument("--site", help="the device's site, for the console")
    enroll.add_argument("--tag", action="append", dest="tags", metavar="TAG", help="a tag (repeatable)")
    enroll.add_argument(
        "--out", type=output_dir, help="bundle directory (default VV_HOME/fleet/enrolled/<id>)"
    )
    enroll.add_argument(
        "--csr", type=Path, metavar="FILE", help="sign this CSR (`vv fleet csr`): no key is made here"
    )
    enroll.add_argument(
        "--signing-key",
        type=Path,
        metavar="FILE",
        help="the device's `vv keys export` output, for the console",
    )
    enroll.add_argument(
        "--renew", action="store_true", help="re-issue an enrolled device (keeps site, tags, keys)"
    )
    enroll.add_argument(
        "--address", help="central broker address for bridge.toml (default: the server cert's)"
    )
    enroll.add_argument("--port", type=int, default=8883, help="central broker port for bridge.toml (8883)")
    enroll.add_argument("--days", type=_days, default=CERT_DAYS, help=f"validity (default {CERT_DAYS})")

    csr = verbs.add_parser("csr", help="on the box: a private key and a CSR for `vv fleet enroll --csr`")
    csr.add_argument(
        "--out", type=output_dir, help="directory (default VV_HOME/keys/fleet, the bridge's default)"
    )

    revoke = verbs.add_parser(
        "revoke", help="put a device's (or --console's) certificate on the CRL the central broker checks"
    )
    revoke.add_argument("device", nargs="?", type=_device, metavar="DEVICE", help="the device id")
    revoke.add_argument("--console", type=_device, metavar="NAME", help="revoke the console NAME instead")
    revoke.add_argument("--reason", default="", metavar="TEXT", help="why, for the record (revoked.json)")

    verbs.add_parser(
        "crl",
        help="write VV_HOME/fleet/crl.pem unless it is current (a CA made before revocation had none)",
    )

    devices = verbs.add_parser("devices", help="list the enrolled devices (VV_HOME/fleet/devices.json)")
    devices.add_argument("--json", action="store_true", help="the registry as JSON")

    simulation.add_arguments(
        verbs.add_parser(
            "sim", help="simulate N devices against the central broker, each with its own certificate"
        )
    )

    for name, (add, _run, help_text) in QUERIES.items():
        add(verbs.add_parser(name, help=help_text))


def _bridge_toml(device: str, address: str, port: int) -> str:
    return (
        f"# The [bridge] settings of {device}: add them to its VV_CONFIG file, put ca.crt, device.crt and\n"
        "# device.key (mode 0600) in its $VV_HOME/keys/fleet/ (or set ca, cert and key below), then\n"
        "# restart `vv broker`.\n"
        "[bridge]\n"
        f"address = {json.dumps(address)}\n"
        f"port = {port}\n"
    )


def _server_address(fleet: FleetCA, given: str | None) -> str:
    if given:
        return given
    if fleet.server_cert.exists():
        names = [a.value for a in load_certificate(fleet.server_cert).subject]
        return str(names[0])
    raise FleetError("no server certificate to take the central address from: pass --address HOST")


def _enroll(fleet: FleetCA, home: Path, args: argparse.Namespace) -> int:
    if bool(args.device) == bool(args.console):
        print("vv fleet enroll: give either DEVICE or --console NAME", file=sys.stderr)
        return 2
    ident = args.device or args.console
    out = args.out or home / "fleet" / "enrolled" / (ident if args.device else f"console-{ident}")
    if args.console:
        issued = fleet.enroll_console(args.console, out, csr=args.csr, days=args.days)
    else:
        keys = read_signing_keys(args.signing_key) if args.signing_key else None
        address = _server_address(fleet, args.address)
        issued = fleet.enroll_device(
            args.device,
            out,
            site=args.site,
            tags=args.tags,
            signing_keys=keys,
            csr=args.csr,
            renew=args.renew,
            days=args.days,
        )
        (out / "bridge.toml").write_text(_bridge_toml(args.device, address, args.port))
    print(out)
    key = "device.key (0600)" if issued.key_written else "no key (it stays on the box that made the CSR)"
    print(
        f"enrolled {issued.cn}: certificate {issued.cert_sha256[:16]}... serial {issued.serial}, not after "
        f"{issued.not_after}; {shown(out)} holds ca.crt, device.crt, {key}",
        file=sys.stderr,
    )
    return 0


def _revoke(fleet: FleetCA, args: argparse.Namespace) -> int:
    if bool(args.device) == bool(args.console):
        print("vv fleet revoke: give either DEVICE or --console NAME", file=sys.stderr)
        return 2
    if args.console:
        revoked = fleet.revoke_console(args.console, shown(args.reason))
    else:
        revoked = fleet.revoke_device(args.device, shown(args.reason))
    print(fleet.crl)
    if revoked.already:
        print(
            f"{revoked.cn}: certificate serial {revoked.serial} was already revoked at {revoked.revoked_at}",
            file=sys.stderr,
        )
        return 0
    renew = f"--console {args.console}" if args.console else f"{args.device} --renew"
    print(
        f"revoked {revoked.cn}: certificate serial {revoked.serial} is on {shown(fleet.crl)}.\n"
        "RESTART the central broker now (`systemctl restart vv-central-broker`): mosquitto checks the CRL "
        f"only when a client connects, so a connection {revoked.cn} has open stays up until a restart. "
        "A reload (SIGHUP, `systemctl reload`) re-reads the CRL but leaves that connection alone.\n"
        f"`vv fleet enroll {renew}` issues it a new certificate; this one stays revoked.",
        file=sys.stderr,
    )
    return 0


def _devices(fleet: FleetCA, as_json: bool) -> int:
    registry = fleet.devices()
    if as_json:
        print(json.dumps({"devices": registry}, indent=2, sort_keys=True))
        return 0
    for device, record in sorted(registry.items()):
        tags = ",".join(record["tags"]) or "-"
        revoked = record.get("revoked")
        state = f" REVOKED at {revoked['at']} ({revoked['reason'] or 'no reason given'})" if revoked else ""
        print(f"{device:<24} site={record['site'] or '-'} tags={tags} not_after={record['not_after']}{state}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.verb in QUERIES:
        code: int = QUERIES[args.verb][1](args)
        return code
    settings = load_settings()
    home = settings.paths.home
    fleet = FleetCA(home / "fleet")
    try:
        if args.verb == "ca":
            cert = fleet.init(args.name, args.days, args.force)
            print(fleet.ca_cert)
            print(
                f"fleet CA {cert.subject.rfc4514_string()} in {fleet.directory} (key 0600)", file=sys.stderr
            )
            if args.server_name:
                fleet.issue_server(args.server_name)
                print(
                    f"server certificate for {', '.join(args.server_name)}: {fleet.server_cert}",
                    file=sys.stderr,
                )
            return 0
        if args.verb == "server-cert":
            fleet.issue_server(args.hosts, args.days)
            print(fleet.server_cert)
            return 0
        if args.verb == "enroll":
            return _enroll(fleet, home, args)
        if args.verb == "crl":
            print(fleet.current_crl())
            return 0
        if args.verb == "revoke":
            return _revoke(fleet, args)
        if args.verb == "sim":
            return simulation.run(args, fleet)
        if args.verb == "csr":
            key, csr = make_csr(settings.device, args.out or settings.paths.keys / "fleet")
            print(csr)
            print(
                f"key {key} (0600, stays here); send {csr} to `vv fleet enroll {settings.device} --csr`",
                file=sys.stderr,
            )
            return 0
        return _devices(fleet, args.json)
    except FleetError as exc:
        print(f"vv fleet: {exc}", file=sys.stderr)
        return 1
