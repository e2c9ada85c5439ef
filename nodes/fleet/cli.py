"""`vv fleet`: see and act on the fleet from the console's store (status, alerts, ack, silence, history).

Minimal mount of nodes/console/queries.py's QUERIES; enrolment verbs come with the fleet PKI.
"""

from __future__ import annotations

import argparse

from nodes.console.queries import QUERIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="|".join(QUERIES))
    for name, (add, run_query, help_text) in QUERIES.items():
        verb = verbs.add_parser(name, help=help_text, description=help_text)
        add(verb)
        verb.set_defaults(query=run_query)


def run(args: argparse.Namespace) -> int:
    code: int = args.query(args)
    return code
