"""The fleet PKI through `vv fleet` (real processes, real files): what a device, the console and
the central broker are given, and what is refused."""

from __future__ import annotations

import base64
import ipaddress
import json
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import device_env, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from fleet import checked, run_vv

from bus import schemas
from bus.broker_central import DEV_USER
from bus.config import ConfigError, load_settings
from nodes.fleet.pki import verify_chain

KEY_ID = "0123456789abcdef"
PUBLIC = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture
def central(tmp_path: Path) -> dict[str, str]:
    env = device_env(tmp_path / "central", "central", free_port())
    checked(
        run_vv(env, "fleet", "ca", "init", "--server-name", "127.0.0.1", "--server-name", "central.example")
    )
    return env


def fleet_dir(env: dict[str, str]) -> Path:
    return Path(env["VV_HOME"]) / "fleet"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def cn(certificate: x509.Certificate) -> str:
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def eku(certificate: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_ca_and_server_certificate(central: dict[str, str]) -> None:
    fleet = fleet_dir(central)
    assert mode(fleet / "ca.key") == 0o600 and mode(fleet / "server.key") == 0o600
    ca = cert(fleet / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server = cert(fleet / "server.crt")
    assert eku(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["central.example"]
    # what a bridge checks: the chain to the fleet CA and the address it dialled
    verifier = (
        PolicyBuilder()
        .store(Store([ca]))
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    )
    assert verifier.verify(server, [])[-1] == ca


def test_ca_init_never_replaces_silently(central: dict[str, str]) -> None:
    ca_before = (fleet_dir(central) / "ca.crt").read_bytes()
    again = run_vv(central, "fleet", "ca", "init")
    assert again.returncode == 1 and "--force" in again.stderr
    assert (fleet_dir(central) / "ca.crt").read_bytes() == ca_before
    checked(run_vv(central, "fleet", "ca", "init", "--force"))
    assert (fleet_dir(central) / "ca.crt").read_bytes() != ca_before


def test_enroll_device_bundle_and_registry(central: dict[str, str], tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({KEY_ID: PUBLIC}))
    out = Path(
        checked(
            run_vv(
                central,
                "fleet",
                "enroll",
                "cam-gw-01",
                "--site",
                "depot",
                "--tag",
                "north",
                "--tag",
                "dock",
                "--signing-key",
                str(keys),
                "--out",
                str(tmp_path / "bundle"),
            )
        )
    )
    assert sorted(p.name for p in out.iterdir()) == ["bridge.toml", "ca.crt", "device.crt", "device.key"]
    assert mode(out / "device.key") == 0o600
    device = cert(out / "device.crt")
    ca = cert(out / "ca.crt")
    assert cn(device) == "cam-gw-01"
    assert eku(device) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not device.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    verify_chain(device, ca)
    # and as OpenSSL (mosquitto's TLS) checks a client: chain, validity and purpose
    openssl = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(out / "ca.crt"),
            "-purpose",
            "sslclient",
            str(out / "device.crt"),
        ],
        capture_output=True,
        text=True,
    )
    assert openssl.returncode == 0, openssl.stdout + openssl.stderr
    wrong_purpose = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(out / "ca.crt"),
            "-purpose",
            "sslserver",
            str(out / "device.crt"),
        ],
        capture_output=True,
    )
    assert wrong_purpose.returncode != 0
    key = serialization.load_pem_private_key((out / "device.key").read_bytes(), password=None)
    assert key.public_key() == device.public_key()

    registry = json.loads((fleet_dir(central) / "devices.json").read_text())
    schemas.validate("fleet-devices", registry)
    record = registry["devices"]["cam-gw-01"]
    assert record["site"] == "depot" and record["tags"] == ["north", "dock"]
    assert record["signing_keys"] == {KEY_ID: PUBLIC}
    assert record["cert_sha256"] == device.fingerprint(hashes.SHA256()).hex()
    assert record["not_after"] == device.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")

    # the snippet is the device's [bridge] settings, with the server certificate's address
    box = {**device_env(tmp_path / "box", "cam-gw-01", free_port()), "VV_CONFIG": str(out / "bridge.toml")}
    bridge = load_settings(box).bridge
    assert (bridge.address, bridge.port) == ("127.0.0.1", 8883)


def test_reenrol_takes_renew_and_keeps_what_was_known(central: dict[str, str], tmp_path: Path) -> None:
    first = Path(
        checked(run_vv(central, "fleet", "enroll", "A", "--site", "s1", "--out", str(tmp_path / "1")))
    )
    again = run_vv(central, "fleet", "enroll", "A", "--out", str(tmp_path / "2"))
    assert again.returncode == 1 and "--renew" in again.stderr
    assert not (tmp_path / "2").exists()
    second = Path(checked(run_vv(central, "fleet", "enroll", "A", "--renew", "--out", str(tmp_path / "2"))))
    record = json.loads((fleet_dir(central) / "devices.json").read_text())["devices"]["A"]
    assert record["site"] == "s1"
    assert cert(first / "device.crt").serial_number != cert(second / "device.crt").serial_number
    assert record["serial"] == format(cert(second / "device.crt").serial_number, "x")


