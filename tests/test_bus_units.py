"""The bus's small parts: ids, codecs, topics, backoff, the outbox store, the broker config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from conftest import REPO

from bus import codec
from bus.backoff import Backoff
from bus.broker import TlsFiles, render_broker
from bus.broker_central import render_central
from bus.config import load_settings
from bus.envelope import JSON, MSGPACK, uuid7
from bus.store import SEQ_BLOCK, NodeStore
from bus.topics import parse_topic, subscription, topic_for
from nodes.common.shared import shared_dir


def test_uuid7_ids_are_version_7_and_time_ordered() -> None:
    ids = [uuid7() for _ in range(10_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(i[14] == "7" and i[19] in "89ab" for i in ids)


def test_codecs_round_trip_and_follow_the_content_type() -> None:
    doc = {"a": 1, "b": [1.5, "x"], "c": {"d": None}}
    for content_type in (JSON, MSGPACK):
        assert codec.decode(codec.encode(doc, content_type), content_type) == doc
    assert codec.decode(b'{"a":1}', None) == {"a": 1}  # no content type: JSON is sniffed
    assert codec.decode(msgpack.packb(doc), None) == doc
    with pytest.raises(codec.DecodeError):
        codec.decode(b"\xc1\xc1", MSGPACK)
    with pytest.raises(codec.DecodeError):
        codec.decode(b"{", JSON)
    with pytest.raises(ValueError):
        codec.encode({"x": float("nan")}, JSON)


def test_topics() -> None:
    assert topic_for("edge1", "video.new") == "vv/edge1/video/new"
    assert parse_topic("vv/edge1/alert/critical") == ("edge1", "alert.critical")
    assert subscription("edge1", "alert.*") == "vv/edge1/alert/+"
    assert subscription("edge1", "video.new", "scan") == "$share/scan/vv/edge1/video/new"
    for bad in ("other/edge1/x", "vv/edge1", "vv//video/new"):
        with pytest.raises(ValueError):
            parse_topic(bad)


def test_backoff_is_capped_jittered_and_resets() -> None:
    backoff = Backoff(0.5, 8.0)
    delays = [backoff.next_delay() for _ in range(12)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert max(delays[6:]) > 2.0  # it grows
    backoff.reset()
    assert backoff.next_delay() == 0.5  # the first retry after a reset is the minimum again


def test_store_never_reuses_a_seq_across_restarts_and_rolls_back(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.sqlite")
    with store.transaction():
        first = [store.next_seq("scan.done") for _ in range(3)]
        store.add_outbox("e1", "t", b"p", JSON, False)
    assert first == [1, 2, 3]
    with pytest.raises(RuntimeError), store.transaction():
        store.next_seq("scan.done")
        store.add_outbox("e2", "t", b"p", JSON, False)
        raise RuntimeError("handler failed")
    assert [row.event_id for row in store.pending()] == ["e1"]
    store.close()
    again = NodeStore(tmp_path / "n.sqlite")
    with again.transaction():
        assert again.next_seq("scan.done") > SEQ_BLOCK  # past the whole reserved block: never a reused seq
    assert again.bump_epoch() == 1 and again.bump_epoch() == 2


def test_each_event_type_counts_its_own_seq(tmp_path: Path) -> None:
    """Alerts between two scan.done do not make a consumer of scan.done see a gap."""
    store = NodeStore(tmp_path / "n.sqlite")
    with store.transaction():
        numbers = [store.next_seq(t) for t in ("scan.done", "alert.error", "alert.error", "scan.done")]
    assert numbers == [1, 1, 2, 2]
    with pytest.raises(RuntimeError), store.transaction():
        store.next_seq("alert.error")
        raise RuntimeError("rolled back")
    with store.transaction():
        assert store.next_seq("alert.error") == 3


def test_rendered_broker_config_has_the_safety_settings(tmp_path: Path) -> None:
    settings = load_settings({"VV_HOME": str(tmp_path), "VV_DEVICE": "edge9"})
    files = render_broker(settings)
    conf = files.conf.read_text()
    for line in (
        "allow_anonymous false",
        "persistence true",
        "autosave_on_changes true",
        "\nautosave_interval 1\n",  # an edge saves per change: its queue is the device's record
        "message_size_limit",
        "max_queued_messages",
        f"acl_file {files.acl}",
    ):
        assert line in conf, line
    acl = files.acl.read_text()
    assert "user edge9\ntopic read vv/edge9/#\n" in acl  # the device user reads only
    assert "pattern" not in acl and acl.count("readwrite") == 1  # only vv-admin writes freely
    assert files.passwd is not None and (files.passwd.stat().st_mode & 0o777) == 0o600
    assert "edge9:" in files.passwd.read_text() and "vv-admin:" in files.passwd.read_text()


def test_the_central_broker_saves_per_thousand_changes(tmp_path: Path) -> None:
    """Every health beat of the fleet is a change to the central broker's database, which it writes
    whole on each save: per change it stalls at a few hundred devices (bench/fleet.py)."""
    settings = load_settings({"VV_HOME": str(tmp_path), "VV_DEVICE": "central"})
    tls = TlsFiles(tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "server.key")
    crl = tmp_path / "crl.pem"
    for path in (tls.ca, tls.cert, tls.key, crl):
        path.write_text("-----BEGIN CERTIFICATE-----\n")
        path.chmod(0o600)
    conf = render_central(settings, tls, crl=crl, host="127.0.0.1", port=8883, consoles=[]).conf.read_text()
    assert "autosave_on_changes true\nautosave_interval 1000\n" in conf
    dev = render_broker(settings, dev=True, directory=tmp_path / "dev").conf.read_text()
    assert "allow_anonymous true" in dev and "listener 1883 127.0.0.1" in dev


def test_vv_broker_dev_says_so_loudly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nodes.cli", "broker", "--dev", "--print-config"],
        env={"PATH": "/usr/bin:/bin:/usr/sbin", "VV_HOME": str(tmp_path)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0 and "DEVELOPMENT MODE" in result.stderr
    assert Path(result.stdout.strip()).exists()


def test_store_prunes_dedupe_ids_by_age_and_count_while_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wall, mono = [1000.0], [0.0]
    monkeypatch.setattr("bus.store.time.time", lambda: wall[0])
    monkeypatch.setattr("bus.store.time.monotonic", lambda: mono[0])
    store = NodeStore(tmp_path / "n.sqlite", seen_retention_s=3600, seen_max=5, prune_interval_s=60)

    def claim(event_id: str) -> bool:
        wall[0] += 1
        return store.claim(event_id)

    assert all(claim(f"old-{n}") for n in range(3))
    wall[0] += 7200  # those three are past the retention now
    assert all(claim(f"new-{n}") for n in range(8))
    assert not claim("old-0")  # no prune yet: the interval has not passed since the last one
    mono[0] += 60
    assert claim("trigger")  # a claim after the interval prunes: by age, then beyond the cap
    assert claim("old-1")  # forgotten by age
    assert claim("new-0") and claim("new-3")  # the oldest beyond the cap went first
    assert not claim("new-4") and not claim("trigger")


def test_the_shared_assets_are_found_beside_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make demo` and `vv model quantize --sample-media` look in ../shared without VV_SHARED."""
    monkeypatch.delenv("VV_SHARED", raising=False)
    assert shared_dir() == REPO.parent / "shared"
    monkeypatch.setenv("VV_SHARED", "/elsewhere")
    assert shared_dir() == Path("/elsewhere")
