"""The signing key store (`VV_HOME/keys`) and the signers/verifiers built from its keys.

Every key file holds a 32-byte seed, whatever the algorithm ("seed-compatible"): for `ed25519` it
is the pynacl signing seed, for `hmac-sha256` the shared secret. Key ids are derived, never chosen:
- ed25519: first 16 hex digits of sha256(32-byte public key);
- hmac-sha256: first 16 hex digits of sha256(sha256(secret)), so the id reveals nothing of the secret.
Several keys may be known (old LogLines stay verifiable after a rotation); one is active and signs:
`sign.key_id` when set, else the one named by the `active` file that `generate` writes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, get_args

import nacl.exceptions
import nacl.signing

from bus.envelope import utc_now
from bus.fsutil import atomic_write_bytes

Alg = Literal["ed25519", "hmac-sha256"]
ALGS: tuple[Alg, ...] = get_args(Alg)
SEED_BYTES = 32
KEY_SUFFIX = ".key"
ACTIVE_FILE = "active"


class KeyStoreError(Exception):
    """A key is missing, unreadable, malformed or open to others; the message says which and the fix."""


class Signer(Protocol):
    """Signs bytes with one key; used for LogLines and for export manifests alike."""

    @property
    def alg(self) -> Alg: ...

    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> str:
        """Base64 of the signature of `data`."""
        ...


class Verifier(Protocol):
    """Checks signatures of one key: an Ed25519 public key, or an HMAC secret held locally."""

    @property
    def alg(self) -> Alg: ...

    @property
    def key_id(self) -> str: ...

    def verify(self, data: bytes, signature: bytes) -> bool: ...


def ed25519_key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


def hmac_key_id(secret: bytes) -> str:
    return hashlib.sha256(hashlib.sha256(secret).digest()).hexdigest()[:16]


class Ed25519Signer:
    alg: Alg = "ed25519"

    def __init__(self, seed: bytes) -> None:
        self._key = nacl.signing.SigningKey(seed)
        self.public_key = bytes(self._key.verify_key)
        self.key_id = ed25519_key_id(self.public_key)

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self._key.sign(data).signature).decode("ascii")


class HmacSigner:
    """HMAC-SHA256 with a shared secret: signs and verifies, so it is never exported."""

    alg: Alg = "hmac-sha256"

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self.key_id = hmac_key_id(secret)

    def sign(self, data: bytes) -> str:
        return base64.b64encode(hmac.digest(self._secret, data, "sha256")).decode("ascii")

    def verify(self, data: bytes, signature: bytes) -> bool:
        return hmac.compare_digest(hmac.digest(self._secret, data, "sha256"), signature)


class Ed25519Verifier:
    """Verifies with a public key only: what an offline auditor holds."""

    alg: Alg = "ed25519"

    def __init__(self, public_key: bytes) -> None:
        if len(public_key) != SEED_BYTES:
            raise KeyStoreError(f"an Ed25519 public key has {SEED_BYTES} bytes, not {len(public_key)}")
        self._key = nacl.signing.VerifyKey(public_key)
        self.key_id = ed25519_key_id(public_key)

    def verify(self, data: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(data, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
            return False
        return True


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    alg: Alg
    path: Path
    created_at: str
    active: bool
    public_key: str | None  # base64; None for hmac-sha256, whose key is secret

    def to_dict(self) -> dict[str, str | bool | None]:
        return {
            "key_id": self.key_id,
            "alg": self.alg,
            "path": str(self.path),
            "created_at": self.created_at,
            "active": self.active,
            "public_key": self.public_key,
        }


def _signer_for(alg: Alg, seed: bytes) -> Ed25519Signer | HmacSigner:
    return Ed25519Signer(seed) if alg == "ed25519" else HmacSigner(seed)


@dataclass(frozen=True)
class _KeyFile:
    path: Path
    created_at: str
    signer: Ed25519Signer | HmacSigner


def _read_key_file(path: Path) -> _KeyFile:
    """Parse `<key_id>.key`; the name must be the id the seed derives, so files cannot be mixed up."""
    try:
        doc = json.loads(path.read_bytes())
        alg, created_at = doc["alg"], str(doc.get("created_at", ""))
        seed = base64.b64decode(doc["seed"], validate=True)
    except OSError as exc:
        raise KeyStoreError(f"key file {path} is unreadable: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise KeyStoreError(f"key file {path} is not a vv key file (JSON with alg and base64 seed)") from None
    if alg not in ALGS or len(seed) != SEED_BYTES:
        raise KeyStoreError(f"key file {path}: alg must be one of {', '.join(ALGS)}, seed {SEED_BYTES} bytes")
    signer = _signer_for(alg, seed)
    if path.name != f"{signer.key_id}{KEY_SUFFIX}":
        raise KeyStoreError(f"key file {path} holds key {signer.key_id}: rename it to {signer.key_id}.key")
    return _KeyFile(path, created_at, signer)


def _check_private(path: Path, allowed: int) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & ~allowed & 0o077:
        raise KeyStoreError(f"{path} has mode {mode:04o}, open to others: run `chmod {allowed:o} {path}`")


class KeyStore:
    """Keys in one directory (0700), one `<key_id>.key` file (0600) each, plus the `active` pointer."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def generate(self, alg: Alg = "ed25519", *, activate: bool = True) -> KeyInfo:
        """Create a fresh random key; by default it becomes the active (signing) key."""
        if alg not in ALGS:
            raise KeyStoreError(f"unknown alg {alg!r}: use one of {', '.join(ALGS)}")
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        seed = os.urandom(SEED_BYTES)
        key_id = _signer_for(alg, seed).key_id
        doc = {"alg": alg, "seed": base64.b64encode(seed).decode("ascii"), "created_at": utc_now()}
        atomic_write_bytes(self._path(key_id), json.dumps(doc, indent=2).encode() + b"\n", mode=0o600)
        if activate:
            atomic_write_bytes(self.directory / ACTIVE_FILE, key_id.encode() + b"\n", mode=0o600)
        return self._info(_read_key_file(self._path(key_id)), self.active_key_id())

    def _keys(self) -> list[_KeyFile]:
        if not self.directory.is_dir():
            return []
        keys = [_read_key_file(path) for path in self.directory.glob(f"*{KEY_SUFFIX}")]
        return sorted(keys, key=lambda key: (key.created_at, key.signer.key_id))

    def list(self) -> list[KeyInfo]:
        """Every key in the store, oldest first; a broken key file raises rather than being skipped."""
        active = self.active_key_id()
        return [self._info(key, active) for key in self._keys()]

    def active_key_id(self) -> str | None:
        pointer = self.directory / ACTIVE_FILE
        try:
            return pointer.read_text().strip() or None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyStoreError(f"{pointer} is unreadable: {exc.strerror or exc}") from None

    def signer(self, key_id: str | None = None, *, alg: Alg | None = None) -> Ed25519Signer | HmacSigner:
        """The signer for `key_id` (default: the active key), refusing key files others can read."""
        key_id = key_id or self.active_key_id()
        if not key_id:
            raise KeyStoreError(f"no active signing key in {self.directory}: run `vv keys generate`")
        path = self._path(key_id)
        if not path.exists():
            raise KeyStoreError(f"signing key {key_id} not found in {self.directory} (see `vv keys list`)")
        _check_private(self.directory, 0o700)
        _check_private(path, 0o600)
        signer = _read_key_file(path).signer
        if alg is not None and signer.alg != alg:
            raise KeyStoreError(f"signing key {key_id} is {signer.alg}, but sign.alg asks for {alg}")
        return signer

    def public_keys(self) -> dict[str, str]:
        """`{key_id: base64 public key}` of the Ed25519 keys: what `vv keys export` publishes."""
        return {info.key_id: info.public_key for info in self.list() if info.public_key is not None}

    def verifiers(self) -> dict[str, Verifier]:
        """Every key of the store as a verifier, HMAC secrets included (local verification only)."""
        found: dict[str, Verifier] = {}
        for key in self._keys():
            signer = key.signer
            found[signer.key_id] = (
                Ed25519Verifier(signer.public_key) if isinstance(signer, Ed25519Signer) else signer
            )
        return found

    def _path(self, key_id: str) -> Path:
        if len(key_id) != 16 or key_id.strip("0123456789abcdef"):
            raise KeyStoreError(f"bad key id {key_id!r}: expected 16 hex digits")
        return self.directory / f"{key_id}{KEY_SUFFIX}"

    @staticmethod
    def _info(key: _KeyFile, active: str | None) -> KeyInfo:
        signer = key.signer
        public = signer.public_key if isinstance(signer, Ed25519Signer) else None
        return KeyInfo(
            key_id=signer.key_id,
            alg=signer.alg,
            path=key.path,
            created_at=key.created_at,
            active=signer.key_id == active,
            public_key=base64.b64encode(public).decode("ascii") if public is not None else None,
        )


