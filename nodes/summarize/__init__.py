"""Summarize: per-class figures, peak in view, timeline and a short text from the tracks scan reported."""

from nodes.summarize.summary import build_summary, describe, peak_in_view, plural, thumbnails

__all__ = ["build_summary", "describe", "peak_in_view", "plural", "thumbnails"]
