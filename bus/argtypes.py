"""argparse types for the `vv` verbs (and `--job-period`): a bad value is a usage error (exit 2) naming it.

`type=float` alone takes "nan", "inf" and "-1": `--days nan` then matched no file and cleaned
nothing while reporting success, and `--timeout -1` gave up before trying.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from bus.envelope import parse_time
from bus.inputs import not_regular, shown

# A worker instance (`vv run NODE --instance`, `broker.instances`): part of a client id and of paths
INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _number(text: str, kind: type[int] | type[float]) -> float:
    try:
        value = kind(text)
    except (OverflowError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not {'an integer' if kind is int else 'a number'}"
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def non_negative_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def rfc3339(text: str) -> str:
    """An RFC 3339 time, kept as given (the journal compares the text)."""
    try:
        parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time") from None
    return text


def instance_name(text: str) -> str:
    """A worker suffix ("" for none): it becomes part of a client id and of directory names, so no
    '/', no leading '.', no spaces or control characters (`--instance ../../x` wrote outside VV_HOME)."""
    if text and not INSTANCE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} must be 1-64 letters, digits, '_', '.', '-' (not starting with '.' or '-')"
        )
    return text


def output_file(text: str) -> Path:
    """A file the verb appends to: absent, or a regular file (appending to a FIFO blocks forever)."""
    path = Path(text)
    if (path.exists() or path.is_symlink()) and (reason := not_regular(path)):
        raise argparse.ArgumentTypeError(reason)
    return path


def output_dir(text: str) -> Path:
    """A directory the verb writes into: absent (it is created) or a directory."""
    path = Path(text)
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{shown(path)} exists and is not a directory")
    return path


def mqtt_filter(text: str) -> str:
    """A topic filter (`vv/+/alert/#`) or an event type pattern (`alert.*`): the broker would drop
    the connection over a malformed one, and tail would then retry it forever."""
    levels = text.split("/" if "/" in text else ".")
    misplaced = any(
        ("#" in level and (level != "#" or index != len(levels) - 1)) or ("+" in level and level != "+")
        for index, level in enumerate(levels)
    )
    if not text or not text.isprintable() or misplaced:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a topic filter ('#' only as the last level, '+' only as a whole level)"
        )
    return text
