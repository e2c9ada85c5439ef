"""Which class runs for `vv run NAME`: the device's nodes by name, or any `module:Class` of a user;
and every node credential the broker gives out, built from these classes."""

from __future__ import annotations

import importlib

from bus.argtypes import INSTANCE
from bus.broker import Grant
from bus.config import Settings
from bus.node import Node

NODES: dict[str, str] = {
    "journal": "nodes.journal.node:JournalNode",
    "scan": "nodes.scan.node:ScanNode",
    "summarize": "nodes.summarize.node:SummarizeNode",
    "sign": "nodes.sign.node:SignNode",
    "reconciler": "nodes.reconciler.node:ReconcilerNode",
    "ingest": "nodes.ingest.node:IngestNode",
    "dvr": "nodes.dvr.node:DvrNode",
    "alerter": "nodes.alerter.node:AlerterNode",
    "disk": "nodes.disk.node:DiskNode",
    "monitor": "nodes.monitor.node:MonitorNode",
}

# Nodes a `vv` verb runs in its own process rather than `vv run`, by the name they connect as.
VERB_NODES: dict[str, str] = {
    "supervisor": "nodes.ops.up:SupervisorNode",  # vv up
    "ingest-cli": "nodes.ingest.once:IngestCliNode",  # vv ingest
    "verify-cli": "nodes.sign.verify:VerifyCliNode",  # vv verify --alert
    "cleanup": "bus.jobs:JobNode",  # vv cleanup --job-period
    "export": "bus.jobs:JobNode",  # vv export --job-period
}


def load_node_class(spec: str) -> type[Node]:
    """Resolve a node name (`journal`) or a `package.module:Class` path to a Node subclass."""
    target = NODES.get(spec, spec)
    if ":" not in target:
        known = ", ".join(sorted(NODES))
        raise LookupError(f"unknown node {spec!r}: use one of {known}, or module:Class")
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Node)):
        raise LookupError(f"{target} is not a Node subclass")
    return cls


def _listed(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def broker_grants(settings: Settings) -> list[Grant]:
    """One credential per node process of the device, with the rights its class declares: the
    registered nodes, the verbs' nodes, `broker.nodes` (module:Class) and `broker.instances`
    (NODE:INSTANCE, e.g. a second scan worker `scan:2` connecting as `scan-2`).

    Raises LookupError or ImportError naming a bad entry.
    """
    table = {name: load_node_class(target) for name, target in {**NODES, **VERB_NODES}.items()}
    for spec in _listed(settings.broker.nodes):
        cls = load_node_class(spec)
        table[cls.name] = cls
    for item in _listed(settings.broker.instances):
        spec, _, instance = item.rpartition(":")
        if not spec or not INSTANCE.fullmatch(instance):
            raise LookupError(
                f"broker.instances: {item!r} is not NODE:INSTANCE (instance: 1-64 letters, digits, _.-, "
                "not starting with '.' or '-')"
            )
        cls = load_node_class(spec)
        table[f"{cls.name}-{instance}"] = cls
    return [cls.grant(settings, name) for name, cls in table.items()]
