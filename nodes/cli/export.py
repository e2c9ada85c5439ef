"""`vv export`: a signed, verifiable, reproducible bundle of the device's logs (and journal segments)
for a day or a range, or `--verify` of one. What is selected and how it is signed: nodes/ops/export.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bus.argtypes import non_negative_int, output_dir
from bus.inputs import regular_file, shown
from bus.jobs import add_job_argument, report_if_job
from nodes.ops.export import ExportError, Signer, apply_retention, export_logs, export_paths, verify_export
from nodes.sign.settings import SignSettings


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", type=_day, help="UTC day to export (default: yesterday)")
    parser.add_argument("--from", dest="from_", type=_day, metavar="DATE", help="first UTC day of a range")
    parser.add_argument("--to", type=_day, metavar="DATE", help="last UTC day of a range (inclusive)")
    parser.add_argument("--out", type=output_dir, help="output directory (default: VV_HOME/exports)")
    parser.add_argument(
        "--retention-days", type=non_negative_int, help="delete exports older than this many days"
    )
    parser.add_argument("--verify", type=Path, metavar="FILE", help="verify an export (tarball or manifest)")
    parser.add_argument("--keys", type=Path, help="public keys JSON from `vv keys export` (for --verify)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_job_argument(parser)


def _emit(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    print(json.dumps(doc, indent=2) if args.json else text)


def _verify_cli(args: argparse.Namespace, keys_dir: Path) -> int:
    path: Path = args.verify
    try:
        regular_file(path)
        # its partner is read too: it may be absent (a problem reported below), not a FIFO or device
        for part in export_paths(path):
            if part != path and (part.exists() or part.is_symlink()):
                regular_file(part)
    except ValueError as exc:  # InputError, or a name that is neither a tarball nor a manifest
        print(f"vv export: {shown(exc)}", file=sys.stderr)
        return 2
    from nodes.sign.keys import KeyStore, KeyStoreError, load_public_keys

    try:
        verifiers = load_public_keys(args.keys) if args.keys is not None else KeyStore(keys_dir).verifiers()
    except KeyStoreError as exc:
        print(f"vv export: {shown(exc)}", file=sys.stderr)
        return 2
    problems = verify_export(path, verifiers)
    status = "INVALID" if problems else "VALID"
    _emit(args, {"path": str(path), "valid": not problems, "problems": problems}, f"{status} {shown(path)}")
    if not args.json:
        for problem in problems:
            print(f"  {shown(problem)}")
    return 1 if problems else 0


def _range(args: argparse.Namespace) -> tuple[date, date]:
    if args.date is not None and (args.from_ is not None or args.to is not None):
        raise ValueError("give --date or --from/--to, not both")
    if (args.from_ is None) != (args.to is None):
        raise ValueError("--from and --to go together")
    if args.from_ is not None:
        if args.to < args.from_:
            raise ValueError("--to is before --from")
        return args.from_, args.to
    day = args.date or datetime.now(UTC).date() - timedelta(days=1)
    return day, day


def run(args: argparse.Namespace) -> int:
    from bus.config import ConfigError, load_settings

    try:
        settings = load_settings()
        if args.verify is not None:
            return _verify_cli(args, settings.paths.keys)
        first, last = _range(args)
    except (ConfigError, ValueError) as exc:
        print(f"vv export: {shown(exc)}", file=sys.stderr)
        return 2
    from nodes.sign.keys import KeyStore, KeyStoreError

    out_dir: Path = args.out or settings.paths.exports
    try:
        signer: Signer = KeyStore(settings.paths.keys).signer(
            key_id=settings.section(SignSettings).key_id or None
        )
        result = export_logs(
            settings.paths.logs,
            out_dir,
            settings.device,
            first,
            last,
            signer,
            journal_dir=settings.paths.journal,
        )
    except (ExportError, KeyStoreError, OSError) as exc:
        print(f"vv export: {shown(exc)}", file=sys.stderr)
        report_if_job(args, settings, "export", False, {"error": str(exc)})
        return 1
    if args.retention_days is not None:
        keep = {p for p in (result.tarball, result.manifest) if p is not None}
        result.removed = apply_retention(out_dir, args.retention_days, datetime.now(UTC).date(), keep)
    span = first.isoformat() if first == last else f"{first} .. {last}"
    text = {
        "empty": f"no log files for {span}: nothing exported",
        "unchanged": f"identical export already present, left as is: {shown(result.tarball)}",
        "written": f"exported {result.files} files ({result.bytes} bytes) for {span} to {shown(result.tarball)}",
    }[result.status]
    text += "".join(f"\nretention: removed {shown(p)}" for p in result.removed)
    doc = {
        "status": result.status,
        "tarball": str(result.tarball) if result.tarball else None,
        "manifest": str(result.manifest) if result.manifest else None,
        "files": result.files,
        "bytes": result.bytes,
        "sha256": result.sha256,
        "removed": [str(p) for p in result.removed],
    }
    _emit(args, doc, text)
    report_if_job(args, settings, "export", True, {k: v for k, v in doc.items() if k != "removed"})
    return 0
