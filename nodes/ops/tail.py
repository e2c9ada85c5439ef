"""Bus traffic as one readable line per message (`vv tail`, `vv demo`): events by type and subject,
health by node and status, alerts by title."""

from __future__ import annotations

import json
from typing import Any

from bus.codec import DecodeError
from bus.config import Settings
from bus.inputs import shown
from bus.topics import subscription


def topic_filter(settings: Settings, pattern: str) -> str:
    return pattern if "/" in pattern else subscription(settings.device, pattern)


def _short(value: Any, limit: int = 100) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _gist(event_type: str, data: dict[str, Any]) -> str:
    """The one thing an operator wants to see of each pipeline event."""
    if event_type == "video.new":
        video = data["video"]
        return f"{data['original_name']}: {video['duration_s']:.1f} s, {video['bytes']} bytes"
    if event_type == "scan.done":
        return f"{data['backend']}: {_short(data['counts'], 80)}"
    if event_type == "summary.done":
        return str(data["text"])
    if event_type == "logline.signed":
        return f"seq {data['seq']}, key {data['key_id']}, hash {data['hash'][:16]}"
    if event_type == "video.quarantined":
        return f"{data['error_type']}: {data['error_message']}"
    return _short(data)


def format_line(topic: str, document: Any) -> str:
    """A readable line: events by type and subject, health by node and status, alerts by title.

    Anyone with a credential writes what is shown here: control characters come out escaped, so a
    message cannot clear or drive the operator's terminal."""
    return shown(_describe(topic, document))


def _describe(topic: str, document: Any) -> str:
    if isinstance(document, DecodeError):
        return f"{topic}  <undecodable: {document}>"
    if isinstance(document, dict) and "specversion" in document:
        data = document.get("data", {})
        stamp = str(document.get("time", ""))[11:23]
        head = f"{stamp} {document.get('device')} {document.get('type'):<18} {document.get('subject') or '-':<32}"
        if str(document.get("type", "")).startswith("alert."):
            return f"{head} [{data.get('status')}] {data.get('title')}: {data.get('message_details')}"
        try:
            return f"{head} {_gist(str(document.get('type')), data)}"
        except (KeyError, TypeError, ValueError):
            return f"{head} {_short(data)}"
    if isinstance(document, dict) and "/health/" in topic:
        stamp = str(document.get("time", ""))[11:23]
        reason = f" ({document['reason']})" if document.get("reason") else ""
        return f"{stamp} {document.get('device')} health.{document.get('node'):<11} {document.get('status')}{reason}"
    return f"{topic}  {_short(document)}"
