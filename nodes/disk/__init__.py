"""The disk node (`node.py`): free space watched, alerts raised, ingest paused before the disk is full."""
