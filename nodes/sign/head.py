"""The anchored chain head: the sign node's signed record of its newest LogLine (pure functions).

LogLines chain backwards only, so the files alone cannot show that the newest ones were removed: a
chain cut at seq 9 looks like a chain that ends at 9. The sign node therefore writes, after each
LogLine, a small signed state file naming the head (device, seq, hash, key id, time) and publishes
the same document in its retained health. `vv verify` compares a chain with it, and the sign node
reconciles it with the files at start (`reconcile`) so that it never reuses a seq.

The document is signed like a LogLine (same key, the canonical form without `signature_details`);
its fields differ from a LogLine's, so neither signature can pass for the other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.envelope import utc_now
from bus.fsutil import atomic_write_bytes
from bus.schemas import SchemaError, validate
from nodes.sign.keys import Signer, Verifier
from nodes.sign.logline import (
    GENESIS_PREV,
    SIGNATURE_FIELD,
    ChainTail,
    canonical_bytes,
    check_signature,
    logline_hash,
    seq_range,
    verify_signature,
    whole_canonical_bytes,
)

HEAD_VERSION = 1
SCHEMA = "chain-head"
HEAD_FILE = Path("nodes") / "sign" / "chain-head.json"  # under VV_HOME/state, beside the node's state
_GIVEN = re.compile(r"^(?:(?P<device>[^/+#:]+):)?(?P<seq>[0-9]+):(?P<hash>[0-9a-f]{64})$")

Problem = tuple[str, str]  # (alert title, details): each one is raised as alert.critical


class HeadError(ValueError):
    """A head document or value cannot be used; the message says why."""


@dataclass(frozen=True)
class ChainHead:
    """What a chain must reach: its newest LogLine's seq and hash (device None: whichever chain;
    seq 0: a chain that has no LogLine yet)."""

    device: str | None
    seq: int
    hash: str
    document: Mapping[str, Any] | None = field(default=None, compare=False)  # the signed one, if any

    def describe(self) -> str:
        return f"seq {self.seq} (hash {self.hash})"


def head_path(state: Path) -> Path:
    """The head file of the device whose state directory is `state` (VV_HOME/state)."""
    return state / HEAD_FILE


def signed_head(logline: Mapping[str, Any], signer: Signer) -> dict[str, Any]:
    """The signed head document naming `logline` (already signed) as the newest of its chain."""
    return _signed(
        {
            "device": logline["device"],
            "seq": logline["seq"],
            "hash": logline_hash(logline),
            "key_id": logline[SIGNATURE_FIELD]["key_id"],
            "time": logline["created_at"],
        },
        signer,
    )


def genesis_head(device: str, signer: Signer) -> dict[str, Any]:
    """The signed head of a chain with no LogLine yet (seq 0), anchored before seq 1 is written, so
    that a crash right after writing seq 1 reads as "disk ahead", not as a deleted head file."""
    return _signed(
        {"device": device, "seq": 0, "hash": GENESIS_PREV, "key_id": signer.key_id, "time": utc_now()}, signer
    )


def _signed(head: dict[str, Any], signer: Signer) -> dict[str, Any]:
    head = {"chain_head_version": HEAD_VERSION, **head}
    details = {"alg": signer.alg, "key_id": signer.key_id, "signature": signer.sign(canonical_bytes(head))}
    return {**head, SIGNATURE_FIELD: details}


def write_head(path: Path, document: Mapping[str, Any]) -> None:
    """Replace the head file atomically (a crash leaves the old head or the new, never a part)."""
    atomic_write_bytes(path, whole_canonical_bytes(document) + b"\n")


def check_head(document: Any, keys: Mapping[str, Verifier], device: str | None = None) -> ChainHead:
    """The head a document names, once its schema, signature and (if given) device are checked."""
    try:
        validate(SCHEMA, document)
    except SchemaError as exc:
        raise HeadError(f"not a chain head document: {str(exc).removeprefix(f'{SCHEMA}: ')}") from None
    reason = check_signature(document[SIGNATURE_FIELD], canonical_bytes(document), keys)
    if reason is not None:
        raise HeadError(reason.replace("the LogLine was changed", "the head was changed"))
    if device is not None and document["device"] != device:
        raise HeadError(f"it is the head of device {document['device']!r}, not of {device!r}")
    return ChainHead(document["device"], document["seq"], document["hash"], document)


def read_head(path: Path, keys: Mapping[str, Verifier], device: str | None = None) -> ChainHead:
    """`check_head` of a head file; FileNotFoundError when there is none (a missing anchor)."""
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise HeadError(f"unreadable: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise HeadError(f"not JSON: {exc}") from None
    return check_head(document, keys, device)


def parse_head(text: str) -> ChainHead:
    """An auditor's `[DEVICE:]SEQ:HASH` (e.g. from the console or a printed report)."""
    match = _GIVEN.match(text.strip())
    if match is None or int(match["seq"]) < 1:
        raise HeadError(f"{text!r} is not [DEVICE:]SEQ:HASH (seq >= 1, hash 64 lowercase hex digits)")
    return ChainHead(match["device"], int(match["seq"]), match["hash"])


