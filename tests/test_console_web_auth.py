"""The console page's auth pieces and endpoints, fast: argon2id users file, sessions, CSRF, roles,
cookie flags, /metrics, history export. The app runs in-process over a real SQLite store (Starlette's
TestClient); the browser, the broker and the `vv console` process are in test_console_web.py."""

from __future__ import annotations

import csv
import io
import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from starlette.testclient import TestClient

from bus.fleet import FleetMessage
from nodes.console.fold import Fleet
from nodes.console.registry import Registry
from nodes.console.settings import ConsoleSettings
from nodes.console.store import Change, SqliteStore
from nodes.console.web.app import COOKIE, Web, create_app
from nodes.console.web.auth import Sessions, Users, UsersError, csrf_ok, password_ok
from nodes.console.web.live import QUEUE_SIZE, RESYNC, Hub
from nodes.fleet.sim import SimDevice

PASSWORD = "correct horse battery"


def test_users_file_keeps_argon2id_hashes_only(tmp_path: Path) -> None:
    users = Users(tmp_path / "users.json")
    assert users.put("alice", "operator", PASSWORD) is False
    assert users.put("alice", "viewer", PASSWORD + "!") is True  # replaced: new role, new password
    raw = (tmp_path / "users.json").read_text()
    assert PASSWORD not in raw and "$argon2id$" in raw
    assert stat.S_IMODE((tmp_path / "users.json").stat().st_mode) == 0o600
    alice = users.get("alice")
    assert alice is not None and alice.role == "viewer" and not alice.operator
    assert password_ok(alice, PASSWORD + "!") and not password_ok(alice, PASSWORD)
    # `vv console users check` (Ansible's idempotence): the same role and password only
    assert users.matches("alice", "viewer", PASSWORD + "!")
    assert not users.matches("alice", "operator", PASSWORD + "!")
    assert not users.matches("alice", "viewer", PASSWORD) and not users.matches("bob", "viewer", PASSWORD)
    for name, role, password in (
        ("alice", "admin", PASSWORD),
        ("a b", "viewer", PASSWORD),
        ("bob", "viewer", "short"),
    ):
        with pytest.raises(UsersError):
            users.put(name, role, password)
    assert users.remove("alice") and not users.remove("alice")
    assert users.get("alice") is None


def test_a_broken_users_file_is_reported_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    path.write_text('[{"name": "eve", "role": "operator", "password_hash": "plain"}]')
    users = Users(path)
    with pytest.raises(UsersError, match="argon2id"):
        users.put("bob", "viewer", PASSWORD)
    assert "plain" in path.read_text() and users.get("eve") is None


def test_sessions_idle_out_and_csrf_is_per_session() -> None:
    sessions = Sessions(ttl_s=60)
    token, session = sessions.open("alice", now=1000)
    other_token, other = sessions.open("bob", now=1000)
    assert token != other_token and session.csrf != other.csrf
    assert sessions.get(token, now=1050) is session  # use restarts the idle clock
    assert sessions.get(token, now=1100) is session
    assert sessions.get(token, now=1161) is None
    assert sessions.get("forged", now=1000) is None and sessions.get(None) is None
    assert csrf_ok(session, session.csrf) and not csrf_ok(session, other.csrf) and not csrf_ok(session, None)


def test_the_hub_drops_a_slow_pages_backlog_for_a_resync() -> None:
    hub = Hub(loglines_per_device=2)
    queue = hub.subscribe()
    for n in range(QUEUE_SIZE + 5):
        hub.publish(Change("logline", "edge-a", str(n), {"seq": n}))
    assert queue.get_nowait() == RESYNC  # the backlog gone: the page re-reads everything, then goes on
    assert [queue.get_nowait().key for _ in range(queue.qsize())] == [
        str(QUEUE_SIZE + n) for n in range(1, 5)
    ]
    assert [line["seq"] for line in hub.loglines("edge-a")] == [QUEUE_SIZE + 4, QUEUE_SIZE + 3]
    hub.unsubscribe(queue)
    assert hub.streams == 0


