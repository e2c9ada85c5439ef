"""A simulated device: real envelopes, real alerts, LogLines signed with a real Ed25519 key by
nodes/sign, and the registry entry `vv fleet enroll` would write for it. The console's tests drive
it by hand; `vv fleet sim` (nodes/fleet/simulation.py) drives many over their own connections."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

from bus import codec
from bus.alerts import build_alert
from bus.envelope import JSON, MSGPACK, Event, utc_now
from bus.topics import topic_for
from nodes.sign.head import signed_head
from nodes.sign.keys import Ed25519Signer
from nodes.sign.logline import GENESIS_PREV, build_logline, logline_hash, sign_logline


class SimDevice:
    def __init__(
        self, device: str, epoch: int = 1, seed: bytes | None = None, head: dict[str, Any] | None = None
    ) -> None:
        """`seed` and `head` resume a device that ran before: its signing key and its chain's last
        LogLine (the next one continues that chain, as a restarted box's sign node does)."""
        self.device, self.epoch = device, epoch
        self.seed = seed or os.urandom(32)
        self.signer = Ed25519Signer(self.seed)
        self.seqs: dict[tuple[str, str], int] = {}
        self.chain: list[dict[str, Any]] = [head] if head else []  # the LogLines signed, seq order
        self.first = int(head["seq"]) if head else 1  # the seq of chain[0]

    def signing_keys(self) -> dict[str, str]:
        """As `vv keys export` prints them: key id -> base64 of the 32-byte public key."""
        return {self.signer.key_id: base64.b64encode(self.signer.public_key).decode()}

    def registry_entry(self) -> dict[str, Any]:
        return {
            "site": "lab",
            "tags": ["test"],
            "cert_sha256": "0" * 64,
            "not_after": "2030-01-01T00:00:00Z",
            "signing_keys": self.signing_keys(),
        }

    def event(self, event_type: str, data: dict[str, Any], node: str, subject: str | None = None) -> Event:
        key = (node, event_type)
        self.seqs[key] = self.seqs.get(key, 0) + 1
        return Event(
            type=event_type,
            source=f"vv://{self.device}/{node}",
            device=self.device,
            epoch=self.epoch,
            seq=self.seqs[key],
            data=data,
            subject=subject,
            datacontenttype=JSON if event_type.startswith("alert.") else MSGPACK,
        )

    def alert(
        self, title: str, severity: str = "ERROR", status: str = "firing", node: str = "monitor"
    ) -> Event:
        doc = build_alert(
            severity=severity,  # type: ignore[arg-type]
            title=title,
            details=f"{title} on {self.device}",
            source=node,
            device=self.device,
            context={"node": node},
            status=status,  # type: ignore[arg-type]
        )
        return self.event(f"alert.{severity.lower()}", doc, node)

    def logline(
        self, seq: int | None = None, prev: str | None = None, text: str = "a person"
    ) -> dict[str, Any]:
        """The next signed LogLine of the chain (or one at `seq`/`prev` for forks and rewinds)."""
        following = self.first + len(self.chain)
        if seq is None:
            seq = following
        if prev is None:
            prev = logline_hash(self.chain[seq - 1 - self.first]) if seq > 1 else GENESIS_PREV
        video_id = hashlib.sha256(f"{self.device}{seq}{text}{os.urandom(4).hex()}".encode()).hexdigest()[:32]
        line = build_logline(
            device=self.device,
            seq=seq,
            prev=prev,
            video={"id": video_id, "path": "v.mp4", "sha256": "9" * 64, "bytes": 1000, "duration_s": 10.0},
            analytic={"path": "analytic.json", "sha256": "a" * 64},
            summary={"path": "summary.json", "sha256": "b" * 64, "text": text, "counts": {"person": 1}},
        )
        signed = sign_logline(line, self.signer)
        if seq == following:
            self.chain.append(signed)
        return signed

    def logline_event(self, line: dict[str, Any]) -> Event:
        data = {
            "logline": {"path": f"{line['video']['id']}.logline.json", "sha256": logline_hash(line)},
            "seq": line["seq"],
            "prev": line["prev"],
            "hash": logline_hash(line),
            "key_id": line["signature_details"]["key_id"],
            "video_id": line["video"]["id"],
            "line": line,
        }
        return self.event("logline.signed", data, "sign", subject=line["video"]["id"])

    def health(
        self, node: str, interval_s: float = 0.5, status: str = "online", **details: Any
    ) -> dict[str, Any]:
        return {
            "node": node,
            "device": self.device,
            "status": status,
            "time": utc_now(),
            "version": "0.9.0",
            "details": {"health_interval_s": interval_s, "epoch": self.epoch, **details},
        }

    def sign_health(self, upto: int) -> dict[str, Any]:
        """The sign node's health, naming LogLine `upto` as its signed chain head."""
        return self.health("sign", chain_head=signed_head(self.chain[upto - self.first], self.signer))


def wire(event: Event) -> tuple[str, bytes]:
    """The topic and payload of an event as a device publishes it."""
    return topic_for(event.device, event.type), codec.encode(event.to_dict(), event.datacontenttype)
