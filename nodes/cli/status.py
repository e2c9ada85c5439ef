"""Show each video's state folded from the journal alone (no broker needed): stages, times, failures.

The summary and `vv status VIDEO` read the shared video index (`nodes/journal/index.py`), which folds
only what the journal gained since it last looked: their cost does not grow with the history. The
summary is bounded (`--limit`): videos still in the pipeline first, then the latest ones, with the
count of videos per stage. `--since` folds the events received since then (older segments are
skipped unread); without a writable index (`state/` read-only) the whole journal is folded.

Exit codes: 0 shown, 1 the video is unknown or the journal is damaged, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bus.argtypes import rfc3339
from bus.config import load_settings
from bus.inputs import shown
from nodes.journal.fold import VideoState, fold_journal, format_table, format_video, to_json
from nodes.journal.index import VideoIndex, VideoRecord, open_index
from nodes.journal.store import JournalError
from nodes.ops.status import as_files_tell

DEFAULT_LIMIT = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "video", nargs="?", help="a video id (or a unique prefix of one) for its full timeline"
    )
    parser.add_argument("--since", type=rfc3339, help="only events received at or after this RFC 3339 time")
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help=f"videos in the summary (default {DEFAULT_LIMIT}): those in the pipeline first, then the latest",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _fail(message: str) -> int:
    print(f"vv status: {shown(message)}", file=sys.stderr)
    return 1


def _show_video(args: argparse.Namespace, found: VideoRecord, storage: Path) -> int:
    state, files = as_files_tell(found.state, storage)
    if args.json:
        doc = to_json(state)
        if found.missing:
            doc["removed_segments"] = found.missing
        if files:
            doc["files"] = files
        print(json.dumps(doc, indent=2))
        return 0
    print(format_video(state))
    if files:
        print(f"files      {shown(files)}")
    if found.missing:
        print(
            f"removed    earlier events were in journal segment(s) {', '.join(found.missing)} "
            "(removed by retention; kept in the `vv export` archives)"
        )
    return 0


def _show_summary(
    args: argparse.Namespace,
    states: list[VideoState],
    counts: Mapping[str, int],
    rejected: tuple[int, list[str]],
    storage: Path,
) -> int:
    states = [as_files_tell(state, storage)[0] for state in states]
    total = sum(counts.values())
    if args.json:
        doc: dict[str, Any] = {
            "videos": [to_json(s) for s in states],
            "rejected": rejected[1],
            "rejected_count": rejected[0],
            "counts": dict(counts),
            "total": total,
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(format_table(states) if states else "no videos in the journal yet")
    if total > len(states):
        per_stage = ", ".join(f"{stage} {n:,}" for stage, n in sorted(counts.items()))
        print(
            f"showing {len(states)} of {total:,} videos ({per_stage}): those in the pipeline first, then "
            "the latest; `vv status VIDEO` for one, --limit N for more"
        )
    if rejected[0]:
        print(f"{rejected[0]} journal record(s) could not be folded, e.g.: {rejected[1][0]}", file=sys.stderr)
    return 0


def _from_index(args: argparse.Namespace, index: VideoIndex, storage: Path) -> int:
    index.refresh()
    if args.video:
        matches = index.find(args.video)
        found = index.record(matches[0]) if len(matches) == 1 else None
        if found is None:
            return _fail(
                f"{args.video}: {'unknown video' if not matches else 'prefix matches several videos'}"
            )
        return _show_video(args, found, storage)
    listed = [r.state for r in index.oldest_open(args.limit)]
    ids = {s.video_id for s in listed}
    listed += [r.state for r in index.recent(args.limit) if r.state.video_id not in ids]
    return _show_summary(args, listed[: args.limit], index.counts(), index.rejected(), storage)


def _from_full_fold(args: argparse.Namespace, journal: Path, storage: Path) -> int:
    """`--since`, or no usable index: fold the journal's events (since then) in this process."""
    folded = fold_journal(journal, since=args.since)
    states = folded.states
    if args.video:
        matches = [vid for vid in states if vid.startswith(args.video)]
        if len(matches) != 1:
            return _fail(
                f"{args.video}: {'unknown video' if not matches else f'prefix matches {len(matches)} videos'}"
            )
        return _show_video(args, VideoRecord(states[matches[0]]), storage)
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state.stage or "unknown"] = counts.get(state.stage or "unknown", 0) + 1
    never = datetime.min.replace(tzinfo=UTC)
    ordered = sorted(states.values(), key=lambda s: s.last_event_time or never, reverse=True)
    rejected = (len(folded.rejected), folded.rejected[:10])
    return _show_summary(args, ordered[: args.limit], counts, rejected, storage)


def run(args: argparse.Namespace) -> int:
    if args.limit < 1:
        print("vv status: --limit must be at least 1", file=sys.stderr)
        return 2
    settings = load_settings()
    journal = settings.paths.journal
    try:
        if args.since is None:
            try:
                return _from_index(args, open_index(settings.paths), settings.paths.storage)
            except (sqlite3.Error, PermissionError) as exc:
                print(f"vv status: video index unusable ({exc}); folding the whole journal", file=sys.stderr)
        return _from_full_fold(args, journal, settings.paths.storage)
    except FileNotFoundError:
        return _fail(f"no journal at {journal} (is the journal node running?)")
    except (JournalError, ValueError) as exc:
        return _fail(str(exc))
