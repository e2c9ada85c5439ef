"""`vv export`: a signed, verifiable, reproducible bundle of the device's logs for a day or a range.

With the logs go the journal segments of those days (`journal/NNNNNNNN.seg`, one per UTC day by the
time index): the archive journal retention waits for before it removes a segment (by default).

Output (in VV_HOME/exports or `--out`): `vv_logs_<device>_YYYYMMDD.tar.gz` (a range:
`_YYYYMMDD-YYYYMMDD`) and `vv_logs_<device>_YYYYMMDD.manifest.json`, each written atomically
(temp file + rename), tarball first, so a manifest never names a tarball that is not there.

Which files (the selection rule): every regular file under `VV_HOME/logs` (recursively, symlinks
and dot-files ignored; rotated `app.log.1` and compressed `app.log.2.gz` included, whole files, as
they are on disk) whose time span overlaps the requested UTC days. A file's span ends at its mtime
(its last write; renaming on rotation keeps it) and starts at the time of its first line (a JSON
line's `time`/`timestamp`/`ts` field, or a leading RFC 3339 / `YYYY-MM-DD HH:MM:SS` stamp). When the
first line has no readable time the start is unknown and the file is included if it was written to
on or after the range's first day: an export errs on including a file rather than losing one.

Reproducible: members are sorted, their headers carry fixed owner (0/0), mode 0644 and the range's
end as mtime, and gzip's header mtime is 0, so re-exporting the same logs gives a byte-identical
tarball; when the existing export is identical it is left in place (and so is its manifest).

The manifest lists each file (path relative to VV_HOME, size, sha256), the tarball (name, size,
sha256), export time, device, package version, a BagIt-style `payload_oxum` ("<bytes>.<count>") and
a signature over the canonical JSON of the manifest without its `signature` field.

One concern, kept whole: writing an export and verifying one read the same format.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Protocol

from bus.envelope import parse_time
from bus.fsutil import CHUNK, atomic_write_json, canonical_json, fsync_dir, sha256_file
from bus.version import package_version
from nodes.journal.store import JournalCorrupt, build_index, list_segments, read_index

MANIFEST_VERSION = 1
GZIP_LEVEL = 6
MANIFEST_SUFFIX = ".manifest.json"
TARBALL_SUFFIX = ".tar.gz"
_EXPORT_NAME = re.compile(r"^vv_logs_.+_(\d{8})(?:-(\d{8}))?(?:\.tar\.gz|\.manifest\.json)$")
_LEADING_STAMP = re.compile(
    r"^\s*\[?(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2}(?:[.,]\d+)?)(Z|[+-]\d{2}:?\d{2})?"
)
_TIME_KEYS = ("time", "timestamp", "ts", "@timestamp", "asctime")


class Signer(Protocol):
    """What `nodes.sign.keys.KeyStore.signer()` returns: signs bytes, returns base64."""

    @property
    def alg(self) -> str: ...

    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> str: ...


class ExportError(Exception):
    """The export could not be made (a log changed under us, the output is not writable)."""


@dataclass(frozen=True)
class LogFile:
    path: Path
    relative: str  # path inside the tarball and in the manifest, relative to VV_HOME


@dataclass
class ExportResult:
    status: str  # "written", "unchanged" or "empty"
    tarball: Path | None = None
    manifest: Path | None = None
    files: int = 0
    bytes: int = 0
    sha256: str = ""
    removed: list[Path] = field(default_factory=list)  # old exports deleted by retention


def export_stem(device: str, first: date, last: date) -> str:
    days = f"{first:%Y%m%d}" if first == last else f"{first:%Y%m%d}-{last:%Y%m%d}"
    return f"vv_logs_{device}_{days}"


def _log_time(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / (1000.0 if value > 1e11 else 1.0)  # epoch seconds or milliseconds
    if isinstance(value, str):
        match = _LEADING_STAMP.match(value)
        if match:
            day, clock, zone = match.groups()
            text = f"{day}T{clock.replace(',', '.')}{zone or '+00:00'}"
            try:
                return parse_time(text).timestamp()
            except ValueError:
                return None
    return None


def first_line_time(path: Path) -> float | None:
    """The time stamped on a log file's first line (gzip-compressed files too), if it has one."""
    try:
        with gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb") as handle:
            line = handle.readline(64 * 1024).decode("utf-8", "replace")
    except (OSError, EOFError):
        return None
    if line.lstrip().startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            for key in _TIME_KEYS:
                if key in record and (stamp := _log_time(record[key])) is not None:
                    return stamp
    return _log_time(line)