def test_csr_path_keeps_the_key_on_the_box(central: dict[str, str], tmp_path: Path) -> None:
    box = device_env(tmp_path / "box", "B", free_port())
    csr = Path(checked(run_vv(box, "fleet", "csr")))
    key_path = tmp_path / "box" / "keys" / "fleet" / "device.key"
    assert csr.parent == key_path.parent and mode(key_path) == 0o600
    out = Path(
        checked(run_vv(central, "fleet", "enroll", "B", "--csr", str(csr), "--out", str(tmp_path / "b")))
    )
    assert not (out / "device.key").exists()
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert cert(out / "device.crt").public_key() == key.public_key()
    # a CSR is signed only for the id it names
    wrong = run_vv(central, "fleet", "enroll", "C", "--csr", str(csr), "--out", str(tmp_path / "c"))
    assert wrong.returncode == 1 and "not 'C'" in wrong.stderr
    # a second `vv fleet csr` (a renewal) keeps the key
    before = key_path.read_bytes()
    checked(run_vv(box, "fleet", "csr"))
    assert key_path.read_bytes() == before


def test_console_credential(central: dict[str, str]) -> None:
    out = Path(checked(run_vv(central, "fleet", "enroll", "--console", "main")))
    console = cert(out / "device.crt")
    assert cn(console) == "console:main" and eku(console) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert mode(out / "device.key") == 0o600
    assert not (fleet_dir(central) / "devices.json").exists()  # a console is no device
    assert json.loads((fleet_dir(central) / "consoles.json").read_text())["consoles"]["main"]["cert_sha256"]
    both = run_vv(central, "fleet", "enroll", "A", "--console", "main")
    assert both.returncode == 2


@pytest.mark.parametrize(
    "bad", ["", "a/b", "a+b", "a#b", "a b", "console:main", "a:b", "x" * 65, "a\x1bb", DEV_USER]
)
def test_bad_device_ids_are_refused(central: dict[str, str], bad: str) -> None:
    result = run_vv(central, "fleet", "enroll", bad)
    assert result.returncode == 2, result.stderr
    assert not (fleet_dir(central) / "devices.json").exists()
    assert "\x1b" not in result.stderr


def test_bad_signing_keys_file_is_refused(central: dict[str, str], tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"nothex": "abc"}))
    result = run_vv(central, "fleet", "enroll", "A", "--signing-key", str(keys))
    assert result.returncode == 1 and "key id" in result.stderr
    assert not (fleet_dir(central) / "devices.json").exists()


def test_enroll_without_a_ca_says_what_to_do(tmp_path: Path) -> None:
    env = device_env(tmp_path / "empty", "central", free_port())
    result = run_vv(env, "fleet", "enroll", "A", "--address", "127.0.0.1")
    assert result.returncode == 1 and "vv fleet ca init" in result.stderr


def test_bridge_settings_are_checked(tmp_path: Path) -> None:
    env = device_env(tmp_path / "box", "A", free_port())
    with pytest.raises(ConfigError, match=r"bridge\.port"):
        load_settings({**env, "VV_BRIDGE_PORT": "70000"})
    with pytest.raises(ConfigError, match=r"bridge\.keepalive_s"):
        load_settings({**env, "VV_BRIDGE_KEEPALIVE_S": "2"})
    # a bridge whose files are missing, or whose key others can read, is never rendered
    missing = run_vv({**env, "VV_BRIDGE_ADDRESS": "127.0.0.1"}, "broker", "--print-config")
    assert missing.returncode == 2 and "keys/fleet/ca.crt does not exist" in missing.stderr


def test_readable_bridge_key_is_refused(central: dict[str, str], tmp_path: Path) -> None:
    bundle = Path(checked(run_vv(central, "fleet", "enroll", "A", "--out", str(tmp_path / "keys" / "fleet"))))
    env = {**device_env(tmp_path, "A", free_port()), "VV_CONFIG": str(bundle / "bridge.toml")}
    (bundle / "device.key").chmod(0o644)
    result = run_vv(env, "broker", "--print-config")
    assert result.returncode == 2 and "chmod 600" in result.stderr
    (bundle / "device.key").chmod(0o600)
    conf = Path(checked(run_vv(env, "broker", "--print-config"))).read_text()
    assert "remote_clientid vv-A-bridge" in conf and "bridge_protocol_version mqttv311" in conf
    topics = [line for line in conf.splitlines() if line.startswith("topic ")]
    assert topics == [
        "topic vv/A/health/# out 1",
        "topic vv/A/alert/# out 1",
        "topic vv/A/logline/signed out 1",
        "topic vv/A/cmd/# in 1",
    ]
