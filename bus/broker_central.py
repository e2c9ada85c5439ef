"""The central broker of the fleet: mosquitto/central.conf and central-acl.conf rendered for this
VV_HOME (the edge side of the link, the bridge, is rendered with the edge config in bus/broker.py).

The central broker takes only clients with a certificate of the fleet CA that is not on its CRL;
the CN is the username its ACL is written for (devices by pattern, consoles by name). An optional loopback listener
for development takes one password login with a console's rights: never anonymous.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Sequence
from pathlib import Path
from string import Template

from bus.broker import (
    BrokerError,
    BrokerFiles,
    TlsFiles,
    persistence_and_limits,
    secret_for,
    write_password_file,
)
from bus.config import Settings
from bus.inputs import not_regular
from bus.resources import data_dir

# The development listener's login, with a console's rights. mosquitto_passwd refuses ':' in a
# username, so this name is reserved instead: `vv fleet enroll` refuses it as a device id.
DEV_USER = "vv-dev-console"


def _console_block(cn: str) -> str:
    return f"user {cn}\ntopic read vv/#\ntopic write vv/+/cmd/#\n"


def render_central(
    settings: Settings,
    tls: TlsFiles,
    *,
    crl: Path,
    host: str,
    port: int,
    consoles: Sequence[str],
    dev_port: int | None = None,
    directory: Path | None = None,
) -> BrokerFiles:
    """Write the central mosquitto.conf and ACL for this VV_HOME; idempotent.

    `crl` is the fleet CA's CRL (PEM; mosquitto refuses to start without it once configured);
    `consoles` are the console CNs (`console:NAME`) the ACL grants; `dev_port` adds a loopback
    listener without TLS whose one login (DEV_USER, secret in keys/) has a console's rights.
    """
    tls.check("central broker")
    reason = not_regular(crl)
    if reason:
        raise BrokerError(f"central broker: {reason}")
    directory = directory or settings.paths.state / "central"
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    templates = data_dir("mosquitto")
    acl = directory / "acl.conf"
    users = list(dict.fromkeys([*consoles, *([DEV_USER] if dev_port else [])]))
    acl.write_text(
        Template((templates / "central-acl.conf").read_text()).substitute(
            console_users="\n".join(_console_block(cn) for cn in users)
        )
    )
    os.chmod(acl, 0o600)
    passwd: Path | None = None
    dev_listener = "# no development listener"
    if dev_port:
        passwd = directory / "passwd"
        write_password_file(passwd, {DEV_USER: secret_for(settings, DEV_USER)})
        dev_listener = (
            f"# DEVELOPMENT ONLY (`--dev-listener`): plain MQTT on loopback, password login {DEV_USER}\n"
            f"listener {dev_port} 127.0.0.1\nprotocol mqtt"
        )
    broker = settings.broker
    conf = directory / "mosquitto.conf"
    conf.write_text(
        Template((templates / "central.conf").read_text()).substitute(
            user=getpass.getuser(),
            host=host,
            port=port,
            ca=tls.ca.absolute(),
            cert=tls.cert.absolute(),
            key=tls.key.absolute(),
            crl=crl.absolute(),
            dev_listener=dev_listener,
            password_file_line=f"password_file {passwd}" if passwd else "# no password logins",
            acl=acl,
            data_dir=data,
            **persistence_and_limits(broker, central=True),
        )
    )
    return BrokerFiles(directory=directory, conf=conf, data_dir=data, passwd=passwd, acl=acl)
