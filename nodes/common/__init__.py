"""Helpers every node shares: stored-video claims, video decoding, file placement, quarantine."""
