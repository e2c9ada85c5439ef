"""A stand-in for an LLM describer plugged in by `summarize.describer`."""

from __future__ import annotations

from typing import Any


def terse(summary: dict[str, Any]) -> str:
    return "seen: " + ", ".join(sorted(summary["counts"])) if summary["counts"] else "seen: nothing"
