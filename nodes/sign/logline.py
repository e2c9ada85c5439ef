"""LogLines: build, canonicalise, sign, hash, check, and recover the chain head (pure functions).

The canonical form is the public contract of ARCHITECTURE.md: the LogLine without
`signature_details` as `json.dumps(sort_keys, compact, ensure_ascii=False)` in UTF-8, no NaN. The
same form of the *whole* object (signature included) is what the next LogLine's `prev` hashes, so
changing any byte of a LogLine, its signature included, breaks the link to its successor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.envelope import utc_now, uuid7
from bus.fsutil import atomic_write_bytes, sha256_bytes
from bus.schemas import SchemaError, validate
from nodes.sign.keys import Signer, Verifier

LOGLINE_VERSION = 1
SCHEMA = "logline"
GENESIS_PREV = "0" * 64  # `prev` of seq 1
SUFFIX = ".logline.json"
SIGNATURE_FIELD = "signature_details"
_SUMMARY_MEMBER = b',"summary":'
VIDEO_FIELDS = ("id", "path", "sha256", "bytes", "duration_s", "fps", "frames", "width", "height")
ARTIFACT_FIELDS = ("path", "sha256")
SUMMARY_FIELDS = ("path", "sha256", "text", "counts")


class LogLineError(ValueError):
    """A LogLine cannot be signed or the chain head cannot be recovered; the message says why."""


def _pick(source: Mapping[str, Any], fields: tuple[str, ...], base_dir: Path | None) -> dict[str, Any]:
    picked = {name: source[name] for name in fields if name in source}
    if base_dir is not None and "path" in picked:
        picked["path"] = _relative_to(str(picked["path"]), base_dir)
    return picked


def _relative_to(path: str, base_dir: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(base_dir.resolve()))
    except ValueError:
        return path


def build_logline(
    *,
    device: str,
    seq: int,
    prev: str,
    video: Mapping[str, Any],
    analytic: Mapping[str, Any],
    summary: Mapping[str, Any],
    created_at: str | None = None,
    logline_id: str | None = None,
    base_dir: Path | None = None,
) -> dict[str, Any]:
    """The unsigned LogLine. Only the contract's fields are taken from `video`/`analytic`/`summary`.

    With `base_dir` (the directory the LogLine will be written to), artifact paths under it are stored
    relative to it, so a storage tree stays verifiable after it is copied elsewhere.
    """
    return {
        "logline_version": LOGLINE_VERSION,
        "id": logline_id or uuid7(),
        "device": device,
        "seq": seq,
        "prev": prev,
        "created_at": created_at or utc_now(),
        "video": _pick(video, VIDEO_FIELDS, base_dir),
        "analytic": _pick(analytic, ARTIFACT_FIELDS, base_dir),
        "summary": _pick(summary, SUMMARY_FIELDS, base_dir),
    }


# bus.fsutil.canonical_json's form, with the encoder built once: verification serialises every LogLine.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_bytes(logline: Mapping[str, Any]) -> bytes:
    """The signed bytes: the LogLine without `signature_details` (raises ValueError on NaN)."""
    return _CANONICAL.encode(
        {key: value for key, value in logline.items() if key != SIGNATURE_FIELD}
    ).encode()


def whole_canonical_bytes(logline: Mapping[str, Any]) -> bytes:
    """The canonical form of the whole LogLine, signature included (what `write_logline` writes)."""
    return _CANONICAL.encode(logline).encode()


def logline_hash(logline: Mapping[str, Any]) -> str:
    """Hex sha256 of the canonical form of the whole LogLine, signature included: the next `prev`."""
    return sha256_bytes(whole_canonical_bytes(logline))


def sign_logline(logline: Mapping[str, Any], signer: Signer) -> dict[str, Any]:
    """A signed copy of `logline`; raises LogLineError (and signs nothing) if it breaks the schema."""
    try:
        data = canonical_bytes(logline)
    except ValueError as exc:
        raise LogLineError(f"LogLine is not canonical JSON: {exc}") from None
    details = {"alg": signer.alg, "key_id": signer.key_id, "signature": signer.sign(data)}
    signed = {**logline, SIGNATURE_FIELD: details}
    reason = schema_error(signed)
    if reason is not None:
        raise LogLineError(f"LogLine does not match its schema: {reason}")
    return signed


def check_signature(details: Mapping[str, Any], data: bytes, keys: Mapping[str, Verifier]) -> str | None:
    """Why the signature in `details` over `data` is not acceptable, or None if it is."""
    key_id = details.get("key_id")
    verifier = keys.get(key_id) if isinstance(key_id, str) else None
    if verifier is None:
        return f"unknown key id {key_id!r} (not in the keys given to verify)"
    alg = details.get("alg")
    if alg != verifier.alg:
        return f"alg {alg!r} does not match key {key_id}, which is {verifier.alg}"
    encoded = str(details.get("signature"))
    try:
        signature = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        return "signature is not base64"
    if base64.b64encode(signature).decode() != encoded:  # spare bits set: same bytes, another hash
        return "signature is not in canonical base64"
    if not verifier.verify(data, signature):
        return f"signature does not verify with key {key_id}: the LogLine was changed after signing"
    return None


def verify_signature(logline: Mapping[str, Any], keys: Mapping[str, Verifier]) -> str | None:
    """None if `logline` is signed by one of `keys`, else the reason it is not."""
    details = logline.get(SIGNATURE_FIELD)
    if not isinstance(details, Mapping):
        return f"no {SIGNATURE_FIELD}"
    try:
        data = canonical_bytes(logline)
    except ValueError as exc:
        return f"not canonical JSON: {exc}"
    return check_signature(details, data, keys)


# --- schema ---------------------------------------------------------------------------------------


def schema_error(document: Any) -> str | None:
    """None if `document` matches schemas/logline.schema.json, else where and why it does not."""
    try:
        validate(SCHEMA, document)
    except SchemaError as exc:
        return str(exc).removeprefix(f"{SCHEMA}: ")
    return None


# --- files and the chain head ------------------------------------------------------------------------


def logline_path(directory: Path, video_id: str) -> Path:
    return directory / f"{video_id}{SUFFIX}"


def write_logline(directory: Path, logline: Mapping[str, Any]) -> Path:
    """Write `<video_id>.logline.json` atomically next to the video's artifacts, in canonical form.

    The file is the canonical form of the whole LogLine (one line, no trailing newline), so its
    sha256 is the LogLine's hash, the next `prev` (`sha256sum` checks a link), and `vv verify` can
    take the signed bytes straight from the file (see `signed_bytes_in`).
    """
    path = logline_path(directory, str(logline["video"]["id"]))
    atomic_write_bytes(path, whole_canonical_bytes(logline))
    return path


def signature_member(details: Mapping[str, Any]) -> bytes:
    """`,"signature_details":{...}` in canonical form. The schema's patterns leave nothing to escape
    in it, so for a schema-valid LogLine this is the exact text json.dumps would produce."""
    alg, key_id, signature = details["alg"], details["key_id"], details["signature"]
    return f',"{SIGNATURE_FIELD}":{{"alg":"{alg}","key_id":"{key_id}","signature":"{signature}"}}'.encode()


def hash_with_signature(unsigned: bytes, details: Mapping[str, Any]) -> str:
    """`logline_hash` from the canonical unsigned bytes already built (the inverse of
    `signed_bytes_in`): the signature member goes in before `,"summary":`, no second serialisation."""
    cut = unsigned.find(_SUMMARY_MEMBER)
    digest = hashlib.sha256(unsigned[:cut])
    digest.update(signature_member(details))
    digest.update(unsigned[cut:])
    return digest.hexdigest()


def signed_bytes_in(data: bytes, details: Mapping[str, Any]) -> bytes | None:
    """The signed bytes inside a file written by `write_logline`, or None if `data` is not in that form.

    In sorted order `signature_details` comes right before `summary`, a key nothing earlier can hold
    structurally (analytic is closed, strings escape their quotes), so removing that one member
    leaves the canonical bytes that were signed. A caller that checks the signature over the result
    skips re-serialising the LogLine; bytes that are not what the key signed simply fail that check.
    """
    member = signature_member(details)
    cut = data.find(member)
    if cut < 0 or not data.startswith(_SUMMARY_MEMBER, cut + len(member)):
        return None
    return data[:cut] + data[cut + len(member) :]


def iter_logline_files(root: Path) -> Iterator[str]:
    """Every `*.logline.json` under `root`, depth first in name order, not following directory links.

    Plain strings from one scandir per directory: half the cost of os.walk, which matters when
    storage holds one directory per video and verification walks thousands of them.
    """
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.path)
            elif entry.name.endswith(SUFFIX) and not entry.name.startswith("."):
                yield entry.path
        stack.extend(reversed(subdirs))


@dataclass(frozen=True)
class ChainTail:
    """The newest end of one device's chain on disk, as the sign node needs it at start."""

    seq: int  # of the newest LogLine; 0 when there is none
    hash: str  # its hash (GENESIS_PREV when there is none)
    loglines: dict[int, dict[str, Any]]  # the newest LogLine and every one above the seq asked for


