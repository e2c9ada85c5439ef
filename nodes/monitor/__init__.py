"""The monitor node (`node.py`): liveness, self-healing restarts, resources, stuck videos, storage, jobs."""
