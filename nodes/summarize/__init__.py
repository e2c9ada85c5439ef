"""Summarize: per-class figures, peak in view, timeline and a short text from the tracks scan reported."""
