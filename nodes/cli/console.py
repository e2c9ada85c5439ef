"""`vv console`: run the central console service (fleet state, alerts, chain witness, web page) in the
foreground; `vv console users ...` manages who may log in to its page.

It connects to the central broker named by the `[console]` settings (TLS with the console's
enrolled certificate, or a plain loopback listener for development), folds what every device
bridges into its store under `console.home`, sends operators' actions back as commands, and serves
its web page on `console.http_host:http_port` (127.0.0.1:8380 by default; 0 turns it off).
`vv fleet status|alerts|ack|silence|history` read and write that store. Users of the page:
`vv console users add NAME --role viewer|operator` (the password read from a pipe, or asked twice),
`vv console users list`, `vv console users remove NAME`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import ssl
import sys

import aiomqtt

from bus.config import load_settings
from bus.logs import setup_logging
from nodes.console.service import connection, serve, store_name
from nodes.console.settings import ConsoleSettings
from nodes.console.store import StoreError
from nodes.console.web.auth import ROLES, Users, UsersError, check_name


def _name(text: str) -> str:
    try:
        return check_name(text)
    except UsersError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Settings: [console] host, port, ca, cert, key, home, http_host, http_port, users_file, cookie_secure,"
        " reorder_timeout_s, stale_factor, history_days, database_url (PostgreSQL, shared by replicas), shared_group"
    )
    verbs = parser.add_subparsers(dest="console_verb", metavar="users")
    users = verbs.add_parser("users", help="who may log in to the console's web page").add_subparsers(
        dest="users_verb", required=True, metavar="add|check|list|remove"
    )
    add = users.add_parser("add", help="add a user, or replace one's password and role")
    add.add_argument("name", type=_name, metavar="NAME")
    add.add_argument(
        "--role", choices=ROLES, required=True, help="viewer: sees; operator: also acks and silences"
    )
    check = users.add_parser(
        "check", help="exit 0 if the user exists with this role and password (stdin), else 1 (for Ansible)"
    )
    check.add_argument("name", metavar="NAME")
    check.add_argument("--role", choices=ROLES, required=True)
    users.add_parser("list", help="the users and their roles")
    remove = users.add_parser("remove", help="remove a user (their sessions end at their next request)")
    remove.add_argument("name", metavar="NAME")


def _password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise UsersError("the two passwords differ")
    return first


def _users(args: argparse.Namespace) -> int:
    settings = load_settings()
    users = Users(settings.section(ConsoleSettings).users_path(settings.paths.home))
    try:
        if args.users_verb == "list":
            for user in sorted(users.load().values(), key=lambda u: u.name):
                print(f"{user.name:<24} {user.role}")
            return 0
        if args.users_verb == "remove":
            if not users.remove(args.name):
                print(f"vv console users: no user {args.name!r} in {users.path}", file=sys.stderr)
                return 1
            print(f"removed {args.name} from {users.path}")
            return 0
        if args.users_verb == "check":
            return 0 if users.matches(args.name, args.role, _password()) else 1
        replaced = users.put(args.name, args.role, _password())
    except UsersError as exc:
        print(f"vv console users: {exc}", file=sys.stderr)
        return 2
    print(f"{'replaced' if replaced else 'added'} {args.name} ({args.role}) in {users.path}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.console_verb == "users":
        return _users(args)
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
    except OSError as exc:
        print(f"vv console: web page on {console.http_host}:{console.http_port}: {exc}", file=sys.stderr)
    except StoreError as exc:
        print(f"vv console: console store {store_name(settings)}: {exc}", file=sys.stderr)
        return 1
    return 0
