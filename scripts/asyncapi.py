"""Generate the AsyncAPI 3 document of the VV Edge bus from `schemas/` and the topic table.

`make asyncapi` writes docs/asyncapi.yaml (checked in); tests/test_asyncapi.py fails when the
checked-in document and what this script makes from the schemas differ, and validates the document
with the official CLI (`npx @asyncapi/cli validate`).

The message schemas are embedded as AsyncAPI (JSON Schema) schemas under components/schemas: their
`$schema` and `$id` become `x-schema-id` (the id events name in `dataschema`), and their local `$defs`
become schemas of their own, so every `$ref` resolves inside this one document.

Run: `python scripts/asyncapi.py [OUT]` (default: print to stdout).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bus.schemas import known_schemas, load_schema  # noqa: E402

JSON_TYPE = "application/json"
MSGPACK = "application/msgpack"
# schemas of files (artifacts, registries) rather than messages: not in the document
ARTIFACTS = ("analytic", "summary", "logline", "chain-head", "fleet-devices")


@dataclass(frozen=True)
class Channel:
    """One row of the topic table (ARCHITECTURE.md, Topics)."""

    key: str
    address: str  # with {parameters}
    schema: str  # the data schema (enveloped) or the whole payload's schema (not enveloped)
    content_type: str
    summary: str
    enveloped: bool = True
    retained: bool = False
    device_sends: bool = True  # a device's nodes publish it (else the console or a peer node does)
    args: str = ""  # a command's own schema for its data's `args`


NODE = {"description": "the node's name (its health and credential name, e.g. scan, scan-2)"}
PARAMETERS: dict[str, dict[str, Any]] = {
    "device": {"description": "the device id (its fleet certificate's CN)"},
    "node": NODE,
    "severity": {"enum": ["info", "warning", "error", "critical"], "description": "the alert's severity"},
    "verb": {"description": "the command's verb (e.g. pause, resume, silence, ack, resync, resend, replay)"},
}
CHANNELS = (
    Channel("videoNew", "vv/{device}/video/new", "video.new", MSGPACK, "a video was ingested"),
    Channel("scanDone", "vv/{device}/scan/done", "scan.done", MSGPACK, "detections written as an analytic"),
    Channel("summaryDone", "vv/{device}/summary/done", "summary.done", MSGPACK, "a video's summary written"),
    Channel("loglineSigned", "vv/{device}/logline/signed", "logline.signed", MSGPACK, "a LogLine signed"),
    Channel(
        "videoQuarantined",
        "vv/{device}/video/quarantined",
        "video.quarantined",
        MSGPACK,
        "a file quarantined",
    ),
    Channel("alert", "vv/{device}/alert/{severity}", "alert", JSON_TYPE, "an alert raised or resolved"),
    Channel(
        "command",
        "vv/{device}/cmd/{node}/{verb}",
        "cmd",
        JSON_TYPE,
        "a command to a node (from a peer node, an operator's tool or the fleet console); `until` in its data",
        device_sends=False,
    ),
    Channel(
        "catchupRequest",
        "vv/{device}/cmd/journal/replay",
        "cmd",
        JSON_TYPE,
        "a node asks the journal for the events it missed (cmd.journal.replay)",
        args="catchup.request",
    ),
    Channel(
        "catchupPage",
        "vv/{device}/catchup/{node}",
        "catchup.page",
        JSON_TYPE,
        "the journal's answer to one node: a page of the events it missed",
        enveloped=False,
    ),
    Channel(
        "health",
        "vv/{device}/health/{node}",
        "health",
        JSON_TYPE,
        "a node's health, retained; its last will (LWT) is the offline form",
        enveloped=False,
        retained=True,
    ),
)


def _title(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", ".").split("."))


def _rewrite_refs(node: Any, prefix: str) -> Any:
    """Point local `#/$defs/x` references at their component schema `<prefix>_x`."""
    if isinstance(node, dict):
        out = {k: _rewrite_refs(v, prefix) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            out["$ref"] = f"#/components/schemas/{prefix}_{ref.removeprefix('#/$defs/')}"
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, prefix) for v in node]
    return node


def component_schemas(name: str) -> dict[str, Any]:
    """Schema `name` (and its `$defs`) as AsyncAPI component schemas, keyed by component name."""
    schema = dict(load_schema(name))
    prefix = _title(name)
    defs = schema.pop("$defs", {})
    schema.pop("$schema", None)
    schema = {"x-schema-id": schema.pop("$id"), **schema}
    out = {prefix: _rewrite_refs(schema, prefix)}
    for key, value in defs.items():
        out[f"{prefix}_{key}"] = _rewrite_refs(value, prefix)
    return out


def _payload(channel: Channel) -> dict[str, Any]:
    data: dict[str, Any] = {"$ref": f"#/components/schemas/{_title(channel.schema)}"}
    if channel.args:
        args = {"$ref": f"#/components/schemas/{_title(channel.args)}"}
        data = {"allOf": [data, {"properties": {"args": args}}]}
    if not channel.enveloped:
        return data
    return {"allOf": [{"$ref": "#/components/schemas/Envelope"}, {"properties": {"data": data}}]}


def api_version() -> str:
    """The envelope schema's version (`urn:vv-edge:schema:envelope:<n>`) as the API's."""
    return f"{load_schema('envelope')['$id'].rsplit(':', 1)[1]}.0.0"


def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    names = ["envelope", *(c.schema for c in CHANNELS), *(c.args for c in CHANNELS if c.args)]
    for name in dict.fromkeys(names):
        schemas.update(component_schemas(name))
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for channel in CHANNELS:
        message = {
            "name": channel.key,
            "title": channel.schema,
            "summary": channel.summary,
            "contentType": channel.content_type,
            "payload": _payload(channel),
        }
        messages[channel.key] = message
        params = [p.strip("{}") for p in channel.address.split("/") if p.startswith("{")]
        channels[channel.key] = {
            "address": channel.address,
            "description": channel.summary,
            "messages": {channel.key: {"$ref": f"#/components/messages/{channel.key}"}},
            "parameters": {p: {"$ref": f"#/components/parameters/{p}"} for p in params},
        }
        ref = {"$ref": f"#/channels/{channel.key}"}
        sent_by = (
            "a device's node" if channel.device_sends else "the console, an operator's tool or a peer node"
        )
        operations[f"send{channel.key[0].upper()}{channel.key[1:]}"] = {
            "action": "send",
            "channel": ref,
            "summary": f"published by {sent_by}",
            "messages": [{"$ref": f"#/channels/{channel.key}/messages/{channel.key}"}],
            "bindings": {"mqtt": {"qos": 1, "retain": channel.retained, "bindingVersion": "0.2.0"}},
        }
        operations[f"receive{channel.key[0].upper()}{channel.key[1:]}"] = {
            "action": "receive",
            "channel": ref,
            "summary": "consumed by the nodes that subscribe to it (and, bridged, the fleet console)",
            "messages": [{"$ref": f"#/channels/{channel.key}/messages/{channel.key}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "VV Edge bus",
            "version": api_version(),
            "description": (
                "The events of a VV Edge device's MQTT bus (`vv/<device>/<event type with '.' as '/'>`), QoS 1, "
                "CloudEvents 1.0 envelopes in structured mode. Pipeline events are msgpack unless the bus codec "
                "is json; health, alerts and commands are JSON. Generated from schemas/ by `make asyncapi`: "
                "do not edit by hand."
            ),
        },
        "defaultContentType": JSON_TYPE,
        "servers": {
            "edge": {
                "host": "127.0.0.1:1883",
                "protocol": "mqtt",
                "protocolVersion": "5",
                "description": "a device's own broker (`vv broker`): one login per node, ACL by what it produces",
            },
            "central": {
                "host": "central.example.net:8883",
                "protocol": "secure-mqtt",
                "protocolVersion": "3.1.1",
                "description": "the fleet's central broker (`vv broker --central`): devices' bridges bring health, "
                "alerts and LogLines; commands go back",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "parameters": PARAMETERS,
        },
    }


def render() -> str:
    """The document as YAML (key order kept, so a change in the schemas shows as a small diff)."""
    text = yaml.safe_dump(json.loads(json.dumps(document())), sort_keys=False, allow_unicode=True, width=110)
    return "# Generated by `make asyncapi` (scripts/asyncapi.py) from schemas/: do not edit.\n" + text


def unclassified() -> list[str]:
    """Schemas in schemas/ that are neither in the document nor listed as artifacts."""
    used = {"envelope", *(c.schema for c in CHANNELS), *(c.args for c in CHANNELS), *ARTIFACTS}
    return [name for name in known_schemas() if name not in used]


def main() -> int:
    missing = unclassified()
    if missing:
        print(
            f"asyncapi: schemas not in the topic table (add a Channel or ARTIFACTS): {missing}",
            file=sys.stderr,
        )
        return 1
    text = render()
    if len(sys.argv) > 1:
        out = Path(sys.argv[1])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
