"""Show each video's state folded from the journal alone (no broker needed): stages, times, failures.

Exit codes: 0 shown, 1 the video is unknown or the journal is damaged, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys

from bus.argtypes import rfc3339
from bus.config import load_settings
from bus.inputs import shown
from nodes.journal.fold import fold_journal, format_table, format_video, to_json
from nodes.journal.store import JournalError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "video", nargs="?", help="a video id (or a unique prefix of one) for its full timeline"
    )
    parser.add_argument("--since", type=rfc3339, help="only events received at or after this RFC 3339 time")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        folded = fold_journal(settings.paths.journal, since=args.since)
    except FileNotFoundError:
        print(
            f"vv status: no journal at {settings.paths.journal} (is the journal node running?)",
            file=sys.stderr,
        )
        return 1
    except (JournalError, ValueError) as exc:
        print(f"vv status: {shown(exc)}", file=sys.stderr)
        return 1
    states = folded.states
    if args.video:
        matches = [vid for vid in states if vid.startswith(args.video)]
        if len(matches) != 1:
            reason = "unknown video" if not matches else f"prefix matches {len(matches)} videos"
            print(f"vv status: {shown(args.video)}: {reason}", file=sys.stderr)
            return 1
        state = states[matches[0]]
        print(json.dumps(to_json(state), indent=2) if args.json else format_video(state))
        return 0
    if args.json:
        print(
            json.dumps(
                {"videos": [to_json(s) for s in states.values()], "rejected": folded.rejected}, indent=2
            )
        )
    else:
        print(format_table(states) if states else "no videos in the journal yet")
        if folded.rejected:
            print(
                f"{len(folded.rejected)} journal record(s) could not be folded, e.g.: {folded.rejected[0]}",
                file=sys.stderr,
            )
    return 0
