"""The sign node: summary.done in; one signed, chained LogLine per video out as logline.signed.

It never signs a video twice (the LogLine file beside the artifacts is the record) and never reuses
a `seq`: the chain head is recovered from the LogLines on disk at start, so a crash between writing
a LogLine and publishing it costs a re-announcement, not a fork of the chain.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from bus.envelope import Event
from bus.fsutil import sha256_bytes
from bus.node import Node, on
from nodes.sign.keys import KeyStore, KeyStoreError
from nodes.sign.logline import (
    LogLineError,
    build_logline,
    logline_hash,
    logline_path,
    recover_chain_head,
    sign_logline,
    write_logline,
)

log = logging.getLogger("vv.sign")


class Sign(Node):
    name = "sign"
    produces = ("logline.signed",)

    async def setup(self) -> None:
        self.keys = KeyStore(self.paths.keys)
        self.head: tuple[int, str] | None = None
        try:
            self.head = recover_chain_head(self.paths.storage, self.device)
        except LogLineError as exc:
            await self._refuse(
                "Chain head cannot be recovered",
                str(exc),
                "Run `vv verify` on the storage tree and repair or move the unreadable LogLine",
            )

    def health_details(self) -> dict[str, Any]:
        if getattr(self, "head", None) is None:
            return {"chain_head": None}
        seq, digest = self.head  # type: ignore[misc]
        return {"chain_head": {"seq": seq, "hash": digest}}

    async def _refuse(self, title: str, details: str, action: str, video: str | None = None) -> None:
        """A signing failure: CRITICAL, nothing signed; the reconciler re-announces the video later."""
        self.set_status("degraded", f"{title}: {details}")
        await self.raise_alert(
            "CRITICAL",
            title,
            details,
            context={"node": self.name, **({"video": video} if video else {})},
            actions=[action, "Videos waiting meanwhile are re-announced by the reconciler; nothing is lost"],
        )

    @on("summary.done")
    async def sign(self, event: Event) -> None:
        video = event.data["video"]
        directory = Path(event.data["summary"]["path"]).parent
        existing = logline_path(directory, video["id"])
        if existing.exists():
            # Signed before (a redelivery, or a crash after the write): announce it again, same seq.
            await self._announce(json.loads(existing.read_bytes()), existing, event)
            return
        if self.head is None:
            self.head = recover_chain_head(self.paths.storage, self.device)
        try:
            signer = self.keys.signer(self.settings.sign.key_id or None, alg=self.settings.sign.alg)
            seq, prev = self.head[0] + 1, self.head[1]
            logline = build_logline(
                device=self.device,
                seq=seq,
                prev=prev,
                video=video,
                analytic=event.data["analytic"],
                summary={**event.data["summary"], "text": event.data["text"], "counts": event.data["counts"]},
                base_dir=directory,
            )
            signed = sign_logline(logline, signer)
        except (KeyStoreError, LogLineError) as exc:
            await self._refuse(
                "Signing failed", str(exc), "Check `vv keys list` and sign.key_id / sign.alg", video["id"]
            )
            return
        path = write_logline(directory, signed)
        self.head = (seq, logline_hash(signed))
        if self.settings.sign.failpoint == "after-write":  # tests: a crash between write and publish
            os._exit(137)
        if self._status == "degraded":
            self.set_status("online")
        await self._announce(signed, path, event)

    async def _announce(self, logline: dict[str, Any], path: Path, cause: Event) -> None:
        data = path.read_bytes()
        await self.emit(
            "logline.signed",
            {
                "logline": {"path": str(path), "sha256": sha256_bytes(data)},
                "seq": logline["seq"],
                "prev": logline["prev"],
                "hash": logline_hash(logline),
                "key_id": logline["signature_details"]["key_id"],
                "video_id": logline["video"]["id"],
            },
            subject=logline["video"]["id"],
            cause=cause,
        )
        log.info(
            "signed %s as seq %d",
            logline["video"]["id"],
            logline["seq"],
            extra={"video": logline["video"]["id"]},
        )
