"""Scan: decode a video, sample it, gate on motion, detect objects, and produce the analytic artifact."""
