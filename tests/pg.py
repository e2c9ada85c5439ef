"""A real PostgreSQL for tests: Debian's server binaries, a cluster in a temp dir on a free loopback port.

PostgreSQL refuses to run as root: as root the cluster belongs to the `postgres` system user (the
package creates it) and its commands run through `runuser`. Each test gets its own database.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

PG_BIN = Path(os.environ.get("VV_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "vv"


def missing() -> str | None:
    """Why a test PostgreSQL cannot start here, or None."""
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed (pip install 'vv-edge[postgres]')"
    if not (PG_BIN / "postgres").exists() or not (PG_BIN / "initdb").exists():
        return f"PostgreSQL server binaries not found in {PG_BIN} (Debian: apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run PostgreSQL as"
    return None


class PgServer:
    """One throwaway cluster: `start`, `database()` per test, `stop` removes it all."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="vv-pg-"))
        self.data = self.root / "data"
        self._user = "postgres" if os.geteuid() == 0 else None
        self._databases = 0
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def _run(self, *argv: str) -> None:
        command = [str(PG_BIN / argv[0]), *argv[1:]]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w", "start"
        )

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new empty database; its DSN."""
        import psycopg  # the `postgres` extra, checked by `missing()`

        self._databases += 1
        name = f"test_{self._databases}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
