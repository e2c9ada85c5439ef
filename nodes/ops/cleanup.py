"""`vv cleanup`: age-based retention under given roots, safe by construction.

The decision is one plain function, `plan_cleanup`, and the deletion another, `apply_plan`, so the
CLI's `--dry-run`, a real run, the scheduled job and the benchmark all decide through the same code:
a dry run lists exactly what a real run deletes.

Rules (why each exists):
- Only entries under the given roots are touched. Roots are resolved first; the walk never descends
  into a symlinked directory, and before deleting, each directory is re-checked to still be a real
  directory (no symlink anywhere on its path) inside its root, and the file is re-checked (`lstat`
  via the directory's fd) to be the same inode, still old: a tree swapped under us is not followed.
- Symlinks are never followed. An old symlink (by its own `lstat` mtime) is removed like a file: that
  unlinks the link only, never its target, and keeps dangling links from piling up after their
  targets were cleaned.
- Files held open by any process we can see (`/proc/*/fd`, scanned once per run) are skipped: a
  recording or a log being written is never pulled from under its writer.
- Quarantined evidence (`VV_HOME/corrupted`) is skipped unless `include_quarantine`.
- `min_free` turns the run into "free space only as needed": old files are deleted oldest first, per
  filesystem, only until the target free space is reached.
- Directories left empty (or already empty and old) are removed, deepest first, never the roots.
- Dangerous roots (`/`, `$HOME`, system directories, VV_HOME and its keys/journal/state, and any
  ancestor of those) are refused.

One concern, kept whole: the plan and the deletion share these rules, and each rule is checked in both.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import re
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple, TextIO

from bus.fsutil import iter_open_fds

DAY_S = 86400.0
_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii  # non-UTF-8 names stay loggable
PROGRESS_EVERY = 8192
APPLY_BATCH = 1024  # entries per deletion task

SYSTEM_DIRS = (
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/usr",
    "/var",
    "/var/lib",
    "/var/log",
)

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1024,
    "KB": 1024,
    "KIB": 1024,
    "M": 1024**2,
    "MB": 1024**2,
    "MIB": 1024**2,
    "G": 1024**3,
    "GB": 1024**3,
    "GIB": 1024**3,
    "T": 1024**4,
    "TB": 1024**4,
    "TIB": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")

FreeSpace = Callable[[str], tuple[int, int]]
Progress = Callable[[str, int], None]


class CleanupError(ValueError):
    """A usage problem (bad root, bad size): nothing was deleted."""


@dataclass(frozen=True)
class MinFree:
    """A free-space target: a percentage of the filesystem or an absolute byte count."""

    percent: float | None = None
    bytes: int = 0

    def target(self, total: int) -> int:
        if self.percent is not None:
            return int(total * self.percent / 100.0)
        return self.bytes

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else f"{self.bytes} bytes"


def parse_min_free(text: str) -> MinFree:
    """`15%` or `20GB` (units B, KB, MB, GB, TB, binary multiples; KiB etc. accepted too)."""
    raw = text.strip()
    if raw.endswith("%"):
        try:
            percent = float(raw[:-1])
        except ValueError:
            raise CleanupError(f"--min-free-space: {text!r} is not a percentage") from None
        if not 0 < percent < 100:
            raise CleanupError(f"--min-free-space: {text!r} must be between 0% and 100%")
        return MinFree(percent=percent)
    match = _SIZE_RE.match(raw)
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS:
        raise CleanupError(
            f"--min-free-space: {text!r} is not a size like 15% or 20GB (units KB, MB, GB, TB)"
        )
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise CleanupError(f"--min-free-space: {text!r} must be positive")
    return MinFree(bytes=value)


def statvfs_free(path: str) -> tuple[int, int]:
    """(bytes available to unprivileged writers, filesystem size), as `df` reports them."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def protected_paths(vv_home: Path | None = None, home: str | None = None) -> list[str]:
    """Directories that no cleanup root may be, or contain."""
    paths = list(SYSTEM_DIRS)
    home = home if home is not None else os.environ.get("HOME", "")
    if home:
        paths.append(home)
    if vv_home is not None:
        base = vv_home
        paths += [str(base), str(base / "keys"), str(base / "journal"), str(base / "state")]
    return sorted({os.path.realpath(p) for p in paths})


