"""The edge broker: mosquitto configured from the repo's templates for this device's VV_HOME."""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import stat
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from bus.config import BrokerSettings, Settings
from bus.inputs import not_regular, shown
from bus.resources import data_dir

ADMIN_USER = "vv-admin"


class BrokerError(RuntimeError):
    """mosquitto is missing or its configuration cannot be written."""


@dataclass(frozen=True)
class BrokerFiles:
    directory: Path
    conf: Path
    data_dir: Path
    passwd: Path | None
    acl: Path | None


@dataclass(frozen=True)
class Grant:
    """What one broker user may do, as topic filters; mosquitto checks `write` on every publish
    (a will included) and `read` on every message it would deliver."""

    username: str
    write: tuple[str, ...]
    read: tuple[str, ...]

    def acl_block(self) -> str:
        lines = [f"user {self.username}"]
        lines += [f"topic write {topic}" for topic in self.write]
        lines += [f"topic read {topic}" for topic in self.read]
        return "\n".join(lines) + "\n"


def persistence_and_limits(broker: BrokerSettings, central: bool = False) -> dict[str, object]:
    """The template values every broker config shares (edge and central): persistence and queue limits."""
    return {
        "autosave_interval": broker.central_autosave_interval if central else broker.autosave_interval,
        "persistent_client_expiration": broker.persistent_client_expiration,
        "max_packet_bytes": broker.max_packet_bytes,
        "max_queued_messages": broker.max_queued_messages,
        "max_queued_bytes": broker.max_queued_bytes,
    }


def mosquitto_binary(name: str = "mosquitto") -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )
    if not found:
        raise BrokerError(
            f"{name} not found: install it with `sudo apt-get install mosquitto mosquitto-clients`"
        )
    return found


def secret_for(settings: Settings, username: str) -> str:
    """The broker password of a user, generated once into keys/ (0600)."""
    path = settings.mqtt_secret(username)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def write_password_file(path: Path, users: Mapping[str, str]) -> None:
    """Hash every user's password with mosquitto_passwd (its own PBKDF2 format), 0600."""
    tool = mosquitto_binary("mosquitto_passwd")
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    tmp.touch(mode=0o600)
    for username, password in users.items():
        result = subprocess.run([tool, "-b", str(tmp), username, password], capture_output=True, text=True)
        if result.returncode != 0:
            raise BrokerError(
                f"mosquitto_passwd failed for {username}: {result.stderr.strip() or result.stdout.strip()}"
            )
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def render_broker(
    settings: Settings,
    *,
    dev: bool = False,
    directory: Path | None = None,
    grants: Sequence[Grant] = (),
) -> BrokerFiles:
    """Write mosquitto.conf (+ passwd and acl unless `dev`) for this device, with the bridge to the
    central broker when `[bridge]` has an address; idempotent.

    `grants` are the nodes' own credentials (the caller builds them from the node classes, which
    bus/ does not import); the device credential only reads, the admin one reads and writes `vv/#`.
    """
    directory = directory or settings.paths.state / "broker"
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    templates = data_dir("mosquitto")
    passwd = acl = None
    if not dev:
        users = {settings.device: settings.mqtt_credentials()[1] or secret_for(settings, settings.device)}
        users[ADMIN_USER] = secret_for(settings, ADMIN_USER)
        users.update({grant.username: secret_for(settings, grant.username) for grant in grants})
        passwd, acl = directory / "passwd", directory / "acl.conf"
        write_password_file(passwd, users)
        acl.write_text(
            Template((templates / "acl.conf").read_text()).substitute(
                device=settings.device,
                admin_user=ADMIN_USER,
                node_users="\n".join(grant.acl_block() for grant in grants),
            )
        )
        os.chmod(acl, 0o600)
    broker = settings.broker
    conf_text = Template((templates / "edge.conf").read_text()).substitute(
        user=getpass.getuser(),
        host="127.0.0.1" if dev else settings.mqtt.host,
        port=settings.mqtt.port,
        allow_anonymous="true" if dev else "false",
        password_file_line=f"password_file {passwd}" if passwd else "# dev mode: no password file",
        acl_file_line=f"acl_file {acl}" if acl else "# dev mode: no ACL",
        data_dir=data,
        **persistence_and_limits(broker),
        bridge=bridge_block(settings),
    )
    conf = directory / "mosquitto.conf"
    conf.write_text(conf_text)
    return BrokerFiles(directory=directory, conf=conf, data_dir=data, passwd=passwd, acl=acl)


@dataclass(frozen=True)
class TlsFiles:
    """A PEM CA certificate, certificate and private key (the key readable by its owner only)."""

    ca: Path
    cert: Path
    key: Path

    def check(self, what: str) -> None:
        """Refuse to render a config mosquitto would fail on, or a key others can read."""
        for path in (self.ca, self.cert, self.key):
            reason = not_regular(path)
            if reason:
                raise BrokerError(f"{what}: {reason}")
        if stat.S_IMODE(self.key.stat().st_mode) & 0o077:
            raise BrokerError(f"{what}: {shown(self.key)} is readable by others: chmod 600 it")


def fleet_files(settings: Settings) -> TlsFiles:
    """The device's bridge credential: `[bridge]` ca/cert/key, by default `keys/fleet/`."""
    bridge, default = settings.bridge, settings.paths.keys / "fleet"
    return TlsFiles(
        ca=Path(bridge.ca or default / "ca.crt").absolute(),
        cert=Path(bridge.cert or default / "device.crt").absolute(),
        key=Path(bridge.key or default / "device.key").absolute(),
    )


def bridge_block(settings: Settings) -> str:
    """The `connection` section for the edge mosquitto.conf, or "" when `[bridge]` has no address."""
    bridge = settings.bridge
    if not bridge.address:
        return ""
    files = fleet_files(settings)
    files.check("[bridge]")
    return Template((data_dir("mosquitto") / "bridge.conf").read_text()).substitute(
        device=settings.device,
        address=bridge.address,
        port=bridge.port,
        ca=files.ca,
        cert=files.cert,
        key=files.key,
        keepalive_s=bridge.keepalive_s,
        restart_min_s=bridge.restart_min_s,
        restart_max_s=bridge.restart_max_s,
    )


def broker_command(files: BrokerFiles) -> list[str]:
    return [mosquitto_binary(), "-c", str(files.conf)]
