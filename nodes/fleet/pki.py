"""The fleet's X.509 PKI: a CA in `$VV_HOME/fleet/`, the central broker's server certificate, one
client certificate per device (CN = device id) and per console (CN = `console:NAME`), and the
registry of enrolled devices (`devices.json`, schemas/fleet-devices.schema.json) the console reads,
and the revocations: `revoked.json` (serial -> whose, when, by whom, why) from which `crl.pem`, the
CRL the central broker checks every client certificate against, is regenerated whole.

The central broker authenticates by certificate (`use_identity_as_username`), so the CN *is* the
broker username its ACL is written for: a device id may never contain ':', which keeps every
console's CN out of reach of any device. Keys are ECDSA P-256 (every TLS stack takes them);
private keys are written 0600 and never printed or logged.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import getpass
import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bus.broker_central import DEV_USER
from bus.fsutil import atomic_write_bytes, atomic_write_json
from bus.inputs import InputError, read_text_file, shown

CONSOLE_PREFIX = "console:"
CA_DAYS = 3650
CERT_DAYS = 825
MAX_NAME = 64  # X.509 upper bound of a CommonName
KEY_ID = re.compile(r"[0-9a-f]{16}")


class FleetError(RuntimeError):
    """A fleet operation cannot be done as asked; the message says why and what to do."""


def check_device_id(device: str) -> str:
    """A device id usable as a CN, a broker username and a topic level: like the `device` setting
    (printable, no spaces, '/', '+', '#') and without ':' (reserved for console names); the central
    broker's development login is reserved too."""
    if device == DEV_USER:
        raise FleetError(f"{DEV_USER!r} is reserved for the central broker's development listener")
    if not device or len(device) > MAX_NAME or not device.isprintable() or any(c in device for c in " /+#:"):
        raise FleetError(
            f"device id {shown(device)!r} must be 1-{MAX_NAME} printable characters without spaces, "
            "'/', '+', '#' or ':'"
        )
    return device


def console_cn(name: str) -> str:
    """The CN (and central broker username) of a console credential."""
    check_device_id(name)
    return CONSOLE_PREFIX + name


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the DER certificate (what `openssl x509 -fingerprint -sha256` shows)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey, durable: bool = True) -> None:
    """PEM, unencrypted (mosquitto reads it unattended), 0600 from its first byte."""
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write_bytes(path, data, mode=0o600, durable=durable)


def _load_pem_file(path: Path) -> bytes:
    try:
        return read_text_file(path).encode()
    except InputError as exc:
        raise FleetError(str(exc)) from None


def load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_load_pem_file(path))
    except ValueError:
        raise FleetError(f"{shown(path)} is not a PEM certificate") from None


def make_csr(device: str, directory: Path) -> tuple[Path, Path]:
    """On the box: a new key (0600) and a CSR for it, so the private key never leaves the box.
    An existing key is reused (a renewal), never overwritten."""
    check_device_id(device)
    key_path, csr_path = directory / "device.key", directory / "device.csr"
    if key_path.exists():
        loaded = serialization.load_pem_private_key(_load_pem_file(key_path), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise FleetError(f"{shown(key_path)} is not an EC private key")
        key = loaded
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private_key(key_path, key)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
        .sign(key, hashes.SHA256())
    )
    atomic_write_bytes(csr_path, csr.public_bytes(serialization.Encoding.PEM))
    return key_path, csr_path


def read_signing_keys(path: Path) -> dict[str, str]:
    """The output of `vv keys export` ({key_id: base64 Ed25519 public key}), checked."""
    try:
        keys = json.loads(read_text_file(path))
    except InputError as exc:
        raise FleetError(str(exc)) from None
    except ValueError:
        raise FleetError(f"{shown(path)} is not JSON (expected the output of `vv keys export`)") from None
    if not isinstance(keys, dict) or not keys:
        raise FleetError(f"{shown(path)}: expected a non-empty object {{key_id: public key}}")
    for key_id, value in keys.items():
        try:
            raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
        except binascii.Error:
            raw = b""
        if not KEY_ID.fullmatch(key_id) or len(raw) != 32:
            raise FleetError(
                f"{shown(path)}: {shown(key_id)!r} is not a key id with a base64 32-byte Ed25519 key"
            )
    return dict(keys)


