"""A listing of a tree (relative path -> sha256, or the kind of a non-regular entry) to prove what changed."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def listing(root: Path) -> dict[str, str]:
    """Every entry under `root` without following symlinks; FIFOs and devices are named, never opened."""
    found: dict[str, str] = {}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(directory, name)
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode):
                found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(mode):
                found[str(path.relative_to(root))] = f"link -> {os.readlink(path)}"
            else:
                found[str(path.relative_to(root))] = "dir" if stat.S_ISDIR(mode) else f"mode {mode:o}"
    return found


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """Paths added, removed or modified between two listings."""
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