def day_start(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def select_logs(logs_dir: Path, first: date, last: date) -> list[LogFile]:
    """The log files whose time span overlaps the UTC days [first, last] (see the module docstring)."""
    start, end = day_start(first), day_start(last + timedelta(days=1))
    base = logs_dir.parent
    chosen: list[LogFile] = []
    stack = [logs_dir]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
                continue
            if not entry.is_file(follow_symlinks=False):
                continue
            mtime = entry.stat(follow_symlinks=False).st_mtime
            if mtime < start:
                continue
            path = Path(entry.path)
            began = first_line_time(path)
            if began is None or began < end:
                chosen.append(LogFile(path, path.relative_to(base).as_posix()))
    return sorted(chosen, key=lambda f: f.relative)


def select_journal(journal_dir: Path, first: date, last: date) -> list[LogFile]:
    """The journal segments whose newest record was received within the UTC days [first, last].

    A segment holds one UTC day, so each is archived by that day's export. The current segment is
    taken as it is now: once its day is over it does not change any more (the next record starts a
    new segment), so an export made after the day matches it for good (what retention checks).
    """
    start, end = day_start(first), day_start(last + timedelta(days=1))
    chosen = []
    for _number, path in list_segments(journal_dir):
        span = read_index(path)
        if span is None:
            try:
                span = build_index(path, last=True)
            except (JournalCorrupt, FileNotFoundError):
                continue  # damaged: `vv status` and the journal node report it; not archived as if whole
        high = span.received_max
        if high is not None and span.untimed == 0 and start <= high < end:
            chosen.append(LogFile(path, path.relative_to(journal_dir.parent).as_posix()))
    return chosen


class _HashingWriter:
    """The tarball's file object: hashes and counts the compressed bytes as they are written."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


class _HashingReader:
    """Feeds one log file to tarfile, exactly `size` bytes, hashing them on the way."""

    def __init__(self, raw: IO[bytes], size: int) -> None:
        self.raw = raw
        self.left = size
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.raw.read(n)
        self.left -= len(data)
        self.digest.update(data)
        return data


def _write_tarball(
    handle: IO[bytes], files: list[LogFile], mtime: int, level: int
) -> tuple[list[dict[str, Any]], str, int]:
    """Stream the deterministic tar.gz into `handle`; returns (manifest files, tarball sha256, size)."""
    sink = _HashingWriter(handle)
    entries: list[dict[str, Any]] = []
    with (
        gzip.GzipFile(filename="", mode="wb", compresslevel=level, fileobj=sink, mtime=0) as gz,
        tarfile.TarFile(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK) as tar,
    ):
        for log in files:
            with log.path.open("rb") as source:
                size = os.fstat(source.fileno()).st_size
                info = tarfile.TarInfo(log.relative)
                info.size, info.mtime, info.mode = size, mtime, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                reader = _HashingReader(source, size)
                try:
                    tar.addfile(info, reader)
                except (tarfile.ReadError, OSError) as exc:
                    raise ExportError(f"{log.path} changed while exporting: {exc}") from exc
                entries.append({"path": log.relative, "size": size, "sha256": reader.digest.hexdigest()})
    return entries, sink.digest.hexdigest(), sink.size


def payload_oxum(files: list[dict[str, Any]]) -> str:
    return f"{sum(int(f['size']) for f in files)}.{len(files)}"


def sign_manifest(manifest: dict[str, Any], signer: Signer) -> dict[str, Any]:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    signature = signer.sign(canonical_json(body))
    return {**body, "signature": {"alg": signer.alg, "key_id": signer.key_id, "signature": signature}}


def _existing_matches(manifest_path: Path, files: list[dict[str, Any]], sha: str, device: str) -> bool:
    try:
        existing = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(existing, dict)
        and existing.get("files") == files
        and isinstance(existing.get("tarball"), dict)
        and existing["tarball"].get("sha256") == sha
        and existing.get("device") == device
        and isinstance(existing.get("signature"), dict)
    )


def export_logs(
    logs_dir: Path,
    out_dir: Path,
    device: str,
    first: date,
    last: date,
    signer: Signer,
    *,
    level: int = GZIP_LEVEL,
    now: datetime | None = None,
    journal_dir: Path | None = None,
) -> ExportResult:
    """Write (or confirm) the export for the UTC days [first, last]; see the module docstring."""
    files = select_logs(logs_dir, first, last)
    if journal_dir is not None and journal_dir.is_dir():
        files += select_journal(journal_dir, first, last)
    if not files:
        return ExportResult(status="empty")
    stem = export_stem(device, first, last)
    tar_path = out_dir / f"{stem}{TARBALL_SUFFIX}"
    manifest_path = out_dir / f"{stem}{MANIFEST_SUFFIX}"
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=out_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            entries, sha, size = _write_tarball(
                handle, files, int(day_start(last + timedelta(days=1))), level
            )
            handle.flush()
            os.fsync(handle.fileno())
        result = ExportResult(
            status="written",
            tarball=tar_path,
            manifest=manifest_path,
            files=len(entries),
            bytes=sum(e["size"] for e in entries),
            sha256=sha,
        )
        if tar_path.exists() and sha256_file(tar_path) == sha:
            tmp.unlink()
            if _existing_matches(manifest_path, entries, sha, device):
                result.status = "unchanged"
                return result
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, tar_path)
            fsync_dir(out_dir)
    finally:
        tmp.unlink(missing_ok=True)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "device": device,
        "version": package_version(),
        "export_time": (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "range": {"from": first.isoformat(), "to": last.isoformat()},
        "files": entries,
        "payload_oxum": payload_oxum(entries),
        "tarball": {"name": tar_path.name, "size": size, "sha256": sha},
    }
    atomic_write_json(manifest_path, sign_manifest(manifest, signer))
    return result


def apply_retention(
    out_dir: Path, days: int, today: date, keep: set[Path] | frozenset[Path] = frozenset()
) -> list[Path]:
    """Delete exports whose last covered day is more than `days` days before `today` (by name)."""
    removed: list[Path] = []
    limit = today - timedelta(days=days)
    try:
        entries = sorted(out_dir.iterdir())
    except FileNotFoundError:
        return removed
    for path in entries:
        match = _EXPORT_NAME.match(path.name)
        if not match or path in keep or not path.is_file() or path.is_symlink():
            continue
        try:
            covered = datetime.strptime(match.group(2) or match.group(1), "%Y%m%d").date()
        except ValueError:
            continue
        if covered < limit:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# ---- verification ---------------------------------------------------------------------------


class Verifier(Protocol):
    """What `nodes.sign.keys` gives for each known key (public Ed25519 key or local HMAC secret)."""

    @property
    def alg(self) -> str: ...

    def verify(self, data: bytes, signature: bytes) -> bool: ...


def signature_problem(
    signature: dict[str, Any], message: bytes, verifiers: Mapping[str, Verifier]
) -> str | None:
    """Why `signature` (the manifest's {alg, key_id, signature}) does not sign `message`, or None."""
    verifier = verifiers.get(str(signature.get("key_id")))
    if verifier is None:
        return f"unknown key id {signature.get('key_id')!r}"
    if verifier.alg != signature.get("alg"):
        return f"alg {signature.get('alg')!r} does not match key {signature.get('key_id')} ({verifier.alg})"
    try:
        raw = base64.b64decode(str(signature.get("signature")), validate=True)
    except binascii.Error:
        return "signature is not base64"
    return None if verifier.verify(message, raw) else "bad signature"


def export_paths(path: Path) -> tuple[Path, Path]:
    """(tarball, manifest) for either one's path."""
    name = path.name
    if name.endswith(MANIFEST_SUFFIX):
        return path.with_name(name[: -len(MANIFEST_SUFFIX)] + TARBALL_SUFFIX), path
    if name.endswith(TARBALL_SUFFIX):
        return path, path.with_name(name[: -len(TARBALL_SUFFIX)] + MANIFEST_SUFFIX)
    raise ValueError(f"{path}: expected a {TARBALL_SUFFIX} or {MANIFEST_SUFFIX} file")


def _manifest_problems(manifest: Any) -> list[str]:
    if not isinstance(manifest, dict):
        return ["manifest is not a JSON object"]
    problems = [
        f"manifest field {key!r} missing"
        for key in ("files", "tarball", "payload_oxum", "signature", "device", "export_time", "version")
        if key not in manifest
    ]
    files = manifest.get("files")
    if not isinstance(files, list) or not all(
        isinstance(f, dict)
        and isinstance(f.get("path"), str)
        and isinstance(f.get("size"), int)
        and isinstance(f.get("sha256"), str)
        for f in files
    ):
        problems.append("manifest 'files' must be a list of {path, size, sha256}")
    tar = manifest.get("tarball")
    if not isinstance(tar, dict) or not {"name", "size", "sha256"} <= tar.keys():
        problems.append("manifest 'tarball' must have name, size, sha256")
    if not isinstance(manifest.get("signature"), dict):
        problems.append("manifest 'signature' must be an object")
    return problems


def _tar_problems(tar_path: Path, files: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Every member's size and hash against the manifest; returns (problems, what the tarball holds)."""
    expected = {f["path"]: f for f in files}
    seen: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        with tarfile.open(tar_path, mode="r|gz") as tar:
            for member in tar:
                if not member.isfile():
                    problems.append(f"tarball member {member.name!r} is not a regular file")
                    continue
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has content
                digest = hashlib.sha256()
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                seen.append({"path": member.name, "size": member.size, "sha256": digest.hexdigest()})
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as exc:
        problems.append(f"tarball unreadable: {exc}")
    names = [s["path"] for s in seen]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{name}: appears more than once in the tarball")
    for item in seen:
        want = expected.get(item["path"])
        if want is None:
            problems.append(f"{item['path']}: in the tarball but not in the manifest")
        elif item["size"] != want["size"]:
            problems.append(f"{item['path']}: size {item['size']} != manifest {want['size']}")
        elif item["sha256"] != want["sha256"]:
            problems.append(f"{item['path']}: sha256 does not match the manifest")
    for name in sorted(expected.keys() - set(names)):
        problems.append(f"{name}: in the manifest but not in the tarball")
    return problems, seen


def verify_export(path: Path, verifiers: Mapping[str, Verifier]) -> list[str]:
    """All the reasons the export at `path` (tarball or manifest) is invalid; empty when valid."""
    tar_path, manifest_path = export_paths(path)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"manifest {manifest_path} not found"]
    except (OSError, ValueError) as exc:
        return [f"manifest {manifest_path} unreadable: {exc}"]
    problems = _manifest_problems(manifest)
    if problems:
        return problems
    tar_info = manifest["tarball"]
    if tar_info["name"] != tar_path.name:
        problems.append(f"manifest names tarball {tar_info['name']!r}, not {tar_path.name!r}")
    if not tar_path.is_file():
        return [*problems, f"tarball {tar_path} not found"]
    if tar_path.stat().st_size != tar_info["size"]:
        problems.append(f"tarball size {tar_path.stat().st_size} != manifest {tar_info['size']}")
    if sha256_file(tar_path) != tar_info["sha256"]:
        problems.append("tarball sha256 does not match the manifest")
    tar_problems, seen = _tar_problems(tar_path, manifest["files"])
    problems += tar_problems
    if manifest["payload_oxum"] != payload_oxum(manifest["files"]):
        problems.append(
            f"payload_oxum {manifest['payload_oxum']!r} != files {payload_oxum(manifest['files'])!r}"
        )
    elif not tar_problems and manifest["payload_oxum"] != payload_oxum(seen):
        problems.append("payload_oxum does not match the tarball")
    body = {k: v for k, v in manifest.items() if k != "signature"}
    try:
        message = canonical_json(body)
    except ValueError as exc:
        return [*problems, f"manifest cannot be canonicalised: {exc}"]
    reason = signature_problem(manifest["signature"], message, verifiers)
    if reason is not None:
        problems.append(f"signature: {reason}")
    return problems
