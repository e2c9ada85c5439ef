"""The alerter node (see `node.py`); `vv run alerter`."""
