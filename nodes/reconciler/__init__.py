"""The reconciler node (`node.py`): a video stuck in a stage is re-announced, then quarantined."""
