"""`vv export` on real log files: selection, reproducible signed bundles, and tamper detection."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from nodes.cli import main
from nodes.ops.export import LogFile, apply_retention, export_logs, select_logs, verify_export
from nodes.sign.keys import KeyStore

D = date(2024, 3, 10)  # the "today" of the fixture logs
DEVICE = "edge1"


def stamp(day: date, hour: int) -> float:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC).timestamp()


def json_lines(day: date, count: int = 50) -> bytes:
    return b"".join(
        json.dumps({"time": f"{day}T{h % 24:02d}:00:00Z", "level": "INFO", "msg": f"line {h}"}).encode()
        + b"\n"
        for h in range(1, count)
    )


def write_log(path: Path, data: bytes, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    vv_home = tmp_path / "vv"
    logs = vv_home / "logs"
    write_log(logs / "app.log", json_lines(D), stamp(D, 23))
    write_log(logs / "app.log.1", json_lines(D - timedelta(days=1)), stamp(D, 0) - 1)
    write_log(
        logs / "app.log.2.gz", gzip.compress(json_lines(D - timedelta(days=2)), mtime=0), stamp(D, 0) - 86401
    )
    KeyStore(vv_home / "keys").generate()
    monkeypatch.setenv("VV_HOME", str(vv_home))
    monkeypatch.setenv("VV_DEVICE", DEVICE)
    monkeypatch.delenv("VV_CONFIG", raising=False)
    return vv_home


def export(home: Path, first: date, last: date) -> tuple[Path, Path, str]:
    result = export_logs(
        home / "logs", home / "exports", DEVICE, first, last, KeyStore(home / "keys").signer()
    )
    assert result.tarball is not None and result.manifest is not None
    return result.tarball, result.manifest, result.status


def names(files: list[LogFile]) -> list[str]:
    return [f.relative for f in files]


def test_selection_by_content_start_and_mtime(home: Path) -> None:
    logs = home / "logs"
    assert names(select_logs(logs, D, D)) == ["logs/app.log"]
    assert names(select_logs(logs, D - timedelta(days=1), D - timedelta(days=1))) == ["logs/app.log.1"]
    assert names(select_logs(logs, D - timedelta(days=2), D - timedelta(days=2))) == ["logs/app.log.2.gz"]
    assert names(select_logs(logs, D - timedelta(days=2), D)) == [
        "logs/app.log",
        "logs/app.log.1",
        "logs/app.log.2.gz",
    ]
    assert select_logs(logs, D + timedelta(days=1), D + timedelta(days=1)) == []
    # No readable time on the first line: included for every day up to its last write, never after.
    write_log(logs / "notes.txt", b"plain text\n", stamp(D - timedelta(days=1), 12))
    assert "logs/notes.txt" in names(select_logs(logs, D - timedelta(days=2), D - timedelta(days=2)))
    assert "logs/notes.txt" not in names(select_logs(logs, D, D))


def test_manifest_hashes_match_the_files_and_verify_passes(home: Path) -> None:
    tarball, manifest_path, status = export(home, D - timedelta(days=2), D)
    assert status == "written"
    assert tarball.name == f"vv_logs_{DEVICE}_20240308-20240310.tar.gz"
    assert manifest_path.name == f"vv_logs_{DEVICE}_20240308-20240310.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["files"]:
        data = (home / entry["path"]).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["tarball"] == {
        "name": tarball.name,
        "size": tarball.stat().st_size,
        "sha256": hashlib.sha256(tarball.read_bytes()).hexdigest(),
    }
    total = sum((home / e["path"]).stat().st_size for e in manifest["files"])
    assert manifest["payload_oxum"] == f"{total}.3"
    assert manifest["device"] == DEVICE and manifest["export_time"].endswith("Z")
    assert manifest["signature"]["alg"] == "ed25519"
    assert verify_export(tarball, KeyStore(home / "keys").verifiers()) == []


def test_reexport_of_the_same_day_is_idempotent(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--date", str(D)]) == 0
    tarball = home / "exports" / f"vv_logs_{DEVICE}_20240310.tar.gz"
    manifest = tarball.with_name(f"vv_logs_{DEVICE}_20240310.manifest.json")
    first = (tarball.read_bytes(), manifest.read_bytes())
    assert main(["export", "--date", str(D)]) == 0
    assert "identical export already present" in capsys.readouterr().out
    assert (tarball.read_bytes(), manifest.read_bytes()) == first
    # A lost manifest (crash between the two renames) is rewritten for the same tarball.
    manifest.unlink()
    assert main(["export", "--date", str(D)]) == 0
    assert tarball.read_bytes() == first[0]
    assert json.loads(manifest.read_text())["tarball"]["sha256"] == hashlib.sha256(first[0]).hexdigest()


def test_verify_cli_with_exported_public_keys(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tarball, manifest, _ = export(home, D - timedelta(days=2), D - timedelta(days=2))
    keys = tmp_path / "pub.json"
    keys.write_text(json.dumps(KeyStore(home / "keys").public_keys()))
    assert main(["export", "--verify", str(tarball), "--keys", str(keys)]) == 0
    assert main(["export", "--verify", str(manifest), "--keys", str(keys), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("VALID") and json.loads(out[out.index("{") :])["valid"] is True

    other = tmp_path / "other-keys"
    KeyStore(other).generate()
    (tmp_path / "other.json").write_text(json.dumps(KeyStore(other).public_keys()))
    assert main(["export", "--verify", str(tarball), "--keys", str(tmp_path / "other.json")]) == 1
    assert "unknown key id" in capsys.readouterr().out


def test_a_changed_byte_in_the_tarball_is_detected(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tarball, _, _ = export(home, D - timedelta(days=2), D)
    data = bytearray(tarball.read_bytes())
    data[len(data) // 2] ^= 0x01
    tarball.write_bytes(bytes(data))
    assert main(["export", "--verify", str(tarball)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("INVALID") and "tarball sha256 does not match the manifest" in out


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("export_time", "2000-01-01T00:00:00Z", "signature: bad signature"),
        ("payload_oxum", "1.1", "payload_oxum"),
        ("files.0.size", 1, "size"),
        ("files.0.sha256", "0" * 64, "sha256 does not match the manifest"),
    ],
)
def test_a_changed_manifest_field_is_detected(home: Path, field: str, value: object, reason: str) -> None:
    _, manifest_path, _ = export(home, D - timedelta(days=2), D)
    manifest = json.loads(manifest_path.read_text())
    target = manifest
    *parents, last = field.split(".")
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[last] = value
    manifest_path.write_text(json.dumps(manifest))
    problems = verify_export(manifest_path, KeyStore(home / "keys").verifiers())
    assert any(reason in p for p in problems), problems
    assert any(p.startswith("signature:") for p in problems)  # every field is covered by the signature


def test_a_log_removed_from_the_tarball_is_detected(home: Path) -> None:
    _, manifest_path, _ = export(home, D - timedelta(days=2), D)
    manifest = json.loads(manifest_path.read_text())
    manifest["files"].append({"path": "logs/app.log.9", "size": 1, "sha256": "0" * 64})
    manifest_path.write_text(json.dumps(manifest))
    problems = verify_export(manifest_path, KeyStore(home / "keys").verifiers())
    assert "logs/app.log.9: in the manifest but not in the tarball" in problems


def test_verify_usage_errors(home: Path, tmp_path: Path) -> None:
    assert main(["export", "--verify", str(tmp_path / "missing.tar.gz")]) == 2
    (tmp_path / "x.txt").write_text("x")
    assert main(["export", "--verify", str(tmp_path / "x.txt")]) == 2
    assert main(["export", "--date", str(D), "--from", str(D), "--to", str(D)]) == 2
    assert main(["export", "--from", str(D), "--to", str(D - timedelta(days=1))]) == 2


def test_no_logs_for_the_day_writes_nothing(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--date", "2030-01-01"]) == 0
    assert "nothing exported" in capsys.readouterr().out
    assert not (home / "exports").exists()


def test_retention_removes_old_exports_only(home: Path) -> None:
    exports = home / "exports"
    exports.mkdir()
    for name in (
        "vv_logs_edge1_20240101.tar.gz",
        "vv_logs_edge1_20240101.manifest.json",
        "vv_logs_edge1_20231230-20240301.tar.gz",
        "vv_logs_edge1_20240305.tar.gz",
        "unrelated_20240101.tar.gz",
    ):
        (exports / name).write_bytes(b"x")
    removed = apply_retention(exports, 7, D)
    assert sorted(p.name for p in removed) == [
        "vv_logs_edge1_20231230-20240301.tar.gz",
        "vv_logs_edge1_20240101.manifest.json",
        "vv_logs_edge1_20240101.tar.gz",
    ]
    assert sorted(p.name for p in exports.iterdir()) == [
        "unrelated_20240101.tar.gz",
        "vv_logs_edge1_20240305.tar.gz",
    ]
