"""The alerter node (see `node.py`); `vv run alerter`."""

from nodes.alerter.node import Alerter

__all__ = ["Alerter"]