def check_roots(roots: Iterable[str | Path], protected: Sequence[str]) -> tuple[str, ...]:
    """Resolve the roots; refuse missing ones and any that is, or contains, a protected directory."""
    resolved: list[str] = []
    for raw in roots:
        text = str(raw).strip()
        if not text:
            raise CleanupError("--dirs: empty root")
        real = os.path.realpath(text)
        for danger in protected:
            if _is_within(danger, real):
                what = "is" if danger == real else "contains"
                raise CleanupError(f"refusing dangerous root {text!r}: it {what} {danger}")
        if not os.path.isdir(real):
            raise CleanupError(f"root {text!r} is not a directory")
        resolved.append(real)
    # A root inside another root would be walked twice: keep the outer one.
    unique = sorted(set(resolved))
    return tuple(r for r in unique if not any(o != r and _is_within(r, o) for o in unique))


def _compile_patterns(patterns: Iterable[str]) -> tuple[re.Pattern[str] | None, re.Pattern[str] | None]:
    """Patterns without '/' match the entry's name; with '/' its path relative to the root."""
    names = [p for p in patterns if p and "/" not in p]
    paths = [p.strip("/") for p in patterns if p and "/" in p]

    def build(items: list[str]) -> re.Pattern[str] | None:
        return re.compile("|".join(fnmatch.translate(p) for p in items)) if items else None

    return build(names), build(paths)


def open_files() -> set[tuple[int, int]]:
    """(device, inode) of every regular file open in a process we can inspect: one /proc pass."""
    held: set[tuple[int, int]] = set()
    for fd_path in iter_open_fds():
        try:
            st = os.stat(fd_path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            held.add((st.st_dev, st.st_ino))
    return held


class Entry(NamedTuple):
    """One file or symlink the plan deletes; dev/ino/mtime are re-checked before deleting it."""

    path: str
    directory: str
    name: str
    size: int
    mtime: float
    dev: int
    ino: int
    freed: int  # bytes the filesystem gets back (allocated blocks; 0 for extra hard links)


@dataclass
class Plan:
    roots: tuple[str, ...]
    cutoff: float
    delete: list[Entry] = field(default_factory=list)
    rmdirs: list[str] = field(default_factory=list)  # deepest first
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    free_targets: dict[int, tuple[int, int]] = field(default_factory=dict)  # dev -> (free, target)

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.delete)


@dataclass
class Result:
    deleted: list[str] = field(default_factory=list)
    deleted_bytes: int = 0
    removed_dirs: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)


class _Dirs:
    """The directories seen by the walk, in creation order (a child always after its parent)."""

    def __init__(self) -> None:
        self.path: list[str] = []
        self.parent: list[int] = []
        self.entries: list[int] = []
        self.old: list[bool] = []

    def add(self, path: str, parent: int, old: bool) -> int:
        self.path.append(path)
        self.parent.append(parent)
        self.entries.append(0)
        self.old.append(old)
        return len(self.path) - 1


def plan_cleanup(
    roots: Sequence[str],
    days: float,
    *,
    now: float | None = None,
    exclude: Iterable[str] = (),
    quarantine: str | Path | None = None,
    include_quarantine: bool = False,
    min_free: MinFree | None = None,
    free_space: FreeSpace = statvfs_free,
    held: Callable[[], set[tuple[int, int]]] = open_files,
    progress: Progress | None = None,
) -> Plan:
    """Decide what a cleanup deletes. `roots` must come from `check_roots` (resolved, safe)."""
    cutoff = (time.time() if now is None else now) - days * DAY_S
    plan = Plan(roots=tuple(roots), cutoff=cutoff)
    name_re, path_re = _compile_patterns(exclude)
    quarantine_dir = (
        os.path.realpath(quarantine) if quarantine is not None and not include_quarantine else None
    )
    dirs = _Dirs()
    entry_dir: list[int] = []  # parallel to plan.delete before selection
    candidates: list[Entry] = []
    open_set: set[tuple[int, int]] | None = None
    scanned = 0

    for root in plan.roots:
        if quarantine_dir is not None and _is_within(root, quarantine_dir):
            plan.skipped.append((root, "quarantine"))
            continue
        stack = [dirs.add(root, -1, False)]
        prefix_len = len(root.rstrip("/")) + 1
        while stack:
            index = stack.pop()
            directory = dirs.path[index]
            try:
                iterator = os.scandir(directory)
            except OSError as exc:
                plan.skipped.append((directory, f"unreadable: {exc.strerror}"))
                dirs.entries[index] += 1  # keep it: we cannot know it is empty
                continue
            with iterator:
                for item in iterator:
                    dirs.entries[index] += 1
                    scanned += 1
                    if progress is not None and scanned % PROGRESS_EVERY == 0:
                        progress("scanned", scanned)
                    path = item.path
                    if item.is_dir(follow_symlinks=False):
                        if (name_re is not None and name_re.match(item.name)) or (
                            path_re is not None and path_re.match(path[prefix_len:])
                        ):
                            plan.skipped.append((path, "excluded"))
                        elif path == quarantine_dir:
                            plan.skipped.append((path, "quarantine"))
                        else:
                            try:
                                old = item.stat(follow_symlinks=False).st_mtime <= cutoff
                            except OSError:
                                old = False
                            stack.append(dirs.add(path, index, old))
                        continue
                    try:
                        st = item.stat(follow_symlinks=False)
                    except OSError:
                        continue  # vanished while scanning
                    if st.st_mtime > cutoff or not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                        continue
                    if (name_re is not None and name_re.match(item.name)) or (
                        path_re is not None and path_re.match(path[prefix_len:])
                    ):
                        plan.skipped.append((path, "excluded"))
                        continue
                    if stat.S_ISREG(st.st_mode):
                        if open_set is None:
                            open_set = held()
                        if (st.st_dev, st.st_ino) in open_set:
                            plan.skipped.append((path, "open"))
                            continue
                    freed = st.st_blocks * 512 if st.st_nlink <= 1 else 0
                    candidates.append(
                        Entry(
                            path, directory, item.name, st.st_size, st.st_mtime, st.st_dev, st.st_ino, freed
                        )
                    )
                    entry_dir.append(index)

    chosen: Sequence[int] = range(len(candidates))
    if min_free is not None:
        chosen = _select_for_free_space(plan, candidates, min_free, free_space)
    removed = [0] * len(dirs.path)
    for i in chosen:
        plan.delete.append(candidates[i])
        removed[entry_dir[i]] += 1
    _plan_rmdirs(plan, dirs, removed)
    return plan


