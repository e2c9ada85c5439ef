"""The producer of `vv ingest` (nodes/cli/ingest.py): the ingest node's name and events, no subscriptions."""

from __future__ import annotations

from bus.node import Node
from nodes.ingest.node import IngestNode


class IngestCliNode(Node):
    """A short-lived producer with the ingest node's name and no subscriptions (instance `cli`)."""

    name = "ingest"
    produces = IngestNode.produces
