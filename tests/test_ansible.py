"""The Ansible roll-out (ansible/): lint clean, `site.yml` converges hosts into temp prefixes on
this machine (ansible_connection=local, units rendered, not started) and a second run changes
nothing, the rendered files run, and the upgrade's health gate passes a healthy device and stops
the play naming the node of a device that stays offline.

Offline: the wheel is built from this checkout without build isolation, and each host's venv is
pre-seeded (like a golden image) with the project's dependencies, so the role installs only the
wheel (`--no-deps --no-index`). The fleet steps (`vv fleet`, `vv broker --central`, `vv console`)
run when those commands exist, and skip naming the missing command until then.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, VV, Probe, Publisher, free_port, stop_process, wait_until

from bus.broker import ADMIN_USER, secret_for
from bus.config import Settings, load_settings
from bus.envelope import JSON

pytestmark = pytest.mark.slow

ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent
EDGES = ("edgeA", "edgeB")
CENTRAL = "central1"
VERSION = "0.1.0"
EDGE_NODES = [
    "supervisor",
    "journal",
    "ingest",
    "scan",
    "summarize",
    "sign",
    "reconciler",
    "alerter",
    "disk",
    "monitor",
]
# edgeA's disk node warns about any volume with free space (never critical): a real node's alert
DISK_WARNS = {"warn_percent": 100.0, "warn_free_gb": 1e9, "critical_percent": 0.0, "critical_free_gb": 0.0}
OPERATOR = ("olivia", "operator", "vault-kept operator pw")  # the console user the converge adds
DSN = "postgresql://vv:vault-kept-db-pw@db.example:5432/vv?sslmode=verify-full"
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed: `make install` adds ansible/requirements-dev.txt")
    return path


def fleet_missing() -> str | None:
    """Why the fleet steps cannot run here, or None when `vv fleet` exists."""
    result = subprocess.run(
        [sys.executable, "-m", "nodes.cli", "fleet", "--help"], cwd=REPO, capture_output=True, text=True
    )
    if result.returncode != 0:
        return (
            "`vv fleet --help` fails (the fleet link and console are not merged): "
            + (result.stderr.strip().splitlines() or ["no output"])[-1]
        )
    return None


@dataclass
class Converge:
    seconds: float
    output: str
    recap: dict[str, dict[str, int]]


@dataclass
class Fleet:
    root: Path
    inventory: Path
    env: dict[str, str]
    hosts: list[str]
    fleet: bool
    runs: list[Converge]

    def prefix(self, host: str) -> Path:
        return self.root / "hosts" / host

    def playbook(self, name: str, *extra: str) -> Converge:
        started = time.monotonic()
        result = subprocess.run(
            [str(tool("ansible-playbook")), "-i", str(self.inventory), name, *extra],
            cwd=ANSIBLE,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        output = result.stdout + result.stderr
        recap = {
            host: dict(zip(("ok", "changed", "unreachable", "failed"), map(int, counts), strict=True))
            for host, *counts in RECAP.findall(output)
        }
        converge = Converge(time.monotonic() - started, output, recap)
        converge.recap["rc"] = {"rc": result.returncode}
        return converge


def unit(path: Path) -> tuple[list[str], dict[str, str]]:
    """A rendered systemd unit's ExecStart and Environment, to run it as systemd would."""
    argv: list[str] = []
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "ExecStart":
            argv = shlex.split(value.replace("%%", "%"))
        elif key == "Environment":
            name, _, setting = value.partition("=")
            env[name] = setting
    return argv, env


def seed_venv(venv: Path, deps: Path) -> None:
    """A host image with the dependencies in place: a venv whose path includes them (not vv-edge)."""
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "vv-deps.pth").write_text(f"{deps}\n")