def _select_for_free_space(
    plan: Plan, candidates: list[Entry], min_free: MinFree, free_space: FreeSpace
) -> list[int]:
    """Oldest first, per filesystem, only until that filesystem has `min_free` available."""
    by_dev: dict[int, list[int]] = {}
    for i, entry in enumerate(candidates):
        by_dev.setdefault(entry.dev, []).append(i)
    chosen: list[int] = []
    for dev, indices in by_dev.items():
        free, total = free_space(os.path.dirname(candidates[indices[0]].path))
        target = min_free.target(total)
        plan.free_targets[dev] = (free, target)
        indices.sort(key=lambda i: candidates[i].mtime)
        for i in indices:
            if free >= target:
                plan.skipped.append((candidates[i].path, "free-space target met"))
                continue
            chosen.append(i)
            free += candidates[i].freed
    chosen.sort(key=lambda i: candidates[i].mtime)
    return chosen


def _plan_rmdirs(plan: Plan, dirs: _Dirs, removed: list[int]) -> None:
    """Directories that end up empty: emptied by this plan, or already empty and old. Never roots."""
    emptied = [count > 0 for count in removed]
    for index in range(len(dirs.path) - 1, -1, -1):
        parent = dirs.parent[index]
        if parent < 0:
            continue
        if removed[index] == dirs.entries[index] and (emptied[index] or dirs.old[index]):
            plan.rmdirs.append(dirs.path[index])
            removed[parent] += 1
            emptied[parent] = True


