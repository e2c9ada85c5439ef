"""Journal retention: which sealed segments may go, decided from their sidecars, the video index and
the export archives, so a device keeps a bounded journal without losing what is still needed.

A segment is removed only when ALL of these hold:
- it is sealed (never the current one) and the video index has folded it whole (below its position),
  so no reader that depends on the index misses its events;
- no video still in the pipeline has an event in it (the reconciler re-announces from those, and the
  monitor judges them); videos in a final stage keep their row in the index (`vv status VIDEO` still
  finds them, with the stage and times) and their archive;
- it is due: its newest record is older than `journal.retention_days`, or the journal is over
  `journal.max_bytes` (oldest segments first, until it is not);
- with `journal.export_before_delete` (the default), a `vv export` manifest in exports/ lists it
  with its size and sha256 as the file is now, and the manifest's tarball is there.
What stays although due is counted (waiting for an export, or held by a video in the pipeline), so
the journal node's health shows why the journal is not shrinking.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from bus.config import VVPaths
from bus.fsutil import sha256_file
from nodes.journal.index import BATCH, index_errors, open_index
from nodes.journal.settings import JournalSettings
from nodes.journal.store import DAY_S, Journal, list_segments, read_index, segment_name

log = logging.getLogger("vv.journal.retention")


@dataclass
class RetentionReport:
    """One retention pass: what was removed and why the rest of what was due stayed."""

    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    waiting_export: list[str] = field(default_factory=list)
    pinned: list[str] = field(default_factory=list)  # held by a video still in the pipeline

    def summary(self) -> dict[str, int]:
        return {
            "removed": len(self.removed),
            "freed_bytes": self.freed_bytes,
            "waiting_export": len(self.waiting_export),
            "pinned": len(self.pinned),
        }


def exported_segments(exports: Path) -> dict[str, tuple[int, str]]:
    """Journal files listed by the export manifests whose tarball is present: name -> (size, sha256)."""
    found: dict[str, tuple[int, str]] = {}
    for manifest in sorted(exports.glob("*.manifest.json")) if exports.is_dir() else []:
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
            tarball = exports / str(doc["tarball"]["name"])
            if tarball.stat().st_size != doc["tarball"]["size"]:
                continue
            for item in doc["files"]:
                path = str(item["path"])
                if path.startswith("journal/"):
                    found[path.removeprefix("journal/")] = (int(item["size"]), str(item["sha256"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a whole export: it archives nothing
    return found


def _archived(path: Path, size: int, archive: dict[str, tuple[int, str]]) -> bool:
    """Listed with this size and the same bytes (hashed only when the name and size already match)."""
    listed = archive.get(path.name)
    return listed is not None and listed[0] == size and listed[1] == sha256_file(path)


def plan(
    directory: Path,
    settings: JournalSettings,
    *,
    folded_below: int,
    pinned: set[int],
    exports: Path,
    now: float,
) -> tuple[list[int], RetentionReport]:
    """The segments to remove (numbers) and the report; nothing is touched."""
    report = RetentionReport()
    everything = list_segments(directory)
    sizes = {number: path.stat().st_size for number, path in everything}
    excess = sum(sizes.values()) - settings.max_bytes if settings.max_bytes else 0
    cutoff = now - settings.retention_days * DAY_S
    archive = exported_segments(exports) if settings.export_before_delete else {}
    chosen: list[int] = []
    for number, path in everything[:-1]:
        index = read_index(path)
        old = settings.retention_days > 0 and index is not None and index.older_than(cutoff)
        if not (old or excess > 0) or number >= folded_below:
            continue
        if number in pinned:
            report.pinned.append(path.name)
            continue
        if settings.export_before_delete and not _archived(path, sizes[number], archive):
            report.waiting_export.append(path.name)
            continue
        chosen.append(number)
        excess -= sizes[number]
    return chosen, report


def apply_retention(journal: Journal, paths: VVPaths, settings: JournalSettings) -> RetentionReport:
    """Fold one batch of the index's backlog at most (the monitor and the reconciler keep it current;
    a first catch-up of a long journal must not hold up the journal node), then remove what `plan`
    allows, through the journal's writer. Only segments the index has folded can go."""
    for number, _path in list_segments(journal.directory)[:-1]:
        journal.sealed_index(number)  # time index of segments sealed before sidecars existed
    if settings.retention_days <= 0 and settings.max_bytes <= 0:
        return RetentionReport()
    with index_errors(paths):
        index = open_index(paths)
        index.refresh(limit=BATCH)
        folded = index.folded_up_to()
        pinned = index.pinned_segments()
    chosen, report = plan(
        journal.directory,
        settings,
        folded_below=folded.segment if folded is not None else 0,
        pinned=pinned,
        exports=paths.exports,
        now=time.time(),
    )
    for number in chosen:
        report.freed_bytes += journal.remove_segment(number)
        report.removed.append(segment_name(number))
    if report.removed:
        log.info("journal retention removed %s (%d bytes)", ", ".join(report.removed), report.freed_bytes)
    return report