def dependencies(root: Path) -> Path:
    """The dev venv's installed packages minus vv-edge itself, as one directory of links."""
    deps = root / "deps"
    deps.mkdir()
    site = next((BIN.parent / "lib").glob("python3*/site-packages"))
    for entry in site.iterdir():
        if "vv_edge" in entry.name or entry.suffix == ".pth" or entry.name in ("bus", "nodes", "__pycache__"):
            continue
        (deps / entry.name).symlink_to(entry)
    return deps


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tool("ansible-playbook")
    root = tmp_path_factory.mktemp("fleet")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(root / "dist"),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((root / "dist").glob("vv_edge-*.whl"))
    deps = dependencies(root)
    with_fleet = fleet_missing() is None
    hosts = [*([CENTRAL] if with_fleet else []), *EDGES]
    for host in hosts:
        seed_venv(root / "hosts" / host / "opt" / "vv", deps)
    central_port = free_port()
    host_vars: dict[str, Any] = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "vv_install_prefix": str(root / "hosts") + "/{{ inventory_hostname }}",
        "vv_install_manage_user": False,
        "vv_install_user": "root",
        "vv_install_group": "root",
        "vv_install_service_manager": "none",
        "vv_install_python": sys._base_executable,
        "vv_install_wheel": str(wheel),
        "vv_install_pip_extra_args": "--no-deps --no-index",
        "vv_ca_home": str(root / "controller"),
        "vv_ca_vv": f"{sys.executable} -m nodes.cli",
        "vv_edge_fleet": with_fleet,
        "vv_edge_bridge_port": central_port,
    }
    inventory = {
        "all": {
            "vars": host_vars,
            "children": {
                "central": {
                    "hosts": {
                        CENTRAL: {
                            "vv_central_address": "127.0.0.1",
                            "vv_central_listen": "127.0.0.1",
                            "vv_central_port": central_port,
                            "vv_central_console_users": [
                                {"name": OPERATOR[0], "role": OPERATOR[1], "password": OPERATOR[2]}
                            ],
                            "vv_central_console_http_port": free_port(),
                            "vv_central_console_cookie_secure": False,
                        }
                    }
                    if with_fleet
                    else {}
                },
                "edge": {
                    "hosts": {
                        host: {
                            "vv_edge_device": host,
                            "vv_edge_mqtt_port": free_port(),
                            "vv_edge_site": "lab",
                            "vv_edge_tags": ["test"],
                            **({"vv_edge_settings": {"disk": DISK_WARNS}} if host == "edgeA" else {}),
                        }
                        for host in EDGES
                    }
                },
            },
        }
    }
    inventory_path = root / "inventory.json"  # YAML inventories read JSON too
    inventory_path.write_text(json.dumps(inventory, indent=2))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VV_", "ANSIBLE_"))},
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_HOME": str(root / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(root / "ansible-tmp"),
        "ANSIBLE_FORKS": "2",  # the machine's two cores are shared
        "ANSIBLE_NOCOLOR": "1",
        "PYTHONPATH": str(REPO),  # the controller's `vv` is this checkout
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    state = Fleet(root, inventory_path, env, hosts, with_fleet, [])
    for _ in range(2):
        run = state.playbook("site.yml")
        assert run.recap["rc"]["rc"] == 0, run.output[-6000:]
        state.runs.append(run)
    print(
        f"\nconverge site.yml over {len(hosts)} hosts: " + ", ".join(f"{r.seconds:.1f} s" for r in state.runs)
    )
    yield state