class JsonLog:
    """Each action as one JSON line, so an audit can replay what cleanup did and why.

    Lines are batched (`flush` writes them): one write per thousand deletions, not one per file.
    """

    BATCH = 1024

    def __init__(self, handle: TextIO | None) -> None:
        self.handle = handle
        self.pending: list[str] = []
        self._second = -1
        self._stamp = ""

    def _now(self) -> str:
        """RFC 3339 UTC to the second, formatted once per second: this runs once per deleted file."""
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return self._stamp

    def _add(self, line: str) -> None:
        self.pending.append(line)
        if len(self.pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        if self.handle is not None and self.pending:
            self.handle.write("".join(self.pending))
        self.pending.clear()

    def write(self, action: str, path: str, **fields: object) -> None:
        if self.handle is not None:
            self._add(json.dumps({"time": self._now(), "action": action, "path": path, **fields}) + "\n")

    def deleted(self, entries: Sequence[Entry]) -> None:
        """`write("delete", ...)` for many entries without the generic encoder: same JSON, less cost."""
        if self.handle is not None:
            now = self._now()
            self.pending.extend(
                f'{{"time": "{now}", "action": "delete", "path": {_json_string(e.path)}, '
                f'"size": {e.size}, "mtime": {e.mtime!r}}}\n'
                for e in entries
            )
            if len(self.pending) >= self.BATCH:
                self.flush()


def _root_of(path: str, roots: Sequence[str]) -> str | None:
    for root in roots:
        if _is_within(path, root):
            return root
    return None


class _DirHandle:
    """The open directory a group of deletions happen in, verified once to be real and in a root."""

    def __init__(self, roots: Sequence[str]) -> None:
        self.roots = roots
        self.path: str | None = None
        self.fd = -1
        self.verified: set[str] = set()

    def open(self, directory: str) -> int:
        if directory == self.path:
            return self.fd
        self.close()
        if directory not in self.verified:
            if os.path.realpath(directory) != directory or _root_of(directory, self.roots) is None:
                raise OSError(f"{directory} is no longer a real directory inside its root")
            self.verified.add(directory)
        self.fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        self.path = directory
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.path = -1, None


def _delete_batch(
    entries: Sequence[Entry], roots: Sequence[str], cutoff: float
) -> list[tuple[str, str] | None]:
    """Delete `entries` (one batch); per entry None when deleted, else (kind, reason)."""
    handle = _DirHandle(roots)
    lstat, unlink = os.lstat, os.unlink  # locals: this loop runs once per file
    outcomes: list[tuple[str, str] | None] = []
    add = outcomes.append
    current, fd = "", -1
    try:
        for entry in entries:
            name = entry.name
            try:
                if entry.directory is not current:
                    fd, current = handle.open(entry.directory), entry.directory
                st = lstat(name, dir_fd=fd)
                if st.st_ino != entry.ino or st.st_dev != entry.dev or st.st_mtime > cutoff:
                    add(("skip", "changed since planned"))
                    continue
                unlink(name, dir_fd=fd)
            except FileNotFoundError:
                add(("skip", "already gone"))
                continue
            except OSError as exc:
                current = ""  # retry opening the directory for the next entry
                add(("error", exc.strerror or str(exc)))
                continue
            add(None)
    finally:
        handle.close()
    return outcomes


def apply_plan(plan: Plan, log: TextIO | None = None, progress: Progress | None = None) -> Result:
    """Delete what `plan` says, re-checking each entry; skips and errors are reported, not raised.

    Deletions run in batches (a progress line and one bulk merge into the result and log per batch).
    """
    result = Result(skipped=list(plan.skipped))
    journal = JsonLog(log)
    for path, reason in plan.skipped:
        journal.write("skip", path, reason=reason)
    batches = [plan.delete[i : i + APPLY_BATCH] for i in range(0, len(plan.delete), APPLY_BATCH)]
    try:
        done = 0
        for batch in batches:
            outcomes = _delete_batch(batch, plan.roots, plan.cutoff)
            if outcomes.count(None) == len(batch):  # the common case: all deleted, merged in bulk
                result.deleted.extend(entry.path for entry in batch)
                result.deleted_bytes += sum(entry.size for entry in batch)
                journal.deleted(batch)
            else:
                for entry, outcome in zip(batch, outcomes, strict=True):
                    if outcome is None:
                        result.deleted.append(entry.path)
                        result.deleted_bytes += entry.size
                        journal.deleted([entry])
                    elif outcome[0] == "skip":
                        result.skipped.append((entry.path, outcome[1]))
                        journal.write("skip", entry.path, reason=outcome[1])
                    else:
                        result.errors.append((entry.path, outcome[1]))
                        journal.write("error", entry.path, error=outcome[1])
            done += len(batch)
            if progress is not None:
                progress("deleted", done)
        handle = _DirHandle(plan.roots)
        try:
            for directory in plan.rmdirs:
                parent, name = os.path.split(directory)
                try:
                    os.rmdir(name, dir_fd=handle.open(parent))
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    reason = "not empty" if exc.errno == errno.ENOTEMPTY else (exc.strerror or str(exc))
                    result.skipped.append((directory, reason))
                    journal.write("skip", directory, reason=reason)
                    continue
                result.removed_dirs.append(directory)
                journal.write("rmdir", directory)
        finally:
            handle.close()
    finally:
        journal.flush()
    return result


def summary(result: Result, dry_run: bool) -> dict[str, object]:
    """The figures an operator (and `--json`) wants: counts, bytes, skips by reason."""
    return {
        "dry_run": dry_run,
        "files": len(result.deleted),
        "bytes": result.deleted_bytes,
        "dirs": len(result.removed_dirs),
        "skipped": dict(Counter(reason for _, reason in result.skipped)),
        "errors": len(result.errors),
    }


def plan_as_result(plan: Plan) -> Result:
    """What a dry run reports: the plan, shaped like the result a real run would give."""
    return Result(
        deleted=[e.path for e in plan.delete],
        deleted_bytes=plan.bytes,
        removed_dirs=list(plan.rmdirs),
        skipped=list(plan.skipped),
    )
