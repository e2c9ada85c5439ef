"""Where the shared sample assets are (the detector model, sample photos): one rule for every user."""

from __future__ import annotations

import os
from pathlib import Path


def shared_dir() -> Path:
    """$VV_SHARED, else the `shared` directory beside a source checkout (`../shared`)."""
    return Path(os.environ.get("VV_SHARED", Path(__file__).resolve().parents[3] / "shared"))
