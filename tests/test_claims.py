"""The claim checks alone: every way an event's file claims can fail is refused, naming why."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from bus.node import RefusedClaim
from nodes.common.claims import check_analytic, check_summary, check_video, video_inputs

CONTENT = b"a video, as far as these checks care" * 50


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return tmp_path / "home" / "storage"


def stored(storage: Path, content: bytes = CONTENT, name: str = "clip.mp4") -> dict[str, Any]:
    digest = hashlib.sha256(content).hexdigest()
    path = storage / "2026" / "12" / "01" / digest[:32] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return {"id": digest[:32], "path": str(path), "sha256": digest, "bytes": len(content)}


def test_a_true_claim_gives_the_real_path(storage: Path) -> None:
    video = stored(storage, name="my clip; $(rm -rf) ü.mp4")
    checked = check_video(storage, video)
    assert checked.path == Path(video["path"]) and checked.directory.name == video["id"]


def test_a_storage_root_reached_through_a_link_is_fine(tmp_path: Path, storage: Path) -> None:
    video = stored(storage)
    link = tmp_path / "linked-home"
    link.symlink_to(storage.parent)
    claimed = {**video, "path": video["path"].replace(str(storage.parent), str(link))}
    assert check_video(link / "storage", claimed).path == Path(video["path"]).resolve()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"path": 42}, "not a file path"),
        ({"path": "relative/clip.mp4"}, "absolute path without '..'"),
        ({"path": "/etc/passwd"}, "outside storage"),
        ({"bytes": 1}, "bytes, the event claims 1"),
        ({"sha256": "0" * 64}, "first 32 hex digits"),
        ({"id": "0" * 32}, "first 32 hex digits"),
    ],
)
def test_false_claims_about_a_video_are_refused(storage: Path, change: dict[str, Any], reason: str) -> None:
    with pytest.raises(RefusedClaim, match=re.escape(reason)):
        check_video(storage, {**stored(storage), **change})


def test_a_changed_file_is_hashed_again_and_refused(storage: Path) -> None:
    video = stored(storage)
    check_video(storage, video)
    Path(video["path"]).write_bytes(CONTENT[::-1])  # same size, other bytes, new mtime
    os.utime(video["path"], ns=(1, 1))
    with pytest.raises(RefusedClaim, match="has sha256"):
        check_video(storage, video)


@pytest.mark.parametrize(
    ("layout", "reason"),
    [
        (lambda s, v: s / "2026" / "12" / "01" / v["id"] / ".." / v["id"] / "clip.mp4", "without '..'"),
        (lambda s, v: s / "2026" / "12" / v["id"] / "clip.mp4", "storage/YYYY/MM/DD"),
        (lambda s, v: s / "2026" / "xx" / "01" / v["id"] / "clip.mp4", "YYYY/MM/DD"),
        (lambda s, v: s / "2026" / "12" / "01" / ("f" * 32) / "clip.mp4", "not in the directory of video"),
    ],
)
def test_paths_out_of_place_are_refused(storage: Path, layout: Any, reason: str) -> None:
    video = stored(storage)
    with pytest.raises(RefusedClaim, match=reason):
        check_video(storage, {**video, "path": str(layout(storage, video))})


def test_links_and_special_files_inside_storage_are_refused(tmp_path: Path, storage: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_bytes(CONTENT)
    video = stored(storage)
    target = Path(video["path"])
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(RefusedClaim, match="is a symlink"):
        check_video(storage, video)
    target.unlink()
    os.mkfifo(target)
    with pytest.raises(RefusedClaim, match="not a regular file"):
        check_video(storage, video)
    target.unlink()
    day = target.parent.parent
    moved = tmp_path / "elsewhere"
    day.rename(moved)
    day.symlink_to(moved)  # a linked directory on the way
    with pytest.raises(RefusedClaim, match="is a symlink"):
        check_video(storage, video)


def test_a_missing_file_is_refused(storage: Path) -> None:
    video = stored(storage)
    Path(video["path"]).unlink()
    with pytest.raises(RefusedClaim, match="does not exist"):
        check_video(storage, video)


def artifact(video_dir: Path, name: str, document: dict[str, Any]) -> dict[str, str]:
    data = json.dumps(document).encode()
    (video_dir / name).write_bytes(data)
    return {"path": str(video_dir / name), "sha256": hashlib.sha256(data).hexdigest()}


def test_artifacts_must_be_made_from_their_video_and_analytic(storage: Path) -> None:
    video = check_video(storage, stored(storage))
    other = check_video(storage, stored(storage, b"another video" * 10))
    analytic = artifact(video.directory, "analytic.json", {"inputs": video_inputs(video)})
    assert check_analytic(storage, video, analytic)["inputs"]["video_id"] == video.id
    foreign = artifact(video.directory, "analytic.json", {"inputs": video_inputs(other)})
    with pytest.raises(RefusedClaim, match="made from"):
        check_analytic(storage, video, foreign)
    with pytest.raises(RefusedClaim, match="sha256"):
        check_analytic(storage, video, {**analytic, "sha256": "0" * 64})
    with pytest.raises(RefusedClaim, match=re.escape("not the video's analytic.json")):
        check_analytic(storage, video, {**analytic, "path": str(video.directory / "summary.json")})
    analytic = artifact(video.directory, "analytic.json", {"inputs": video_inputs(video)})
    inputs = {**video_inputs(video), "analytic_sha256": analytic["sha256"]}
    summary = artifact(video.directory, "summary.json", {"inputs": inputs})
    assert check_summary(storage, video, analytic, summary)["inputs"] == inputs
    stale = {**analytic, "sha256": "f" * 64}  # a summary of some other analytic
    with pytest.raises(RefusedClaim, match="made from"):
        check_summary(storage, video, stale, summary)
