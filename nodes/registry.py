"""Which class runs for `vv run NAME`: the device's nodes by name, or any `module:Class` of a user."""

from __future__ import annotations

import importlib

from bus.node import Node

NODES: dict[str, str] = {
    "journal": "nodes.journal.node:JournalNode",
    "scan": "nodes.scan.node:Scan",
    "summarize": "nodes.summarize.node:Summarize",
    "sign": "nodes.sign.node:Sign",
    "reconciler": "nodes.reconciler:Reconciler",
    "ingest": "nodes.ingest:Ingest",
    "dvr": "nodes.dvr:Dvr",
    "alerter": "nodes.alerter:Alerter",
    "disk": "nodes.disk:DiskWatch",
    "monitor": "nodes.monitor:Monitor",
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
