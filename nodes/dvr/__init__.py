"""The dvr node (`node.py`): a camera stream recorded into segments in input/."""
