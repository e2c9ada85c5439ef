"""`vv cleanup` on real files: what is deleted, what is never touched, and why."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from nodes.cli import main
from nodes.ops.cleanup import (
    CleanupError,
    MinFree,
    apply_plan,
    check_roots,
    parse_min_free,
    plan_cleanup,
    protected_paths,
)

DAY = 86400.0
NOW = time.time()


def make(path: Path, age_days: float, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    stamp = NOW - age_days * DAY
    os.utime(path, (stamp, stamp))
    return path


def age(path: Path, age_days: float) -> None:
    stamp = NOW - age_days * DAY
    os.utime(path, (stamp, stamp), follow_symlinks=False)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    vv_home = tmp_path / "vv"
    vv_home.mkdir()
    monkeypatch.setenv("VV_HOME", str(vv_home))
    monkeypatch.setenv("VV_DEVICE", "edge1")
    monkeypatch.delenv("VV_CONFIG", raising=False)
    return vv_home


@pytest.fixture
def tree(home: Path) -> Path:
    root = home / "storage"
    make(root / "2024/01/01/v1/video.mp4", 30, b"v" * 1000)
    make(root / "2024/01/01/v1/analytic.json", 30)
    make(root / "2024/01/02/v2/video.mp4", 20)
    make(root / "2024/01/02/v2/fresh.json", 0.1)  # keeps v2 and its parents
    make(root / "young.txt", 1)
    (root / "old-empty").mkdir()
    age(root / "old-empty", 30)
    (root / "young-empty").mkdir()
    for directory in ("2024/01/01/v1", "2024/01/01", "2024/01/02/v2", "2024/01/02", "2024/01", "2024"):
        age(root / directory, 30)
    return root


def files_under(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(["cleanup", *argv])
    except SystemExit as exc:  # a bad value of an option is argparse's usage error
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_dry_run_deletes_nothing_and_lists_exactly_what_a_real_run_deletes(
    tree: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = files_under(tree)
    code, out, _ = cli(capsys, "--days", "7", "--dirs", str(tree), "--dry-run", "--json")
    assert code == 0
    listed = json.loads(out)
    assert files_under(tree) == before
    assert set(listed["delete"]) == {
        str(tree / "2024/01/01/v1/video.mp4"),
        str(tree / "2024/01/01/v1/analytic.json"),
        str(tree / "2024/01/02/v2/video.mp4"),
    }
    assert set(listed["rmdirs"]) == {
        str(tree / "2024/01/01/v1"),
        str(tree / "2024/01/01"),
        str(tree / "old-empty"),
    }

    code, out, _ = cli(capsys, "--days", "7", "--dirs", str(tree))
    assert code == 0
    assert before - files_under(tree) == set(listed["delete"]) | set(listed["rmdirs"])
    assert "deleted 3 files" in out
    assert tree.is_dir() and (tree / "young-empty").is_dir() and (tree / "young.txt").exists()

    actions = [json.loads(line) for line in (home / "logs/cleanup.log").read_text().splitlines()]
    assert {a["path"] for a in actions if a["action"] == "delete"} == set(listed["delete"])
    assert {a["path"] for a in actions if a["action"] == "rmdir"} == set(listed["rmdirs"])
    assert [a["files"] for a in actions if a["action"] == "summary"] == [3, 3]


def test_second_run_is_idempotent(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "--days", "7", "--dirs", str(tree))[0] == 0
    after_first = files_under(tree)
    code, out, _ = cli(capsys, "--days", "7", "--dirs", str(tree), "--json")
    assert code == 0
    assert json.loads(out)["files"] == 0 and json.loads(out)["dirs"] == 0
    assert files_under(tree) == after_first


def test_symlinks_out_of_the_root_are_never_followed(tmp_path: Path, home: Path) -> None:
    outside = tmp_path / "outside"
    victim = make(outside / "victim.txt", 30)
    deep = make(outside / "dir/deep.txt", 30)
    root = home / "storage"
    root.mkdir()
    (root / "file-link").symlink_to(victim)
    (root / "dir-link").symlink_to(outside / "dir")
    (root / "young-link").symlink_to(victim)
    age(root / "file-link", 30)
    age(root / "dir-link", 30)

    plan = plan_cleanup(check_roots([root], protected_paths(home)), 7)
    result = apply_plan(plan)

    assert victim.read_bytes() == b"x" and deep.read_bytes() == b"x"  # targets untouched
    assert sorted(result.deleted) == [str(root / "dir-link"), str(root / "file-link")]  # old links go
    assert (root / "young-link").is_symlink()


def test_a_directory_swapped_for_a_symlink_after_planning_is_not_followed(tmp_path: Path, home: Path) -> None:
    root = home / "storage"
    make(root / "sub/old.txt", 30)
    outside_copy = make(tmp_path / "outside/old.txt", 30)
    plan = plan_cleanup(check_roots([root], protected_paths(home)), 7)
    assert [e.path for e in plan.delete] == [str(root / "sub/old.txt")]

    (root / "sub").rename(root / "sub-moved")
    (root / "sub").symlink_to(tmp_path / "outside")
    result = apply_plan(plan)

    assert outside_copy.exists()
    assert result.deleted == [] and [path for path, _ in result.errors] == [str(root / "sub/old.txt")]


def test_a_file_rewritten_after_planning_is_kept(home: Path) -> None:
    root = home / "storage"
    target = make(root / "old.txt", 30)
    plan = plan_cleanup(check_roots([root], protected_paths(home)), 7)
    target.write_bytes(b"fresh")  # now young: the plan is stale for it
    result = apply_plan(plan)
    assert target.read_bytes() == b"fresh"
    assert result.skipped == [(str(target), "changed since planned")]


@pytest.mark.parametrize("danger", ["/", "/etc", "/usr", "/var", "/boot", "HOME", "HOME_PARENT", "VV_HOME"])
def test_dangerous_roots_are_refused(
    danger: str,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_home = tmp_path / "users/alice"
    fake_home.mkdir(parents=True)
    (home / "x").mkdir()  # a safe root first: one dangerous root refuses the whole run
    monkeypatch.setenv("HOME", str(fake_home))
    root = {"HOME": str(fake_home), "HOME_PARENT": str(fake_home.parent), "VV_HOME": str(home)}.get(
        danger, danger
    )
    code, _, err = cli(capsys, "--days", "0", "--dirs", f"{home / 'x'},{root}", "--dry-run")
    assert code == 2
    assert "refusing dangerous root" in err


def test_bad_arguments_are_usage_errors(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (home / "storage").mkdir()
    assert cli(capsys, "--days", "1", "--dirs", str(home / "missing"))[0] == 2
    code, _, err = cli(capsys, "--days", "1", "--dirs", str(home / "storage"), "--min-free-space", "lots")
    assert code == 2 and "--min-free-space" in err
    assert cli(capsys, "--days", "-1", "--dirs", str(home / "storage"))[0] == 2


def test_exclude_patterns_are_kept(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = home / "storage"
    lock = make(root / "v1/.lock", 30)
    logline = make(root / "v1/abc.logline.json", 30)
    kept_dir = make(root / "keep/old.bin", 30)
    gone = make(root / "v1/video.mp4", 30)
    code, out, _ = cli(
        capsys,
        "--days",
        "7",
        "--dirs",
        str(root),
        "--exclude-patterns",
        "*.lock,*.logline.json,keep",
        "--json",
    )
    assert code == 0
    assert lock.exists() and logline.exists() and kept_dir.exists() and not gone.exists()
    assert json.loads(out)["skipped"] == {"excluded": 3}


def test_quarantine_is_kept_unless_included(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evidence = make(home / "corrupted/bad.mp4", 30)
    make(home / "corrupted/bad.mp4.meta.json", 30)
    code, out, _ = cli(capsys, "--days", "7", "--dirs", str(home / "corrupted"))
    assert code == 0 and evidence.exists() and "quarantine 1" in out
    code, _, _ = cli(capsys, "--days", "7", "--dirs", str(home / "corrupted"), "--include-quarantine")
    assert code == 0 and not evidence.exists()


def test_quarantine_inside_a_root_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "data"
    evidence = make(root / "corrupted/bad.mp4", 30)
    plain = make(root / "other/old.mp4", 30)
    plan = plan_cleanup((str(root),), 7, quarantine=root / "corrupted")
    assert [e.path for e in plan.delete] == [str(plain)]
    assert (str(root / "corrupted"), "quarantine") in plan.skipped
    included = plan_cleanup((str(root),), 7, quarantine=root / "corrupted", include_quarantine=True)
    assert {e.path for e in included.delete} == {str(plain), str(evidence)}


def test_open_files_are_skipped(home: Path) -> None:
    root = home / "storage"
    held = make(root / "recording.mp4", 30)
    closed = make(root / "done.mp4", 30)
    with held.open("rb"):
        result = apply_plan(plan_cleanup(check_roots([root], protected_paths(home)), 7))
    assert held.exists() and not closed.exists()
    assert result.skipped == [(str(held), "open")]


def test_min_free_space_deletes_oldest_first_only_until_the_target_is_met(tmp_path: Path) -> None:
    root = tmp_path / "data"
    files = [make(root / f"f{i}.bin", 10 + i, os.urandom(64 * 1024)) for i in range(6)]  # f5 is the oldest
    oldest_first = files[::-1]
    probe = plan_cleanup((str(root),), 7)
    freed = {e.path: e.freed for e in probe.delete}
    free, total = 10_000_000, 100_000_000
    need = sum(freed[str(p)] for p in oldest_first[:3])

    plan = plan_cleanup(
        (str(root),), 7, min_free=MinFree(bytes=free + need - 1), free_space=lambda _path: (free, total)
    )
    assert [e.path for e in plan.delete] == [str(p) for p in oldest_first[:3]]
    assert {p for p, reason in plan.skipped if reason == "free-space target met"} == {
        str(p) for p in oldest_first[3:]
    }
    apply_plan(plan)
    assert [p.exists() for p in oldest_first] == [False, False, False, True, True, True]


def test_min_free_space_already_met_deletes_nothing(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kept = make(home / "storage/old.bin", 30)
    code, out, _ = cli(capsys, "--days", "7", "--dirs", str(home / "storage"), "--min-free-space", "1KB")
    assert code == 0 and kept.exists() and "free-space target met 1" in out


def test_parse_min_free() -> None:
    assert parse_min_free("15%").target(1000) == 150
    assert parse_min_free("20GB").target(1) == 20 * 1024**3
    assert parse_min_free("1.5 tb").target(1) == int(1.5 * 1024**4)
    for bad in ("0%", "100%", "ten", "5XB", "0GB"):
        with pytest.raises(CleanupError):
            parse_min_free(bad)
