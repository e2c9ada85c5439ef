"""The sign node: summary.done in; one signed, chained LogLine per video out as logline.signed.

It never signs a video twice (the LogLine file beside the artifacts is the record) and never reuses
a `seq`: after each LogLine it anchors the chain head in a signed state file (and its retained
health), and at start it reconciles that anchor with the LogLines on disk (nodes/sign/head.py). A
crash between writing a LogLine and publishing it costs a re-announcement, not a fork of the chain;
removed newest LogLines raise CRITICAL and their seqs stay unused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bus.envelope import Event, utc_now
from bus.fsutil import sha256_bytes
from bus.node import Node, RefusedClaim, on
from nodes.common.claims import check_analytic, check_summary, check_video
from nodes.sign.head import (
    ChainHead,
    HeadError,
    genesis_head,
    head_path,
    read_head,
    reconcile,
    signed_head,
    write_head,
)
from nodes.sign.keys import Ed25519Signer, HmacSigner, KeyStore, KeyStoreError
from nodes.sign.logline import (
    LogLineError,
    build_logline,
    logline_hash,
    logline_path,
    read_chain_tail,
    sign_logline,
    write_logline,
)
from nodes.sign.settings import SignSettings

log = logging.getLogger("vv.sign")


class SignNode(Node):
    name = "sign"
    produces = ("logline.signed",)

    async def setup(self) -> None:
        self.keys = KeyStore(self.paths.keys)
        self.head: tuple[int, str] | None = None
        self.anchor: Mapping[str, Any] | None = None  # the signed head document, also in the health
        try:
            await self._recover_head()
        except (LogLineError, KeyStoreError) as exc:
            await self._refuse(
                "Chain head cannot be recovered",
                str(exc),
                "Run `vv verify` on the storage tree and repair or move the unreadable LogLine",
            )

    async def _recover_head(self) -> tuple[int, str]:
        """Continue from the anchored head reconciled with the LogLines on disk (rules: `reconcile`)."""
        path, keys = head_path(self.paths.state), self.keys.verifiers()
        anchored: ChainHead | HeadError | None
        try:
            anchored = read_head(path, keys, self.device)
        except FileNotFoundError:
            anchored = None
        except HeadError as exc:
            anchored = exc
            path.rename(path.with_name(f"{path.name}.refused-{utc_now()}"))  # evidence, not overwritten
        above = anchored.seq if isinstance(anchored, ChainHead) else None
        outcome = reconcile(anchored, read_chain_tail(self.paths.storage, self.device, above), keys)
        self.head = (outcome.seq, outcome.hash)
        self.anchor = anchored.document if isinstance(anchored, ChainHead) else None
        for title, details in outcome.problems:
            await self.raise_alert(
                "CRITICAL",
                title,
                details,
                context={"node": self.name, "seq": outcome.seq, "head_file": str(path)},
                actions=[
                    "Run `vv verify` on the storage tree: it names what is missing or refused",
                    "Compare the chain with the console's or a backup's, and restore what is missing",
                    "Check who had write access to VV_HOME (storage and state)",
                ],
            )
        if outcome.anchor is not None:
            self._record(signed_head(outcome.anchor, self._signer()))
        return self.head

    def _signer(self) -> Ed25519Signer | HmacSigner:
        return self.keys.signer(
            self.settings.section(SignSettings).key_id or None, alg=self.settings.section(SignSettings).alg
        )

    def _record(self, document: Mapping[str, Any]) -> None:
        """The signed head document: in the state file, then in the health."""
        write_head(head_path(self.paths.state), document)
        self.anchor = document

    def health_details(self) -> dict[str, Any]:
        anchor: Mapping[str, Any] | None = getattr(self, "anchor", None)  # None before setup
        return {"chain_head": dict(anchor) if anchor else None}

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
        storage = self.paths.storage
        video = await asyncio.to_thread(check_video, storage, event.data["video"])
        analytic_ref, summary_ref = event.data["analytic"], event.data["summary"]
        analytic = check_analytic(storage, video, analytic_ref)
        summary = check_summary(storage, video, analytic_ref, summary_ref)
        if (event.data["text"], event.data["counts"]) != (summary["text"], summary["counts"]):
            raise RefusedClaim(
                f"summary.done of video {video.id}: text or counts differ from {summary_ref['path']}"
            )
        existing = logline_path(video.directory, video.id)
        if existing.exists():
            # Signed before (a redelivery, or a crash after the write): announce it again, same seq.
            await self._announce(json.loads(existing.read_bytes()), existing, event)
            return
        directory = video.directory
        head = self.head or await self._recover_head()
        try:
            signer = self._signer()
            seq, prev = head[0] + 1, head[1]
            logline = build_logline(
                device=self.device,
                seq=seq,
                prev=prev,
                # What the files say, never the event: checked identity, decoded figures.
                video={
                    **analytic["video"],
                    "id": video.id,
                    "path": str(video.path),
                    "sha256": video.sha256,
                    "bytes": video.bytes,
                },
                analytic=analytic_ref,
                summary={**summary_ref, "text": summary["text"], "counts": summary["counts"]},
                base_dir=directory,
            )
            signed = sign_logline(logline, signer)
        except (KeyStoreError, LogLineError) as exc:
            await self._refuse(
                "Signing failed", str(exc), "Check `vv keys list` and sign.key_id / sign.alg", video.id
            )
            return
        if self.anchor is None and seq == 1:  # see genesis_head
            self._record(genesis_head(self.device, signer))
        path = write_logline(directory, signed)
        self.head = (seq, logline_hash(signed))
        if (
            self.settings.section(SignSettings).failpoint == "after-write"
        ):  # tests: a crash before the head and publish
            os._exit(137)
        self._record(signed_head(signed, signer))
        if self.status == "degraded":
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
                "line": logline,  # for the fleet console's witness: it has no access to our files
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
