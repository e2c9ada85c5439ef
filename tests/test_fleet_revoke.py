"""Revoking one device's certificate (`vv fleet revoke`): the CRL the fleet CA signs, the registry's
mark, and the central broker (real mosquitto over TLS, its `crlfile`) refusing the certificate.

mosquitto 2.0.11 facts these tests pin: it reads the CRL when it starts and again on SIGHUP (a
revocation refuses nothing until then); a client connected before the reload stays connected (the
CRL is checked at the TLS handshake only) until the broker restarts; a CRL past its next update
makes it refuse every client certificate.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Publisher, device_env, free_port, wait_until
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from fleet import FleetRig, attempt, bundle_tls, checked, run_vv

from bus import schemas


@pytest.fixture
def central(tmp_path: Path) -> dict[str, str]:
    env = device_env(tmp_path / "central", "central", free_port())
    checked(run_vv(env, "fleet", "ca", "init", "--server-name", "127.0.0.1"))
    return env


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[FleetRig]:
    fleet = FleetRig(tmp_path)
    yield fleet
    fleet.close()


def fleet_dir(env: dict[str, str]) -> Path:
    return Path(env["VV_HOME"]) / "fleet"


def load_crl(env: dict[str, str]) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((fleet_dir(env) / "crl.pem").read_bytes())


def ca_cert(env: dict[str, str]) -> x509.Certificate:
    return x509.load_pem_x509_certificate((fleet_dir(env) / "ca.crt").read_bytes())


def serial_of(bundle: Path) -> int:
    return x509.load_pem_x509_certificate((bundle / "device.crt").read_bytes()).serial_number


def enroll(env: dict[str, str], device: str, *args: str) -> Path:
    return Path(checked(run_vv(env, "fleet", "enroll", device, "--address", "127.0.0.1", *args)))


def openssl_accepts(env: dict[str, str], bundle: Path) -> bool:
    """`openssl verify` with the CRL checked, as mosquitto's OpenSSL checks a client."""
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-crl_check",
            "-CAfile",
            str(fleet_dir(env) / "ca.crt"),
            "-CRLfile",
            str(fleet_dir(env) / "crl.pem"),
            str(bundle / "device.crt"),
        ],
        capture_output=True,
        text=True,
    )
    return result.returncode == 0


def test_ca_init_writes_an_empty_crl_valid_as_long_as_the_ca(central: dict[str, str]) -> None:
    crl, ca = load_crl(central), ca_cert(central)
    assert len(crl) == 0
    assert crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert crl.next_update_utc == ca.not_valid_after_utc
    assert json.loads((fleet_dir(central) / "revoked.json").read_text())["revoked"] == {}


def test_revoke_lists_the_serial_and_marks_the_device(central: dict[str, str]) -> None:
    a, b = enroll(central, "A"), enroll(central, "B")
    number_before = load_crl(central).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    result = run_vv(central, "fleet", "revoke", "A", "--reason", "stolen from the van")
    assert result.returncode == 0 and Path(result.stdout.strip()) == fleet_dir(central) / "crl.pem"
    assert "RESTART the central broker" in result.stderr and "vv fleet enroll A --renew" in result.stderr

    crl, ca = load_crl(central), ca_cert(central)
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert [r.serial_number for r in crl] == [serial_of(a)]
    assert crl.get_revoked_certificate_by_serial_number(serial_of(b)) is None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number_before + 1
    assert not openssl_accepts(central, a) and openssl_accepts(central, b)

    registry = json.loads((fleet_dir(central) / "devices.json").read_text())
    schemas.validate("fleet-devices", registry)
    mark = registry["devices"]["A"]["revoked"]
    assert mark["serial"] == format(serial_of(a), "x") and mark["reason"] == "stolen from the van"
    assert "revoked" not in registry["devices"]["B"]
    record = json.loads((fleet_dir(central) / "revoked.json").read_text())["revoked"][mark["serial"]]
    assert record["cn"] == "A" and record["revoked_at"] == mark["at"] and record["by"]

    listing = checked(run_vv(central, "fleet", "devices")).splitlines()
    assert "REVOKED" in next(line for line in listing if line.startswith("A ")) and "stolen" in listing[0]
    assert "REVOKED" not in next(line for line in listing if line.startswith("B "))


def test_revoke_is_idempotent_and_refuses_unknown_devices_and_bad_usage(central: dict[str, str]) -> None:
    enroll(central, "A")
    enroll(central, "B")
    checked(run_vv(central, "fleet", "revoke", "A"))
    crl_before = (fleet_dir(central) / "crl.pem").read_bytes()
    again = run_vv(central, "fleet", "revoke", "A", "--reason", "again")
    assert again.returncode == 0 and "already revoked" in again.stderr
    assert (fleet_dir(central) / "crl.pem").read_bytes() == crl_before
    mark = json.loads((fleet_dir(central) / "devices.json").read_text())["devices"]["A"]["revoked"]
    assert mark["reason"] == ""  # the first revocation's record stands

    unknown = run_vv(central, "fleet", "revoke", "Z")
    assert unknown.returncode == 1 and "Z is not enrolled" in unknown.stderr
    for usage in ([], ["A", "--console", "main"], ["a/b"]):
        assert run_vv(central, "fleet", "revoke", *usage).returncode == 2, usage
    assert (fleet_dir(central) / "crl.pem").read_bytes() == crl_before

    # what an interrupted revoke left out is done again: the CRL lists the serial
    (fleet_dir(central) / "crl.pem").unlink()
    checked(run_vv(central, "fleet", "revoke", "A"))
    assert [format(r.serial_number, "x") for r in load_crl(central)] == [mark["serial"]]
    # a hand-broken record is refused, not half-read
    revoked = fleet_dir(central) / "revoked.json"
    revoked.write_text(revoked.read_text().replace(mark["serial"], "not-hex"))
    broken = run_vv(central, "fleet", "revoke", "B")
    assert broken.returncode == 1 and "revoked.json: expected" in broken.stderr


