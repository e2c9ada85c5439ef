"""Summarize: tracks, per-class figures, timeline, thumbnails and a short text for one scanned video."""

from nodes.summarize.summary import ThumbnailRef, build_summary, describe, plural, write_thumbnails
from nodes.summarize.tracks import Track, iou, link_tracks

__all__ = [
    "ThumbnailRef",
    "Track",
    "build_summary",
    "describe",
    "iou",
    "link_tracks",
    "plural",
    "write_thumbnails",
]
