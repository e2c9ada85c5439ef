"""Who may use the console's page: a users file with argon2id hashes, sessions, CSRF tokens.

The users file (`[console] users_file`, default `<console home>/users.json`, mode 0600) is a
JSON list of {"name", "role": "viewer" | "operator", "password_hash": "<argon2id string>"}, written
by `vv console users add` (Ansible's vv_central role runs `users check`, then `add` for
the users of `vv_central_console_users` whose role or password differs); the page re-reads it when it changes, so a removed user or a changed role
takes effect on the next request. Sessions live in the console's memory (a restart logs everyone
out); each has its own CSRF token, which every action must carry back (a form field or the
X-CSRF-Token header).
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.pwhash

from bus.fsutil import atomic_write_bytes

VIEWER, OPERATOR = "viewer", "operator"
ROLES = (VIEWER, OPERATOR)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 8


class UsersError(ValueError):
    """The users file or a user's entry is unusable; the message says why."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    hash: bytes

    @property
    def operator(self) -> bool:
        return self.role == OPERATOR


def hash_password(password: str) -> bytes:
    """An argon2id hash string (salt and cost included), at libsodium's interactive cost."""
    return nacl.pwhash.argon2id.str(password.encode())


@functools.cache
def _decoy() -> bytes:
    return hash_password(secrets.token_urlsafe(16))


def password_ok(user: User | None, password: str) -> bool:
    """Whether `password` is the user's; for no user a decoy hash is checked all the same, so the
    time taken does not tell which user names exist."""
    try:
        return bool(nacl.pwhash.argon2id.verify(user.hash if user else _decoy(), password.encode())) and bool(
            user
        )
    except nacl.exceptions.InvalidkeyError:
        return False


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UsersError(f"user name {name!r}: letters, digits and . _ @ - only, up to 64 characters")
    return name


def _parse(document: object, path: Path) -> dict[str, User]:
    if not isinstance(document, list):
        raise UsersError(f"{path}: not a list of users")
    parsed: dict[str, User] = {}
    for entry in document:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not isinstance(name, str):
            raise UsersError(f"{path}: a user without a name")
        digest = entry.get("password_hash")
        if entry.get("role") not in ROLES or not isinstance(digest, str):
            raise UsersError(f"{path}: user {name!r} needs a role ({' or '.join(ROLES)}) and a password_hash")
        if not digest.startswith("$argon2id$"):
            raise UsersError(f"{path}: user {name!r}: the password_hash is not an argon2id string")
        parsed[name] = User(name, entry["role"], digest.encode())
    return parsed


class Users:
    """The users file, re-read when it changes; an unreadable file keeps the last good view."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, User] = {}

    def load(self) -> dict[str, User]:
        """Every user; raises UsersError if the file is broken (for the CLI, which must not overwrite it)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            return _parse(json.loads(raw), self.path)
        except ValueError as exc:
            raise UsersError(f"{self.path}: {exc}") from None

    def get(self, name: str) -> User | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._users, self._stamp = {}, None
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            # the page logs nobody out over a half-edited file; the CLI reports it
            with contextlib.suppress(UsersError):
                self._users = self.load()
            self._stamp = stamp
        return self._users.get(name)

    def put(self, name: str, role: str, password: str) -> bool:
        """Add or replace a user; True if it replaced one. The file is written atomically, 0600."""
        check_name(name)
        if role not in ROLES:
            raise UsersError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise UsersError(f"a password needs at least {MIN_PASSWORD} characters")
        users = self.load()
        replaced = name in users
        users[name] = User(name, role, hash_password(password))
        self._write(users)
        return replaced

    def matches(self, name: str, role: str, password: str) -> bool:
        """Whether the file already holds this user with this role and password: Ansible then leaves
        the entry (and its salt) alone, so a second run changes nothing."""
        user = self.load().get(name)
        return user is not None and user.role == role and password_ok(user, password)

    def remove(self, name: str) -> bool:
        users = self.load()
        if users.pop(name, None) is None:
            return False
        self._write(users)
        return True

    def _write(self, users: dict[str, User]) -> None:
        document = [
            {"name": u.name, "role": u.role, "password_hash": u.hash.decode()}
            for u in sorted(users.values(), key=lambda u: u.name)
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
        atomic_write_bytes(self.path, data, mode=0o600)


@dataclass
class Session:
    user: str
    csrf: str
    expires: float


class Sessions:
    """Logged-in sessions by their cookie's random token; each idles out after `ttl_s`."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._sessions: dict[str, Session] = {}

    def open(self, user: str, now: float | None = None) -> tuple[str, Session]:
        now = time.time() if now is None else now
        self._sessions = {t: s for t, s in self._sessions.items() if s.expires > now}
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), now + self.ttl_s)
        self._sessions[token] = session
        return token, session

    def get(self, token: str | None, now: float | None = None) -> Session | None:
        """The live session of a cookie (its idle clock restarted), or None."""
        now = time.time() if now is None else now
        session = self._sessions.get(token or "")
        if session is None or session.expires <= now:
            return None
        session.expires = now + self.ttl_s
        return session

    def close(self, token: str | None) -> None:
        self._sessions.pop(token or "", None)


def csrf_ok(session: Session, given: str | None) -> bool:
    """The token the page was given for this session, compared in constant time."""
    return given is not None and hmac.compare_digest(session.csrf.encode(), given.encode())