@dataclass(frozen=True)
class Issued:
    """What an enrolment wrote: the bundle directory and the certificate's registry facts."""

    directory: Path
    cn: str
    serial: str
    cert_sha256: str
    not_after: str
    key_written: bool


@dataclass(frozen=True)
class Revoked:
    """What `revoke` did: the certificate serial now on the CRL, and whether it was there already."""

    cn: str
    serial: str
    revoked_at: str
    already: bool


class FleetCA:
    """The CA and registries in one directory (`$VV_HOME/fleet`) on the central side."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca_cert = directory / "ca.crt"
        self.ca_key = directory / "ca.key"
        self.server_cert = directory / "server.crt"
        self.server_key = directory / "server.key"
        self.devices_file = directory / "devices.json"
        self.consoles_file = directory / "consoles.json"
        self.revoked_file = directory / "revoked.json"
        self.crl = directory / "crl.pem"

    # ------------------------------------------------------------------ the CA
    def exists(self) -> bool:
        return self.ca_cert.exists() or self.ca_key.exists()

    def init(
        self, name: str = "VV Edge fleet CA", days: int = CA_DAYS, force: bool = False
    ) -> x509.Certificate:
        """Create the CA; an existing one is never replaced silently: every certificate it issued
        would stop working, so replacing takes `force`."""
        if self.exists() and not force:
            raise FleetError(
                f"a fleet CA already exists in {shown(self.directory)}: replacing it invalidates every "
                "enrolled device; pass --force to do so"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private_key(self.ca_key, key)
        atomic_write_bytes(self.ca_cert, _pem(cert))
        # a new CA's CRL starts empty: the serials revoked under the old one die with it
        self._sign_crl({"crl_number": 0, "revoked": {}})
        return cert

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if not self.ca_cert.exists() or not self.ca_key.exists():
            raise FleetError(f"no fleet CA in {shown(self.directory)}: run `vv fleet ca init` first")
        key = serialization.load_pem_private_key(_load_pem_file(self.ca_key), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise FleetError(f"{shown(self.ca_key)} is not an EC private key")
        return load_certificate(self.ca_cert), key

    def _issue(
        self,
        subject_key: ec.EllipticCurvePublicKey,
        cn: str,
        usage: x509.ObjectIdentifier,
        days: int,
        names: Sequence[x509.GeneralName] = (),
    ) -> x509.Certificate:
        ca_cert, ca_key = self._ca()
        now = _now()
        not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject)
            .public_key(subject_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    def issue_server(self, hosts: Sequence[str], days: int = CERT_DAYS) -> x509.Certificate:
        """The central broker's certificate, with a SAN for every name or address devices dial
        (mosquitto's bridge checks the address it connects to against it)."""
        if not hosts:
            raise FleetError("the server certificate needs at least one host name or address")
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", host):
                    raise FleetError(f"{shown(host)!r} is neither an IP address nor a DNS name") from None
                names.append(x509.DNSName(host))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._issue(key.public_key(), hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, days, names)
        write_private_key(self.server_key, key)
        atomic_write_bytes(self.server_cert, _pem(cert))
        return cert

    # ------------------------------------------------------------------ enrolment
    def _bundle(
        self, cn: str, out: Path, days: int, csr_path: Path | None, durable: bool = True
    ) -> tuple[x509.Certificate, bool]:
        """Issue a clientAuth certificate for `cn` into `out` (ca.crt, device.crt, and device.key
        unless the key came as a CSR from the box); `durable=False` for scratch bundles."""
        key: ec.EllipticCurvePrivateKey | None = None
        if csr_path is None:
            key = ec.generate_private_key(ec.SECP256R1())
            public = key.public_key()
        else:
            public = self._csr_key(csr_path, cn)
        cert = self._issue(public, cn, ExtendedKeyUsageOID.CLIENT_AUTH, days)
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_bytes(out / "ca.crt", self.ca_cert.read_bytes(), durable=durable)
        atomic_write_bytes(out / "device.crt", _pem(cert), durable=durable)
        if key is not None:
            write_private_key(out / "device.key", key, durable)
        return cert, key is not None

    @staticmethod
    def _csr_key(csr_path: Path, cn: str) -> ec.EllipticCurvePublicKey:
        try:
            csr = x509.load_pem_x509_csr(_load_pem_file(csr_path))
        except ValueError:
            raise FleetError(f"{shown(csr_path)} is not a PEM certificate signing request") from None
        if not csr.is_signature_valid:
            raise FleetError(f"{shown(csr_path)}: the CSR's signature does not verify")
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [n.value for n in names] != [cn]:
            raise FleetError(
                f"{shown(csr_path)}: the CSR is for {[shown(n.value) for n in names]}, not {cn!r}"
            )
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise FleetError(f"{shown(csr_path)}: only EC keys are accepted (`vv fleet csr` makes one)")
        return public

    def enroll_device(
        self,
        device: str,
        out: Path,
        *,
        site: str | None = None,
        tags: Sequence[str] | None = None,
        signing_keys: dict[str, str] | None = None,
        csr: Path | None = None,
        renew: bool = False,
        days: int = CERT_DAYS,
    ) -> Issued:
        """Issue a device its bundle and record it in devices.json. A device already enrolled is
        re-issued only with `renew` (its site, tags and signing keys are kept unless given)."""
        check_device_id(device)
        registry = self.devices()
        previous = registry.get(device)
        if previous is not None and not renew:
            raise FleetError(
                f"{device} is already enrolled (certificate {previous['cert_sha256'][:16]}..., not after "
                f"{previous['not_after']}); pass --renew to issue it a new certificate"
            )
        cert, key_written = self._bundle(device, out, days, csr)
        issued = self._issued(out, device, cert, key_written)
        registry[device] = _record(previous, issued, site, tags, signing_keys)
        atomic_write_json(self.devices_file, {"devices": registry})
        return issued

    def enroll_devices(
        self,
        signing_keys: Mapping[str, dict[str, str]],
        out: Path,
        *,
        site: str,
        tags: Sequence[str],
        renew: Callable[[dict[str, Any]], bool],
        days: int = CERT_DAYS,
    ) -> dict[str, Issued]:
        """Many devices at once (a simulated fleet): scratch bundles in `out/<device>/` (no fsync
        each: 1,000 take about a second, not 15), one durable registry write.
        `signing_keys` maps each device to its Ed25519 keys; an enrolled device is re-issued only
        where `renew(its record)` says so, else the whole batch is refused before anything is written."""
        for device in signing_keys:
            check_device_id(device)
        registry = self.devices()
        refused = [d for d in signing_keys if d in registry and not renew(registry[d])]
        if refused:
            raise FleetError(f"already enrolled, not re-issued: {', '.join(sorted(refused)[:5])}")
        issued: dict[str, Issued] = {}
        for device, keys in signing_keys.items():
            cert, key_written = self._bundle(device, out / device, days, None, durable=False)
            issued[device] = self._issued(out / device, device, cert, key_written)
            registry[device] = _record(registry.get(device), issued[device], site, tags, keys)
        atomic_write_json(self.devices_file, {"devices": registry})
        return issued

    def enroll_console(
        self, name: str, out: Path, *, csr: Path | None = None, days: int = CERT_DAYS
    ) -> Issued:
        """The console's credential (CN `console:NAME`): it reads every device and sends commands;
        the central broker's ACL lists the consoles recorded in consoles.json."""
        cn = console_cn(name)
        cert, key_written = self._bundle(cn, out, days, csr)
        consoles = self.consoles()
        issued = self._issued(out, cn, cert, key_written)
        consoles[name] = {
            "cert_sha256": issued.cert_sha256,
            "serial": issued.serial,
            "not_after": issued.not_after,
        }
        atomic_write_json(self.consoles_file, {"consoles": consoles})
        return issued

    @staticmethod
    def _issued(out: Path, cn: str, cert: x509.Certificate, key_written: bool) -> Issued:
        serial, not_after = format(cert.serial_number, "x"), _rfc3339(cert.not_valid_after_utc)
        return Issued(out, cn, serial, fingerprint(cert), not_after, key_written)

    # ------------------------------------------------------------------ revocation
    def revoke_device(self, device: str, reason: str = "") -> Revoked:
        """Put the device's current certificate on the CRL and mark it revoked in devices.json.
        A `--renew` afterwards issues a new serial; the revoked one stays on the CRL."""
        check_device_id(device)
        registry = self.devices()
        if device not in registry:
            raise FleetError(f"{device} is not enrolled (see `vv fleet devices`)")
        revoked = self._revoke(device, registry[device], reason)
        atomic_write_json(self.devices_file, {"devices": registry})
        return revoked

    def revoke_console(self, name: str, reason: str = "") -> Revoked:
        """The same for a console credential (consoles.json)."""
        cn = console_cn(name)
        consoles = self.consoles()
        if name not in consoles:
            raise FleetError(f"no console credential {name!r} was issued (consoles.json)")
        revoked = self._revoke(cn, consoles[name], reason)
        atomic_write_json(self.consoles_file, {"consoles": consoles})
        return revoked

    def _revoke(self, cn: str, record: dict[str, Any], reason: str) -> Revoked:
        """Add `record`'s serial to revoked.json, re-sign the CRL and mark `record` (the caller
        writes its registry). Already revoked: only what an interrupted revoke left out is done."""
        self._ca()  # no CA, no CRL: say so before anything is written
        serial = str(record["serial"])
        document = self.revocations()
        entry = document["revoked"].get(serial)
        already = entry is not None
        if entry is None:
            entry = {"cn": cn, "revoked_at": _rfc3339(_now()), "by": getpass.getuser(), "reason": reason}
            document["revoked"][serial] = entry
        if not already or not self._crl_lists(serial):
            self._sign_crl(document)
        record["revoked"] = {"serial": serial, "at": entry["revoked_at"], "reason": entry["reason"]}
        return Revoked(cn, serial, entry["revoked_at"], already)

    def _crl_lists(self, serial: str) -> bool:
        try:
            crl = x509.load_pem_x509_crl(_load_pem_file(self.crl))
        except (FleetError, ValueError):
            return False
        return crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None

    def revocations(self) -> dict[str, Any]:
        """revoked.json: {"crl_number": n, "revoked": {serial hex: {cn, revoked_at, by, reason}}}."""
        if not self.revoked_file.exists():
            return {"crl_number": 0, "revoked": {}}
        try:
            document = json.loads(read_text_file(self.revoked_file))
        except (InputError, ValueError) as exc:
            raise FleetError(f"{shown(self.revoked_file)} is unreadable: {shown(exc)}") from None
        revoked = document.get("revoked") if isinstance(document, dict) else None
        if not (
            isinstance(revoked, dict)
            and isinstance(document.get("crl_number"), int)
            and all(
                re.fullmatch(r"[0-9a-f]{1,40}", serial)
                and isinstance(entry, dict)
                and isinstance(entry.get("revoked_at"), str)
                and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["revoked_at"])
                for serial, entry in revoked.items()
            )
        ):
            raise FleetError(
                f"{shown(self.revoked_file)}: expected crl_number (an integer) and revoked (hex serial: "
                "{revoked_at: YYYY-MM-DDTHH:MM:SSZ, cn, by, reason})"
            )
        return dict(document)

    def write_crl(self) -> x509.CertificateRevocationList:
        """Sign a CRL listing every serial in revoked.json (none: an empty CRL, which mosquitto
        needs as much as a full one) and write it to crl.pem; each one gets the next CRL number.

        Its next update is the CA's own end: once a CRL is past it, mosquitto (OpenSSL) refuses
        every client (tests/test_fleet_revoke.py), so a shorter life would only add a second
        cliff; and nobody fetches it from elsewhere, so no stale copy can be replayed."""
        return self._sign_crl(self.revocations())

    def _sign_crl(self, document: dict[str, Any]) -> x509.CertificateRevocationList:
        """The CRL of `document` (revoked.json's shape), written before the document itself: a
        crash in between leaves a CRL that lists more, never less, than the record."""
        ca_cert, ca_key = self._ca()
        document["crl_number"] += 1
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now)
            .next_update(max(ca_cert.not_valid_after_utc, now + dt.timedelta(days=1)))
            .add_extension(x509.CRLNumber(document["crl_number"]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        for serial, entry in sorted(document["revoked"].items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial, 16))
                .revocation_date(dt.datetime.strptime(entry["revoked_at"], "%Y-%m-%dT%H:%M:%S%z"))
                .build()
            )
        crl = builder.sign(ca_key, hashes.SHA256())
        atomic_write_bytes(self.crl, crl.public_bytes(serialization.Encoding.PEM))
        atomic_write_json(self.revoked_file, document)
        return crl

    def current_crl(self) -> Path:
        """crl.pem for the central broker, re-signed from revoked.json unless it is a current CRL
        of this CA (missing, unreadable, expired or another CA's: mosquitto would refuse everyone).
        Where only ca.crt is (a central host Ansible set up), it must come from where the key is."""
        ca_public = load_certificate(self.ca_cert).public_key()
        try:
            crl = x509.load_pem_x509_crl(_load_pem_file(self.crl)) if self.crl.exists() else None
        except ValueError:
            crl = None
        if (
            crl is not None
            and crl.next_update_utc is not None
            and crl.next_update_utc > dt.datetime.now(dt.UTC)
            and isinstance(ca_public, ec.EllipticCurvePublicKey)
            and crl.is_signature_valid(ca_public)
        ):
            return self.crl
        if not self.ca_key.exists():
            raise FleetError(
                f"{shown(self.crl)} is missing, expired or not this CA's, and the CA key is not here: run "
                "`vv fleet crl` where it is and copy its fleet/crl.pem here (ansible's vv_central role does)"
            )
        self.write_crl()
        return self.crl

    # ------------------------------------------------------------------ registries
    def _read(self, path: Path, key: str) -> dict[str, Any]:
        if not path.exists():
            return {}
        try:
            doc = json.loads(read_text_file(path))
        except (InputError, ValueError) as exc:
            raise FleetError(f"{shown(path)} is unreadable: {shown(exc)}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get(key), dict):
            raise FleetError(f"{shown(path)}: expected {{{key!r}: {{...}}}}")
        return dict(doc[key])

    def devices(self) -> dict[str, Any]:
        """The enrolled devices by id (schemas/fleet-devices.schema.json)."""
        return self._read(self.devices_file, "devices")

    def consoles(self) -> dict[str, Any]:
        """The issued console credentials by name."""
        return self._read(self.consoles_file, "consoles")


def _record(
    previous: dict[str, Any] | None,
    issued: Issued,
    site: str | None,
    tags: Sequence[str] | None,
    signing_keys: dict[str, str] | None,
) -> dict[str, Any]:
    """A device's registry entry (schemas/fleet-devices.schema.json) after an enrolment: site,
    tags and signing keys kept from `previous` unless given."""
    previous = previous or {"site": "", "tags": [], "signing_keys": {}}
    return {
        "site": previous["site"] if site is None else site,
        "tags": list(previous["tags"] if tags is None else dict.fromkeys(tags)),
        "cert_sha256": issued.cert_sha256,
        "serial": issued.serial,
        "not_after": issued.not_after,
        "enrolled_at": _rfc3339(_now()),
        "signing_keys": {**previous["signing_keys"], **(signing_keys or {})},
    }


def verify_chain(cert: x509.Certificate, ca: x509.Certificate) -> None:
    """Raise FleetError unless `cert` was signed by `ca` and is valid now (what a TLS peer checks
    first; mosquitto/OpenSSL does the full path validation)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise FleetError(f"{cert.subject.rfc4514_string()} was not issued by this CA: {exc}") from None
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise FleetError(f"{cert.subject.rfc4514_string()} is not valid now")