class Page:
    """The app over a real store fed by the real fold, with an operator and a viewer."""

    def __init__(self, tmp_path: Path) -> None:
        self.dev = SimDevice("edge-a")
        registry_path = tmp_path / "devices.json"
        registry_path.write_text(json.dumps({"devices": {"edge-a": self.dev.registry_entry()}}))
        self.store = SqliteStore(tmp_path / "console.sqlite")
        settings = ConsoleSettings(cookie_secure=True)
        self.users = Users(tmp_path / "users.json")
        self.users.put("olivia", "operator", PASSWORD)
        self.users.put("victor", "viewer", PASSWORD)
        self.web = Web(self.store, Registry(registry_path), settings, self.users)
        self.fleet = Fleet(self.store, settings, self.web.registry)
        self.fleet.on_change = self.web.hub.publish
        self.client = TestClient(create_app(self.web), base_url="https://console.test")

    def receive(self, **fields: object) -> None:
        self.fleet.receive(
            FleetMessage(device="edge-a", event_type="", retained=False, **fields), time.time()
        )  # type: ignore[arg-type]

    def login(self, name: str, password: str = PASSWORD) -> str:
        """Log in; the CSRF token the page was given."""
        answer = self.client.post(
            "/login", data={"username": name, "password": password, "next": "/alerts"}, follow_redirects=False
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/alerts"
        page = self.client.get("/alerts")
        token = page.text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
        return token


@pytest.fixture
def page(tmp_path: Path) -> Page:
    return Page(tmp_path)


def test_login_sets_a_strict_cookie_and_wrong_passwords_are_refused(page: Page) -> None:
    assert page.client.get("/", follow_redirects=False).headers["location"] == "/login?next=/"
    assert page.client.get("/api/fleet").status_code == 401
    refused = page.client.post("/login", data={"username": "olivia", "password": "wrong password"})
    assert refused.status_code == 401 and "Wrong user name or password" in refused.text
    assert COOKIE not in page.client.cookies
    unknown = page.client.post("/login", data={"username": "mallory", "password": PASSWORD})
    assert unknown.status_code == 401
    forged = page.client.post(
        "/login",
        data={"username": "olivia", "password": PASSWORD},
        headers={"Origin": "https://evil.example"},
    )
    assert forged.status_code == 403 and COOKIE not in page.client.cookies  # login CSRF
    answer = page.client.post(
        "/login",
        data={"username": "olivia", "password": PASSWORD, "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/"  # no open redirect
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" in cookie
    shell = page.client.get("/")
    assert shell.status_code == 200 and 'data-role="operator"' in shell.text
    assert "default-src 'self'" in shell.headers["content-security-policy"]


def test_actions_need_csrf_and_the_operator_role_and_carry_the_author(page: Page) -> None:
    page.receive(link_up=True)
    page.receive(event=page.dev.alert("Disk almost full"))
    [alert] = page.store.alerts()
    ack = {"device": "edge-a", "dedup_key": alert.dedup_key, "comment": "on it"}

    viewer = page.login("victor")
    refused = page.client.post("/api/ack", json=ack, headers={"X-CSRF-Token": viewer})
    assert refused.status_code == 403 and "operators" in refused.json()["error"]
    assert page.client.post("/api/silence", json={"matchers": ["title=x"], "duration": "1h", "comment": "x"},
                            headers={"X-CSRF-Token": viewer}).status_code == 403  # fmt: skip
    assert page.store.actions(pending=True) == [
        a for a in page.store.actions(pending=True) if a.author == "console"
    ]

    token = page.login("olivia")
    assert page.client.post("/api/ack", json=ack).status_code == 403  # no CSRF token
    assert (
        page.client.post("/api/ack", json=ack, headers={"X-CSRF-Token": viewer}).status_code == 403
    )  # another session's
    assert page.client.post("/api/ack", data={**ack, "csrf": "nope"}).status_code == 403
    done = page.client.post("/api/ack", json=ack, headers={"X-CSRF-Token": token})
    assert done.status_code == 200 and done.json()["author"] == "olivia"
    silence = {
        "matchers": ["title=Disk almost full", "device=edge-a"],
        "duration": "2h",
        "comment": "maintenance",
    }
    assert (
        page.client.post(
            "/api/silence", json={**silence, "duration": "soon"}, headers={"X-CSRF-Token": token}
        ).status_code
        == 400
    )
    assert page.client.post("/api/silence", json=silence, headers={"X-CSRF-Token": token}).status_code == 200
    mine = [a for a in page.store.actions(pending=True) if a.author != "console"]
    assert [(a.kind, a.author, a.comment) for a in mine] == [
        ("cmd.alerter.ack", "olivia", "on it"),
        ("cmd.alerter.silence", "olivia", "maintenance"),
    ]
    assert mine[0].args == {"dedup_key": alert.dedup_key, "comment": "on it"}
    muted = page.client.get("/api/alerts").json()["groups"][0]["alerts"][0]["muted"]
    assert [m["why"] for m in muted] == ["silence"] and muted[0]["by"] == "olivia"

    command = {"device": "edge-a", "kind": "cmd.ingest.pause", "comment": "disk swap"}
    assert page.client.post("/api/command", json=command, headers={"X-CSRF-Token": viewer}).status_code == 403
    bad = page.client.post(
        "/api/command", json={**command, "kind": "cmd.journal.resend"}, headers={"X-CSRF-Token": token}
    )
    assert bad.status_code == 400
    assert page.client.post("/api/command", json=command, headers={"X-CSRF-Token": token}).status_code == 200
    [paused] = [a for a in page.store.actions(pending=True) if a.kind == "cmd.ingest.pause"]
    assert (paused.author, paused.device, paused.comment, paused.args) == (
        "olivia",
        "edge-a",
        "disk swap",
        {},
    )

    page.users.remove("olivia")  # a removed user's session ends at the next request
    assert page.client.get("/api/fleet").status_code == 401


def test_grid_alerts_device_and_history_views(page: Page) -> None:
    page.login("victor")
    page.receive(link_up=True)
    page.receive(health=page.dev.health("monitor"))
    page.receive(event=page.dev.alert("Camera offline", severity="CRITICAL"))
    page.receive(event=page.dev.logline_event(page.dev.logline(text="two people at the gate")))
    [tile] = page.client.get("/api/fleet").json()["groups"][0]["devices"]
    assert (tile["state"], tile["firing"], tile["nodes_online"], tile["site"]) == (
        "critical",
        {"CRITICAL": 1},
        1,
        "lab",
    )
    assert tile["chain"]["seq"] == 1 and tile["chain"]["verified"] is True and tile["revoked"] == ""
    assert page.client.get("/api/fleet?site=elsewhere").json()["groups"] == []
    [[named]] = [g["devices"] for g in page.client.get("/api/fleet?devices=edge-a,ghost").json()["groups"]]
    assert named == tile  # a live update reads the tiles it names, the same as the whole grid's
    grouped = page.client.get("/api/alerts?group=component").json()
    assert [(g["name"], g["count"], g["events"]) for g in grouped["groups"]] == [("monitor", 1, 1)]
    device = page.client.get("/api/device/edge-a").json()
    assert device["loglines"][0]["text"] == "two people at the gate" and device["loglines"][0]["counts"] == {
        "person": 1
    }
    assert page.client.get("/api/device/nobody").status_code == 404
    page.receive(link_up=False)
    offline = page.client.get("/api/alerts").json()["groups"][0]["alerts"][0]
    assert [m["why"] for m in offline["muted"]] == ["device offline"]
    rows = page.client.get("/api/history?since=1h&kind=alert&format=json").json()
    assert [r["change"] for r in rows] == ["firing"]
    exported = page.client.get("/api/history?since=1h&format=csv")
    assert exported.headers["content-type"].startswith("text/csv")
    changes = [r["change"] for r in csv.DictReader(io.StringIO(exported.text))]
    assert changes[0] == "link down" and "firing" in changes
    assert page.client.get("/api/history?since=yesterday").status_code == 400


def test_metrics_in_prometheus_text_format(page: Page) -> None:
    page.receive(link_up=True)
    page.receive(event=page.dev.alert("Disk almost full"))
    page.receive(event=page.dev.logline_event(page.dev.logline()))
    page.web.ingestion.observe(0.25)
    text = page.client.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = text.text.splitlines()
    assert 'vv_console_devices{state="error"} 1' in lines
    assert 'vv_console_alerts_firing{severity="ERROR"} 1' in lines
    assert 'vv_console_device_alerts_firing{severity="ERROR",device="edge-a"} 1' in lines
    assert 'vv_console_chain_head_seq{device="edge-a"} 1' in lines
    assert 'vv_console_chain_head_verified{device="edge-a"} 1' in lines
    assert "vv_console_ingestion_lag_seconds 0.25" in lines


def test_users_cli_reads_the_password_from_stdin(tmp_path: Path) -> None:
    env = {"VV_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}

    def vv(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nodes.cli", "console", "users", *args],
            input=stdin, capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
        )  # fmt: skip

    added = vv("add", "alice", "--role", "operator", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert vv("add", "bob", "--role", "viewer", stdin="short\n").returncode == 2
    assert vv("add", "bob", "--role", "admin", stdin=PASSWORD).returncode == 2
    assert vv("list").stdout.split() == ["alice", "operator"]
    user = Users(tmp_path / "console" / "users.json").get("alice")
    assert user is not None and password_ok(user, PASSWORD)
    assert vv("remove", "nobody").returncode == 1


def test_a_revoked_device_says_so_on_its_tile_and_page(page: Page) -> None:
    """`vv fleet revoke` marks the registry; the console re-reads it and shows when."""
    entry = {**page.dev.registry_entry(), "revoked": {"serial": "7", "at": "2026-12-01T10:00:00Z"}}
    page.web.registry.path.write_text(json.dumps({"devices": {"edge-a": entry}, "pad": "changed size"}))
    page.login("victor")
    page.receive(link_up=True)
    page.web.registry.refresh()
    [tile] = page.client.get("/api/fleet").json()["groups"][0]["devices"]
    assert tile["revoked"] == "2026-12-01T10:00:00Z" and tile["site"] == "lab"
    assert page.client.get("/api/device/edge-a").json()["revoked"] == "2026-12-01T10:00:00Z"
