"""`vv cleanup`: age-based retention under given roots, safe by construction (the rules, and why each
exists: nodes/ops/cleanup.py). `--dry-run` lists exactly what a real run deletes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bus.argtypes import non_negative_float, output_file
from bus.inputs import shown
from bus.jobs import add_job_argument, report_if_job
from nodes.ops.cleanup import (
    CleanupError,
    JsonLog,
    Progress,
    apply_plan,
    check_roots,
    parse_min_free,
    plan_as_result,
    plan_cleanup,
    protected_paths,
    summary,
)


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TB"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--days", type=non_negative_float, required=True, help="delete files older than this many days"
    )
    parser.add_argument("--dirs", required=True, help="comma-separated roots, e.g. var/storage,var/logs")
    parser.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    parser.add_argument(
        "--log-file", type=output_file, help="JSON-lines action log (default VV_HOME/logs/cleanup.log)"
    )
    parser.add_argument(
        "--min-free-space", help="only delete (oldest first) until this is free: 15%% or 20GB (KB/MB/GB/TB)"
    )
    parser.add_argument(
        "--exclude-patterns", default="", help="comma-separated globs to keep, e.g. '*.lock,*.logline.json'"
    )
    parser.add_argument(
        "--include-quarantine",
        action="store_true",
        help="also clean quarantined evidence (VV_HOME/corrupted)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary (and dry-run list) as JSON")
    add_job_argument(parser)


def _progress_printer() -> Progress | None:
    if not sys.stderr.isatty():
        return None

    def show(what: str, count: int) -> None:
        print(f"\r{what} {count} ...", end="", file=sys.stderr, flush=True)

    return show


def run(args: argparse.Namespace) -> int:
    from bus.config import ConfigError, load_settings

    try:
        settings = load_settings()
        min_free = parse_min_free(args.min_free_space) if args.min_free_space else None
        roots = check_roots(args.dirs.split(","), protected_paths(settings.home.resolve()))
    except (ConfigError, CleanupError) as exc:
        print(f"vv cleanup: {shown(exc)}", file=sys.stderr)
        return 2
    progress = _progress_printer()
    plan = plan_cleanup(
        roots,
        args.days,
        exclude=[p.strip() for p in args.exclude_patterns.split(",") if p.strip()],
        quarantine=settings.paths.corrupted,
        include_quarantine=args.include_quarantine,
        min_free=min_free,
        progress=progress,
    )
    log_path: Path = args.log_file or settings.paths.logs / "cleanup.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        result = plan_as_result(plan) if args.dry_run else apply_plan(plan, log, progress)
        figures = summary(result, args.dry_run)
        summary_log = JsonLog(log)
        summary_log.write("summary", ",".join(roots), **figures)
        summary_log.flush()
    if progress is not None:
        print("", file=sys.stderr)
    if args.json:
        doc: dict[str, object] = dict(figures)
        doc["skipped_paths"] = [{"path": p, "reason": r} for p, r in result.skipped]
        doc["error_paths"] = [{"path": p, "error": e} for p, e in result.errors]
        if args.dry_run:
            doc["delete"] = result.deleted
            doc["rmdirs"] = result.removed_dirs
        print(json.dumps(doc, indent=2))
    else:
        if args.dry_run:
            for path in [*result.deleted, *result.removed_dirs]:
                print(f"would delete {shown(path)}")
        for path, error in result.errors:
            print(f"error {shown(path)}: {shown(error)}", file=sys.stderr)
        skipped = figures["skipped"]
        assert isinstance(skipped, dict)
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(skipped.items())) or "none"
        verb = "would delete" if args.dry_run else "deleted"
        print(
            f"cleanup: {verb} {figures['files']} files ({_human(result.deleted_bytes)}), "
            f"{figures['dirs']} empty dirs; skipped: {reasons}; errors: {figures['errors']}"
        )
    if not args.dry_run:
        report_if_job(args, settings, "cleanup", not result.errors, figures)
    return 1 if result.errors else 0