def test_ansible_lint_production_profile_is_clean() -> None:
    result = subprocess.run(
        [str(tool("ansible-lint")), "--profile", "production", "--offline", "--nocolor"],
        cwd=ANSIBLE,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Passed" in result.stderr + result.stdout


def test_yamllint_is_clean() -> None:
    result = subprocess.run(
        [str(tool("yamllint")), "--strict", "."], cwd=ANSIBLE, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_vv_toml_filter_writes_settings_toml_reads_back() -> None:
    sys.path.insert(0, str(ANSIBLE / "roles" / "vv_install" / "filter_plugins"))
    try:
        from vv_toml import vv_toml
    finally:
        sys.path.pop(0)
    doc = {
        "device": 'cam "1"',
        "mqtt": {"port": 1883, "host": "127.0.0.1"},
        "filters": {
            "threshold": 0.6,
            "classes": {"person": {"threshold": 0.7}, "big truck": {"min_area": 0.01}},
        },
        "bridge": {"address": "central.example", "enabled": True, "tags": ["a", "b"]},
    }
    assert tomllib.loads(vv_toml(doc)) == doc
    with pytest.raises(ValueError, match=r"filters\.threshold"):
        vv_toml({"filters": {"threshold": float("nan")}})


def test_site_converges_and_a_second_run_changes_nothing(fleet: Fleet) -> None:
    first, second = fleet.runs
    assert set(fleet.hosts) <= set(first.recap), first.output[-3000:]
    assert all(first.recap[host]["changed"] > 0 for host in fleet.hosts)
    for host in fleet.hosts:
        assert second.recap[host]["changed"] == 0, (
            f"{host} changed on the second run:\n{second.output[-6000:]}"
        )
        assert second.recap[host]["failed"] == 0


def test_central_console_has_its_users_file_and_web_settings(fleet: Fleet) -> None:
    if not fleet.fleet:
        pytest.skip(fleet_missing() or "vv fleet is missing")
    prefix = fleet.prefix(CENTRAL)
    console = tomllib.loads((prefix / "etc/vv/console.toml").read_text())["console"]
    users_file = prefix / "var/lib/vv/console/users.json"
    assert console["users_file"] == str(users_file) and console["database_url"] == ""
    assert (console["http_host"], console["cookie_secure"]) == ("127.0.0.1", False)
    assert console["http_port"] > 0
    assert users_file.stat().st_mode & 0o777 == 0o600
    users = json.loads(users_file.read_text())
    assert [(u["name"], u["role"]) for u in users] == [OPERATOR[:2]]
    assert users[0]["password_hash"].startswith("$argon2id$")
    assert all(OPERATOR[2] not in run.output for run in fleet.runs)  # no_log kept it out of the logs
    check = subprocess.run(
        [str(prefix / "opt/vv/bin/vv"), "console", "users", "check", OPERATOR[0], "--role", OPERATOR[1]],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("VV_")},
            "VV_CONFIG": str(prefix / "etc/vv/console.toml"),
        },
        input=OPERATOR[2] + "\n",
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


def test_central_with_postgresql_renders_the_dsn_and_keeps_it_out_of_the_log(fleet: Fleet) -> None:
    """The central role converged with the PostgreSQL store into a second prefix (no database runs:
    the DSN in console.toml is what the console would connect with)."""
    if not fleet.fleet:
        pytest.skip(fleet_missing() or "vv fleet is missing")
    prefix = fleet.root / "central-pg"
    seed_venv(prefix / "opt/vv", fleet.root / "deps")
    extra = {"vv_install_prefix": str(prefix), "vv_central_console_store": "postgresql"}
    run = fleet.playbook(
        "site.yml",
        "-v",
        "--limit",
        CENTRAL,
        "-e",
        json.dumps({**extra, "vv_central_console_database_url": DSN}),
    )
    assert run.recap["rc"]["rc"] == 0 and run.recap[CENTRAL]["failed"] == 0, run.output[-6000:]
    assert "vault-kept-db-pw" not in run.output  # not even with -v
    assert f"vv-edge[postgres]=={VERSION}" in run.output  # the venv gets psycopg with the store
    config = prefix / "etc/vv/console.toml"
    assert tomllib.loads(config.read_text())["console"]["database_url"] == DSN
    assert config.stat().st_mode & 0o777 == 0o640
    refused = fleet.playbook("site.yml", "--limit", CENTRAL, "-e", json.dumps(extra))  # no DSN given
    assert refused.recap["rc"]["rc"] != 0 and "vv_central_console_database_url" in refused.output


def test_edge_host_has_its_config_keys_and_units(fleet: Fleet) -> None:
    for host in EDGES:
        prefix = fleet.prefix(host)
        home = prefix / "var/lib/vv"
        config = prefix / "etc/vv/vv.toml"
        settings = tomllib.loads(config.read_text())
        assert settings["device"] == host and settings["home"] == str(home)
        assert ("bridge" in settings) == fleet.fleet
        assert config.stat().st_mode & 0o777 == 0o640
        assert (home / "keys").stat().st_mode & 0o777 == 0o700
        active = (home / "keys/active").read_text().strip()
        assert (home / "keys" / f"{active}.key").stat().st_mode & 0o777 == 0o600
        # the public key on the controller is the one the device made; the private key stayed there
        ring = json.loads((fleet.root / "controller/fleet/keyring" / f"{host}.json").read_text())
        assert list(ring) == [active]
        assert "seed" not in (fleet.root / "controller/fleet/keyring" / f"{host}.json").read_text()
        units = prefix / "etc/systemd/system"
        argv, env = unit(units / "vv-up.service")
        assert argv == [str(prefix / "opt/vv/bin/vv"), "up", "--broker"]
        assert env["VV_CONFIG"] == str(config)
        assert "Restart=on-failure" in (units / "vv-up.service").read_text()
        cleanup, _ = unit(units / "vv-cleanup.service")
        assert cleanup[:2] == [str(prefix / "opt/vv/bin/vv"), "cleanup"] and "15%" in cleanup
        assert "OnCalendar=*-*-* 00:20:00" in (units / "vv-export.timer").read_text()
        installed = subprocess.run(
            [
                str(prefix / "opt/vv/bin/python"),
                "-c",
                "import importlib.metadata as m, nodes; print(m.version('vv-edge'), nodes.__file__)",
            ],
            cwd=prefix,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert installed[0] == VERSION and installed[1].startswith(str(prefix / "opt/vv/lib"))


def start_unit(
    fleet: Fleet, host: str, unit_name: str, args: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """Run a rendered unit's command (or, with `args`, the installed vv with other arguments) in the
    unit's environment, as systemd would; logs beside the host's prefix."""
    argv, env = unit(fleet.prefix(host) / "etc/systemd/system" / unit_name)
    log = (fleet.root / f"{host}-{unit_name}.log").open("ab")
    return subprocess.Popen(
        argv if args is None else [argv[0], *args],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("VV_")}, **env},
        stdout=log,
        stderr=log,
    )


def host_settings(fleet: Fleet, host: str, config: str = "vv.toml") -> Settings:
    return load_settings({"VV_CONFIG": str(fleet.prefix(host) / "etc/vv" / config)})


def test_rendered_edge_broker_takes_the_hosts_own_credentials(fleet: Fleet) -> None:
    """The broker part of vv-up.service (`vv broker` from the installed wheel, the unit's
    environment): a node logs in with the secret kept on the host and its health reaches a reader."""
    settings = host_settings(fleet, "edgeA")
    broker = start_unit(fleet, "edgeA", "vv-up.service", ["broker"])
    try:
        wait_until(lambda: broker_up(settings.mqtt.port, broker), 30, "the rendered edge broker")
        reader = Probe(settings.mqtt.port, "edgeA", secret_for(settings, "edgeA"), "vv/edgeA/health/#")
        node = Publisher(settings.mqtt.port, *settings.mqtt_credentials(settings.mqtt_username("alerter")))
        try:
            assert node.raw("vv/edgeA/health/alerter", b'{"node": "alerter"}', JSON) == 0
            wait_until(lambda: reader.health("alerter"), 10, "alerter's health at the reader")
        finally:
            node.close()
            reader.close()
    finally:
        stop_process(broker)


def broker_up(port: int, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"the broker exited with {proc.returncode}")
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def publish_health(publisher: Publisher, device: str, statuses: dict[str, str], version: str) -> None:
    for node, status in statuses.items():
        doc = {
            "node": node,
            "device": device,
            "status": status,
            "time": "2026-01-01T00:00:00Z",
            "version": version,
        }
        info = publisher.client.publish(f"vv/{device}/health/{node}", json.dumps(doc), qos=1, retain=True)
        info.wait_for_publish(10)


def test_upgrade_health_gate_passes_a_healthy_device_and_stops_at_an_offline_node(
    fleet: Fleet, vv: VV
) -> None:
    """Retained health on a real broker stands in for the central one: edgeA (the canary) has every
    node online with the version, edgeB's scan stays offline. The gate lets edgeA through and stops
    the play at edgeB, naming scan; the plays after the waves never run."""
    publisher = Publisher(vv.broker.port, *vv.admin())
    try:
        publish_health(publisher, "edgeA", dict.fromkeys(EDGE_NODES, "online"), VERSION)
        publish_health(
            publisher, "edgeB", {**dict.fromkeys(EDGE_NODES, "online"), "scan": "offline"}, VERSION
        )
    finally:
        publisher.close()
    gate = {
        "vv_install_version": VERSION,
        "vv_health_gate_host": "127.0.0.1",
        "vv_health_gate_port": vv.broker.port,
        "vv_health_gate_auth": ["-u", ADMIN_USER, "-P", secret_for(vv.settings, ADMIN_USER)],
        "vv_health_gate_timeout_s": 4,
        "vv_health_gate_delay_s": 1,
        "vv_health_gate_read_s": 1,
    }
    run = fleet.playbook("upgrade.yml", "-e", json.dumps(gate))
    print(f"\nupgrade.yml (2 waves, gate fails on the second): {run.seconds:.1f} s")
    assert run.recap["rc"]["rc"] != 0, run.output[-4000:]
    assert run.recap["edgeA"]["failed"] == 0 and run.recap["edgeB"]["failed"] == 1, run.output[-4000:]
    assert "health gate failed on edgeB" in run.output
    assert "node scan is offline with version 0.1.0" in run.output
    assert "node journal" not in run.output  # only the failing node is named
    assert "upgrade complete" not in run.output
    assert run.recap["edgeA"]["changed"] == 0  # same version: nothing reinstalled or restarted


def test_alert_travels_from_an_edge_node_to_the_console(fleet: Fleet) -> None:
    """The rendered central broker, two rendered edge brokers (with their bridges) and the console
    run from the converged files; the alert edgeA's real disk node raises shows in `vv fleet alerts`."""
    if not fleet.fleet:
        pytest.skip(fleet_missing() or "vv fleet is missing")
    units = fleet.prefix(CENTRAL) / "etc/systemd/system"
    procs = [start_unit(fleet, CENTRAL, "vv-central-broker.service")]
    try:
        argv, _ = unit(units / "vv-central-broker.service")
        port = int(argv[argv.index("--listen") + 1].rpartition(":")[2])
        wait_until(lambda: broker_up(port, procs[0]), 30, "the rendered central broker")
        procs.append(start_unit(fleet, CENTRAL, "vv-console.service"))
        edges = {host: host_settings(fleet, host) for host in EDGES}
        for host in EDGES:
            procs.append(start_unit(fleet, host, "vv-up.service", ["broker"]))
            wait_until(lambda h=host: broker_up(edges[h].mqtt.port, procs[-1]), 30, f"{host}'s broker")
        procs.append(start_unit(fleet, "edgeA", "vv-up.service", ["run", "disk"]))
        _, console_env = unit(units / "vv-console.service")
        vv_bin = str(fleet.prefix(CENTRAL) / "opt/vv/bin/vv")

        def alerts() -> list[dict[str, Any]]:
            result = subprocess.run(
                [vv_bin, "fleet", "alerts", "--json", "--device", "edgeA"],
                env={**{k: v for k, v in os.environ.items() if not k.startswith("VV_")}, **console_env},
                capture_output=True,
                text=True,
            )
            if result.returncode != 0 or procs[-1].poll() is not None:
                assert procs[-1].poll() is None, f"edgeA's disk node exited with {procs[-1].returncode}"
                return []
            found: list[dict[str, Any]] = json.loads(result.stdout)
            return [a for a in found if a["title"] == "Disk space low"]

        raised = wait_until(alerts, 60, "edgeA's disk alert in `vv fleet alerts --json`")
        assert {(a["device"], a["source_component"], a["severity"], a["status"]) for a in raised} == {
            ("edgeA", "disk", "WARNING", "firing")
        }
    finally:
        for proc in reversed(procs):
            stop_process(proc)