def test_revoke_a_console_credential(central: dict[str, str]) -> None:
    console = Path(checked(run_vv(central, "fleet", "enroll", "--console", "main")))
    result = run_vv(central, "fleet", "revoke", "--console", "main", "--reason", "laptop lost")
    assert result.returncode == 0 and "vv fleet enroll --console main" in result.stderr
    assert [r.serial_number for r in load_crl(central)] == [serial_of(console)]
    consoles = json.loads((fleet_dir(central) / "consoles.json").read_text())["consoles"]
    assert consoles["main"]["revoked"]["reason"] == "laptop lost"
    unknown = run_vv(central, "fleet", "revoke", "--console", "other")
    assert unknown.returncode == 1 and "no console credential 'other'" in unknown.stderr


@pytest.mark.slow
def test_central_broker_refuses_a_revoked_certificate_and_takes_its_renewal(rig: FleetRig) -> None:
    rig.start_central()  # on the empty CRL `vv fleet ca init` wrote
    a, b = rig.enroll("A"), rig.enroll("B")
    stolen = rig.root / "stolen-A"
    shutil.copytree(a, stolen)  # `--renew` below rewrites A's bundle directory
    assert attempt(rig.port, tls=bundle_tls(a)) == "connected"
    console = rig.console_probe("vv/A/#")
    held = Publisher(rig.port, device="A", tls=bundle_tls(stolen))  # connected before the revocation
    rig.clients.append(held)

    checked(run_vv(rig.env, "fleet", "revoke", "A", "--reason", "stolen"))
    assert attempt(rig.port, tls=bundle_tls(stolen)) == "connected"  # read at start: not yet
    central = rig.central
    assert central is not None and central.proc is not None
    central.proc.send_signal(signal.SIGHUP)  # `systemctl reload vv-central-broker`
    wait_until(lambda: "Reloading config" in central.log_path.read_text(), 10, "the SIGHUP reload")
    assert attempt(rig.port, tls=bundle_tls(stolen)) != "connected"
    assert attempt(rig.port, tls=bundle_tls(b)) == "connected"
    # the reload leaves the connection A opened before it: it still publishes
    held.raw("vv/A/alert/warning", b"still connected")
    wait_until(lambda: console.payloads("vv/A/alert/warning"), 10, "A's message after the reload")

    central.stop()
    central.start()  # a restart drops it, and it cannot come back
    wait_until(lambda: not held.client.is_connected(), 10, "the held connection to drop")
    assert attempt(rig.port, tls=bundle_tls(stolen)) != "connected"
    assert not held.client.is_connected()

    renewed = rig.enroll("A", "--renew")
    assert serial_of(renewed) != serial_of(stolen)
    assert attempt(rig.port, tls=bundle_tls(renewed)) == "connected"  # no reload needed for a new serial
    assert attempt(rig.port, tls=bundle_tls(stolen)) != "connected"
    registry = json.loads((rig.home / "fleet" / "devices.json").read_text())["devices"]
    assert "revoked" not in registry["A"]
    assert [r.serial_number for r in load_crl(rig.env)] == [serial_of(stolen)]


@pytest.mark.slow
def test_an_expired_crl_locks_everyone_out_and_vv_broker_central_re_signs_it(rig: FleetRig) -> None:
    """Why the CRL lives as long as the CA: past its next update OpenSSL refuses every client."""
    crl_path = rig.home / "fleet" / "crl.pem"
    ca = ca_cert(rig.env)
    key = serialization.load_pem_private_key((rig.home / "fleet" / "ca.key").read_bytes(), password=None)
    now = dt.datetime.now(dt.UTC)
    expired = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - dt.timedelta(days=2))
        .next_update(now - dt.timedelta(days=1))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    broker = rig.start_central()  # renders the config (and a current CRL) first
    crl_path.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    broker.stop()
    broker.start()
    assert attempt(rig.port, tls=rig.console_tls) != "connected"
    broker.stop()
    rig.start_central()  # `vv broker --central` finds it expired and signs a current one
    assert load_crl(rig.env).next_update_utc == ca.not_valid_after_utc
    assert attempt(rig.port, tls=rig.console_tls) == "connected"


def test_a_central_host_without_the_ca_key_takes_a_copied_crl(
    central: dict[str, str], tmp_path: Path
) -> None:
    """As Ansible sets one up: ca.crt, the server certificate and the CRL, the CA key on the controller."""
    host = {**central, "VV_HOME": str(tmp_path / "host")}
    copied = fleet_dir(host)
    copied.mkdir(parents=True)
    for name in ("ca.crt", "server.crt", "server.key"):
        shutil.copy2(fleet_dir(central) / name, copied / name)
    args = ("broker", "--central", "--listen", f"127.0.0.1:{free_port()}", "--print-config")
    missing = run_vv(host, *args)
    assert missing.returncode == 2 and "`vv fleet crl` where it is" in missing.stderr
    (fleet_dir(central) / "crl.pem").unlink()  # a CA from before revocation: `vv fleet crl` makes one
    crl = Path(checked(run_vv(central, "fleet", "crl")))
    shutil.copy2(crl, copied / "crl.pem")
    conf = Path(checked(run_vv(host, *args))).read_text()
    assert f"crlfile {copied / 'crl.pem'}\n" in conf
    assert (copied / "crl.pem").read_bytes() == crl.read_bytes()  # used as it came, not re-signed
