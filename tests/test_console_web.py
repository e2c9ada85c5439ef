"""The console's web page in a real browser: Debian's chromium driven by Playwright, against `vv console`
as a real process on a real mosquitto (the central broker's plain listener), with simulated devices
publishing as their bridges do. Set VV_SCREENSHOTS=docs to refresh the README's screenshots."""

from __future__ import annotations

import csv
import io
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import VV, free_port, wait_until
from test_console_service import Central

from nodes.fleet.sim import SimDevice

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery"

pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield launched
        launched.close()


class Console(Central):
    """`vv console` with its page on a free port, plain http on loopback (cookies without Secure)."""

    def __init__(self, vv: VV, *devices: SimDevice) -> None:
        super().__init__(vv, *devices)
        self.http = free_port()
        self.env.update({"VV_CONSOLE_HTTP_PORT": str(self.http), "VV_CONSOLE_COOKIE_SECURE": "false"})
        self.url = f"http://127.0.0.1:{self.http}"
        for name, role in (("olivia", "operator"), ("victor", "viewer")):
            added = vv.vv("console", "users", "add", name, "--role", role, input_text=PASSWORD + "\n")
            assert added.returncode == 0, added.stderr

    def start(self) -> None:
        super().start()
        wait_until(self._serving, 15, "the console's web page")

    def _serving(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/login", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False


@pytest.fixture
def devices() -> tuple[SimDevice, SimDevice]:
    return SimDevice("edge-a"), SimDevice("edge-b")


@pytest.fixture
def console(vv: VV, devices: tuple[SimDevice, SimDevice]) -> Iterator[Console]:
    c = Console(vv, *devices)
    c.start()
    for dev in devices:
        c.connect(dev)
        c.health(dev.health("monitor", interval_s=30))
        c.health(dev.health("sign", interval_s=30))
    yield c
    c.close()


def login(browser: Any, console: Console, user: str, password: str = PASSWORD) -> Any:
    page = browser.new_context(viewport={"width": 1280, "height": 720}).new_page()
    page.goto(f"{console.url}/")
    assert page.url.startswith(f"{console.url}/login")
    page.fill('input[name="username"]', user)
    page.fill('input[name="password"]', password)
    page.click("#login")
    return page


def screenshot(page: Any, name: str, tmp_path: Path) -> None:
    where = Path(os.environ.get("VV_SCREENSHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(where / name), full_page=True)


def post(page: Any, path: str, body: dict[str, Any], csrf: bool = True) -> int:
    """A same-origin fetch from the page, with the session's cookie; the CSRF header only if asked."""
    script = """async ([path, body, csrf]) => {
        const token = document.querySelector('meta[name="csrf-token"]').content;
        const headers = {"Content-Type": "application/json"};
        if (csrf) headers["X-CSRF-Token"] = token;
        const answer = await fetch(path, {method: "POST", headers, body: JSON.stringify(body)});
        return answer.status;
    }"""
    return int(page.evaluate(script, [path, body, csrf]))


def test_login_then_a_device_going_offline_turns_its_tile_without_reload(
    browser: Any, console: Console, devices: tuple[SimDevice, SimDevice], tmp_path: Path
) -> None:
    dev, other = devices
    refused = login(browser, console, "olivia", "not the password")
    assert "Wrong user name or password" in refused.inner_text("#error")
    assert refused.url.startswith(f"{console.url}/login")
    assert not [c for c in refused.context.cookies() if c["name"] == "vv_session"]

    page = login(browser, console, "olivia")
    page.wait_for_url(f"{console.url}/")
    [cookie] = [c for c in page.context.cookies() if c["name"] == "vv_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    for name in ("edge-a", "edge-b"):
        page.wait_for_selector(f'a.tile[data-device="{name}"][data-state="ok"]', timeout=10_000)
    page.wait_for_selector("#live.on", timeout=10_000)
    console.send(other.alert("Camera offline", severity="WARNING"))
    page.wait_for_selector('a.tile[data-device="edge-b"][data-state="warning"]', timeout=5_000)
    page.evaluate("window.vvMarker = 'no reload'")

    started = time.monotonic()
    console.retain(f"vv/{dev.device}/bridge/state", b"0")  # the bridge reports the link down
    page.wait_for_selector('a.tile[data-device="edge-a"][data-state="offline"]', timeout=2_000)
    elapsed = time.monotonic() - started
    print(f"tile offline {elapsed:.2f}s after the bridge state changed")
    assert elapsed < 2.0
    assert page.evaluate("window.vvMarker") == "no reload"
    order = page.eval_on_selector_all("a.tile", "tiles => tiles.map(t => t.dataset.device)")
    assert order == ["edge-a", "edge-b"]  # worst first: offline before warning
    page.goto(f"{console.url}/device/edge-b")
    page.wait_for_selector("text=Camera offline", timeout=5_000)
    assert page.text_content("#device-state") == "warning"
    console.stop()  # SIGTERM with a page following the live stream: the console still exits 0
    page.wait_for_selector("#live.off", timeout=5_000)


def test_an_operator_acks_and_it_leaves_as_a_cmd_a_viewer_cannot(
    browser: Any, console: Console, devices: tuple[SimDevice, SimDevice], tmp_path: Path
) -> None:
    dev, other = devices
    console.send(dev.alert("Disk almost full"))
    console.send(other.alert("Camera offline", severity="CRITICAL"))
    console.send(other.alert("Clock drift", severity="WARNING", node="scan"))
    wait_until(lambda: len(console.alerts()) == 3, 10, "the three alerts folded")
    [disk] = console.alerts("--device", "edge-a")

    viewer = login(browser, console, "victor")
    viewer.goto(f"{console.url}/alerts")
    viewer.wait_for_selector('tr[data-ref] >> text="Disk almost full"', timeout=5_000)
    assert viewer.locator("form.ack").count() == 0  # no ack buttons for a viewer
    assert viewer.locator("form.silence").count() == 0
    ack = {"device": "edge-a", "dedup_key": disk["dedup_key"], "comment": "viewer tries"}
    assert post(viewer, "/api/ack", ack) == 403

    operator = login(browser, console, "olivia")
    operator.goto(f"{console.url}/alerts?group=device")
    row = operator.locator(f'tr[data-ref="{disk["ref"]}"]')
    row.wait_for(timeout=5_000)
    assert post(operator, "/api/ack", {**ack, "comment": "no csrf"}, csrf=False) == 403
    row.locator('input[name="comment"]').fill("on my way")
    row.locator('button:has-text("Ack")').click()
    [sent] = console.commands.wait_event("cmd.alerter.ack", timeout=10)
    assert sent["device"] == "edge-a" and sent["data"]["author"] == "olivia"
    assert sent["data"]["args"] == {"dedup_key": disk["dedup_key"], "comment": "on my way"}
    # the page shows it acked without a reload, once the service has sent it
    operator.wait_for_selector(f'tr[data-ref="{disk["ref"]}"] >> text="acked by olivia"', timeout=5_000)
    assert [e["data"]["author"] for e in console.commands.events("cmd.alerter.ack")] == ["olivia"]
    assert console.alerts("--device", "edge-a")[0]["muted"]["acked_by"] == "olivia"

    viewer.goto(f"{console.url}/device/edge-a")
    viewer.wait_for_selector("#device-state", timeout=5_000)
    assert viewer.locator("button[data-command]").count() == 0
    operator.goto(f"{console.url}/device/edge-a")
    operator.click('button[data-command="cmd.ingest.pause"]')
    [pause] = console.commands.wait_event("cmd.ingest.pause", timeout=10)
    assert (pause["device"], pause["data"]["author"], pause["data"]["args"]) == ("edge-a", "olivia", {})


SITES = {"depot-01": "depot", "depot-02": "depot", "gate-01": "gate", "gate-02": "gate", "yard-01": "yard"}


def test_a_fleet_on_the_wall_history_device_page_and_critical_notifications(
    browser: Any, vv: VV, tmp_path: Path
) -> None:
    fleet = {name: SimDevice(name) for name in SITES}
    console = Console(vv, *fleet.values())
    registry = {
        name: {
            **dev.registry_entry(),
            "site": SITES[name],
            "tags": ["north" if name.endswith("1") else "south"],
        }
        for name, dev in fleet.items()
    }
    (vv.home / "fleet" / "devices.json").write_text(json.dumps({"devices": registry}))
    console.start()
    for dev in fleet.values():
        console.connect(dev)
        for node in ("monitor", "sign", "scan"):
            console.health(dev.health(node, interval_s=30))
    yard, gate = fleet["yard-01"], fleet["gate-01"]
    for text in ("two people at the gate", "a van leaves", "nobody"):
        console.send(yard.logline_event(yard.logline(text=text)))
    console.send(fleet["depot-01"].alert("Disk almost full"))
    console.send(fleet["depot-02"].alert("Clock drift", severity="WARNING", node="scan"))
    console.health(fleet["gate-02"].health("scan", interval_s=30, status="offline"))
    console.retain("vv/depot-02/bridge/state", b"0")
    wait_until(lambda: len(console.alerts()) == 2, 10, "the alerts folded")

    context = browser.new_context(viewport={"width": 1280, "height": 720})
    context.grant_permissions(["notifications"], origin=console.url)
    context.add_init_script(
        "window.vvNotified = []; const Real = window.Notification;"
        " window.Notification = class extends Real { constructor(title, options) {"
        " super(title, options); window.vvNotified.push([title, options.body]); } };"
        " window.Notification.requestPermission = () => Real.requestPermission();"
    )
    page = context.new_page()
    page.goto(f"{console.url}/login")
    page.fill('input[name="username"]', "olivia")
    page.fill('input[name="password"]', PASSWORD)
    page.click("#login")
    page.wait_for_selector("#live.on", timeout=10_000)
    page.click("#notify")  # opt in
    page.wait_for_selector('#notify >> text="Notify: CRITICAL"', timeout=5_000)
    console.send(gate.alert("Camera offline", severity="CRITICAL"))
    # polled from here: the page's CSP (no eval) refuses Playwright's in-page predicate polling
    wait_until(lambda: page.evaluate("window.vvNotified.length") == 1, 5, "a browser notification")
    assert page.evaluate("window.vvNotified") == [["CRITICAL on gate-01", "Camera offline"]]
    console.send(gate.alert("Camera offline", severity="CRITICAL"))  # the same alert again: no second one
    wait_until(lambda: console.alerts("--device", "gate-01")[0]["count"] == 2, 5, "the repeat folded")
    page.wait_for_selector('a.tile[data-device="gate-01"][data-state="critical"]', timeout=5_000)
    assert len(page.evaluate("window.vvNotified")) == 1

    page.goto(f"{console.url}/?group=site")
    page.wait_for_selector('a.tile[data-device="yard-01"]', timeout=5_000)
    states = page.eval_on_selector_all("a.tile", "ts => ts.map(t => [t.dataset.device, t.dataset.state])")
    assert states == [
        ["depot-02", "offline"], ["depot-01", "error"], ["gate-01", "critical"], ["gate-02", "degraded"],
        ["yard-01", "ok"],
    ]  # fmt: skip
    assert page.eval_on_selector_all("section h2", "hs => hs.map(h => h.textContent)") == [
        "depot",
        "gate",
        "yard",
    ]
    screenshot(page, "console-grid.png", tmp_path)
    page.goto(f"{console.url}/alerts?group=severity&status=all")
    page.wait_for_selector('text="Camera offline"', timeout=5_000)
    assert "device offline" in page.inner_text('tr:has-text("Clock drift")')
    screenshot(page, "console-alerts.png", tmp_path)

    page.goto(f"{console.url}/device/yard-01")
    page.wait_for_selector('text="two people at the gate"', timeout=5_000)
    assert page.text_content("#device-state") == "ok"
    assert "#3" in page.inner_text("main") and "✓" in page.inner_text("main")
    screenshot(page, "console-device.png", tmp_path)

    page.goto(f"{console.url}/wall")
    page.wait_for_selector(".wall a.tile >> nth=4", timeout=5_000)
    assert page.locator("header#top").is_hidden()
    screenshot(page, "console-wall.png", tmp_path)

    page.goto(f"{console.url}/history?since=1h&kind=alert")
    page.wait_for_selector('td >> text="Camera offline"', timeout=5_000)
    exported = page.evaluate("async () => (await fetch(document.getElementById('export-csv').href)).text()")
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert {(r["device"], r["change"]) for r in rows} >= {("gate-01", "firing"), ("depot-01", "firing")}
    assert all(r["kind"] == "alert" for r in rows)
    console.close()
