"""The state `vv status` shows: the journal's fold, checked against the files in storage."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nodes.journal.fold import VideoState
from nodes.sign.logline import SUFFIX as LOGLINE_SUFFIX


def as_files_tell(state: VideoState, storage: Path) -> tuple[VideoState, str | None]:
    """The state, corrected by the storage tree where the two disagree, and why: the journal can miss
    events (its disk was full, it was down) and must never make `vv status` contradict the files."""
    on_disk = next(storage.glob(f"*/*/*/{state.video_id}/{state.video_id}{LOGLINE_SUFFIX}"), None)
    if on_disk is not None and state.stage != "signed":
        heard = state.stage or "nothing"
        note = f"signed: {on_disk} exists; the journal last heard {heard} (it missed events)"
        return dataclasses.replace(state, stage="signed"), note
    if on_disk is None and state.stage == "signed":
        return state, "no LogLine on disk for this signed video: run `vv verify` on the storage tree"
    return state, None