def verifiers_from_public_keys(public_keys: Mapping[str, str], origin: str) -> dict[str, Verifier]:
    """Turn `vv keys export` JSON into verifiers, checking each id matches its key."""
    found: dict[str, Verifier] = {}
    for key_id, encoded in public_keys.items():
        try:
            verifier = Ed25519Verifier(base64.b64decode(encoded, validate=True))
        except (binascii.Error, KeyStoreError):
            raise KeyStoreError(f"{origin}: {key_id!r} is not a base64 32-byte Ed25519 public key") from None
        if verifier.key_id != key_id:
            raise KeyStoreError(f"{origin}: key id {key_id!r} does not match its key ({verifier.key_id})")
        found[key_id] = verifier
    return found


def _load_export_file(path: Path) -> dict[str, Verifier]:
    try:
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise KeyStoreError(f"{path}: unreadable: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise KeyStoreError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise KeyStoreError(f'{path}: expected the JSON of `vv keys export`: {{"<key_id>": "<base64 key>"}}')
    return verifiers_from_public_keys(doc, str(path))


def load_public_keys(path: Path) -> dict[str, Verifier]:
    """Keys for `vv verify --keys`: an export JSON file, or a directory of them (a key store works too)."""
    if path.is_file():
        return _load_export_file(path)
    if not path.is_dir():
        raise KeyStoreError(f"{path}: no such key file or directory")
    found: dict[str, Verifier] = {}
    for export in sorted(path.glob("*.json")):
        found.update(_load_export_file(export))
    found.update(KeyStore(path).verifiers())
    if not found:
        raise KeyStoreError(f"{path}: no exported public keys (*.json) nor key files (*{KEY_SUFFIX})")
    return found
