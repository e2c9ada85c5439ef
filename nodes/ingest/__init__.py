"""The ingest node (`node.py`): files dropped in input/ become stored videos announced by `video.new`."""
