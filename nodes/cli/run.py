"""Run one node of the mesh in the foreground until SIGTERM/SIGINT (what `vv up` and systemd start)."""

from __future__ import annotations

import argparse
import sys

from bus.argtypes import instance_name
from bus.config import load_settings
from bus.inputs import shown
from bus.logs import setup_logging
from nodes.registry import NODES, load_node_class


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node", help=f"node name ({', '.join(sorted(NODES))}) or module:Class")
    parser.add_argument(
        "--instance",
        default="",
        type=instance_name,
        help="worker suffix when several workers of one stage run (list NODE:INSTANCE in broker.instances)",
    )


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        cls = load_node_class(args.node)
    except (LookupError, ImportError) as exc:
        print(f"vv run: {shown(exc)}", file=sys.stderr)
        return 2
    name = cls.name + (f"-{args.instance}" if args.instance else "")
    setup_logging(name, settings.device, settings.paths.logs, settings.log_level)
    return cls(settings, instance=args.instance).run()