@dataclass(frozen=True)
class Reconciled:
    """Where the chain continues after a start, and what is wrong with what was found."""

    seq: int
    hash: str
    anchor: Mapping[str, Any] | None  # the LogLine to anchor now (the head file is behind or absent)
    problems: tuple[Problem, ...]


def reconcile(
    anchored: ChainHead | HeadError | None, tail: ChainTail, keys: Mapping[str, Verifier]
) -> Reconciled:
    """Decide the head the sign node continues from, given its anchor and the LogLines on disk.

    - no head file and no LogLine: a new device, from genesis;
    - the anchor equals the newest LogLine on disk: nothing to say;
    - LogLines above the anchor (a crash between a LogLine and its head write): adopted one by one
      while each verifies with `keys` and links to the one before; any other is refused (CRITICAL)
      and the chain continues from the last adopted;
    - the newest LogLine(s) below the anchor are gone (or the one at its seq differs): CRITICAL
      naming them, and the chain continues from the anchor, so no seq is ever issued twice;
    - the head file missing while LogLines exist, or refused (bad signature, other device): CRITICAL,
      and the chain continues from the disk head, the only evidence left; it is anchored anew. A
      cut-off made together with this cannot be seen on the device: the off-device witnesses (the
      retained health and the console) are what shows it.
    """
    if not isinstance(anchored, ChainHead):
        return _unanchored(anchored, tail, keys)
    seq, digest, adopted = anchored.seq, anchored.hash, None
    while (successor := tail.loglines.get(seq + 1)) is not None and not _refusal(successor, digest, keys):
        seq, digest, adopted = seq + 1, logline_hash(successor), successor
    continued = f"the chain continues from seq {seq} (hash {digest}), so no seq is reused"
    if tail.seq > seq:
        successor = tail.loglines.get(seq + 1)
        why = _refusal(successor, digest, keys) if successor is not None else "is missing"
        problem = (
            "LogLines beyond the chain head refused",
            f"{seq_range(seq + 1, tail.seq)} on disk do not continue the chain from seq {seq} "
            f"(seq {seq + 1} {why}); they are not adopted and {continued}",
        )
    elif tail.seq < anchored.seq:
        problem = (
            "Chain cut off",
            f"{seq_range(tail.seq + 1, anchored.seq)} missing from storage: the anchored head is "
            f"{anchored.describe()}, the newest LogLine on disk is seq {tail.seq}; {continued}",
        )
    elif adopted is None and tail.hash != anchored.hash:
        problem = (
            "Chain head replaced",
            f"the LogLine at seq {seq} on disk has hash {tail.hash}, not the anchored {anchored.hash}; "
            f"{continued}",
        )
    else:
        return Reconciled(seq, digest, adopted, ())
    return Reconciled(seq, digest, adopted, (problem,))


def _unanchored(refused: HeadError | None, tail: ChainTail, keys: Mapping[str, Verifier]) -> Reconciled:
    """No usable head file: continue from the disk head (the only evidence left), anchoring it anew
    if this device's keys signed it, and say loudly that a cut-off can no longer be seen here."""
    if refused is None and not tail.seq:
        return Reconciled(0, GENESIS_PREV, None, ())  # a new device
    title, found = (
        ("Chain head anchor refused", f"the head file is refused ({refused})")
        if refused is not None
        else ("Chain head anchor missing", "the head file is missing")
    )
    newest = tail.loglines.get(tail.seq)
    reason = verify_signature(newest, keys) if newest is not None else None
    continued = (
        f"continuing from the newest LogLine on disk, seq {tail.seq} (hash {tail.hash})"
        if tail.seq
        else "no LogLine on disk: the chain starts at seq 1"
    )
    details = (
        f"{found}; {continued}"
        + (f", not anchored as it does not verify: {reason}" if reason else "")
        + "; newest LogLines removed meanwhile cannot be detected on the device: compare the chain "
        "with the sign node's last retained health or the console"
    )
    return Reconciled(tail.seq, tail.hash, newest if reason is None else None, ((title, details),))


def _refusal(logline: Mapping[str, Any], prev: str, keys: Mapping[str, Verifier]) -> str | None:
    """Why `logline` cannot follow the LogLine whose hash is `prev`, or None if it can."""
    if logline.get("prev") != prev:
        return "does not link to it: its prev differs"
    reason = verify_signature(logline, keys)
    return None if reason is None else f"does not verify: {reason}"
