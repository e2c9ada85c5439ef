"""The summarize node's `[summarize]` settings."""

from __future__ import annotations

from dataclasses import dataclass

from bus.config import section


@section("summarize")
@dataclass(frozen=True)
class SummarizeSettings:
    describer: str = ""  # "module:function" turning a summary into text (e.g. an LLM); default: built-in
    max_gap_s: float = 2.0  # tracks closer in time than this make one activity segment of the timeline