def read_chain_tail(storage_root: Path, device: str, above: int | None = None) -> ChainTail:
    """The newest of `device`'s LogLines on disk, plus (by seq) every one above `above`.

    The sign node reads this at start: a LogLine written just before a crash is on disk even if its
    event never left, so its seq is never reused. Only the tail is kept in memory, whatever the
    storage holds. A LogLine that cannot be read could be the head, so it raises LogLineError
    instead of guessing, and so do two different LogLines at one seq of the tail.
    """
    newest: tuple[int, str, str, dict[str, Any] | None] = (0, GENESIS_PREV, str(storage_root), None)
    above_kept: dict[int, tuple[str, str, dict[str, Any]]] = {}
    unreadable: list[str] = []
    for path in iter_logline_files(storage_root):
        try:
            doc = json.loads(Path(path).read_bytes())
            if doc["device"] != device:
                continue
            seq, digest = int(doc["seq"]), logline_hash(doc)
        except (OSError, ValueError, KeyError, TypeError):
            unreadable.append(path)
            continue
        if seq > newest[0]:
            newest = (seq, digest, path, doc)
        elif seq == newest[0] and digest != newest[1]:
            raise LogLineError(f"two different LogLines claim seq {seq}: {newest[2]} and {path}")
        if above is not None and seq > above:
            other = above_kept.setdefault(seq, (digest, path, doc))
            if other[0] != digest:
                raise LogLineError(f"two different LogLines claim seq {seq}: {other[1]} and {path}")
    if unreadable:
        raise LogLineError(f"cannot recover the chain head, unreadable LogLines: {', '.join(unreadable)}")
    seq, digest, _, doc = newest
    loglines = {n: kept_doc for n, (_, _, kept_doc) in above_kept.items()}
    if doc is not None:
        loglines[seq] = doc
    return ChainTail(seq, digest, loglines)


def seq_range(first: int, last: int) -> str:
    """`seq 5` or `seqs 5-7`: how reasons name the LogLines of a stretch of the chain."""
    return f"seq {first}" if first == last else f"seqs {first}-{last}"
