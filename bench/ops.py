"""Operations benchmarks: each compares our tool with the standard one on the same data, same run.

- cleanup: files/s deleting 100k small old files, `vv cleanup` (plan_cleanup + apply_plan, with its
  JSON action log and the /proc open-file scan) vs `find ROOT -type f -mtime +N -delete`
  (goal: within 2x of find's time).
- export: MB/s of log text bundled, `vv export` (export_logs: deterministic tar.gz, per-file and
  tarball sha256, signed manifest) vs `tar czf` (goal: within 1.5x of tar's time); plus the
  throughput of `vv export --verify`.

Run: `.venv/bin/python bench/ops.py [--files N] [--mb N] [--only cleanup,export]`.
Each benchmark is a function returning table rows, so others (the alerter's) can be added alongside.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodes.ops.cleanup import apply_plan, plan_cleanup
from nodes.ops.export import export_logs, verify_export
from nodes.sign.keys import KeyStore

DAY = 86400.0


@dataclass
class Row:
    bench: str
    tool: str
    seconds: float
    amount: float
    unit: str  # what `amount` counts: "files", "MB"
    baseline: float | None = None  # the reference tool's seconds, for the ratio
    ref: bool = False  # this row is the reference the next one is compared with

    @property
    def rate(self) -> float:
        return self.amount / self.seconds if self.seconds > 0 else float("inf")

    @property
    def ratio(self) -> str:
        if self.baseline:
            return f"{self.seconds / self.baseline:.2f}x"
        return "ref" if self.ref else "-"


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def build_tree(root: Path, files: int, per_dir: int = 1000, age_days: float = 30) -> None:
    """`files` small files, `per_dir` per directory, all `age_days` old (directories young)."""
    stamp = time.time() - age_days * DAY
    payload = b"x" * 100
    for index in range(files):
        directory = root / f"d{index // per_dir:04d}"
        if index % per_dir == 0:
            directory.mkdir(parents=True)
        path = f"{directory}/f{index:06d}.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, payload)
        os.close(fd)
        os.utime(path, (stamp, stamp))


def bench_cleanup(work: Path, files: int, rounds: int) -> list[Row]:
    """`vv cleanup` vs `find -mtime +N -delete` on identical trees of old small files, best of `rounds`.

    Each round builds one tree per tool and alternates which tool runs first, and every timed run
    starts after a sync, so neither is favoured by a warmer cache or a quieter disk.
    """
    log_path = work / "cleanup.log"
    best = {"find": float("inf"), "vv": float("inf"), "plan": float("inf")}

    def run_find(root: Path) -> None:
        subprocess.run(["find", str(root), "-type", "f", "-mtime", "+7", "-delete"], check=True)
        assert not any(root.rglob("*.bin")), "find left files behind"

    def run_vv(root: Path) -> None:
        start = time.perf_counter()
        plan = plan_cleanup((str(root),), 7)
        best["plan"] = min(best["plan"], time.perf_counter() - start)
        with log_path.open("a", encoding="utf-8") as log:
            result = apply_plan(plan, log)
        assert len(result.deleted) == files, (len(result.deleted), result.errors[:3])

    tools: list[tuple[str, Callable[[Path], None]]] = [("find", run_find), ("vv", run_vv)]
    for round_ in range(rounds):
        order = tools if round_ % 2 == 0 else tools[::-1]
        print(f"cleanup round {round_ + 1}/{rounds}: building 2 x {files} files ...", file=sys.stderr)
        for name, _ in order:
            build_tree(work / f"{name}{round_}", files)
        for name, action in order:
            root = work / f"{name}{round_}"
            os.sync()  # start clean: no tool pays for the writeback of the trees just built
            best[name] = min(best[name], timed(functools.partial(action, root)))
    return [
        Row("cleanup", "find -mtime +7 -delete", best["find"], files, "files", ref=True),
        Row("cleanup", "vv cleanup (plan+apply+log)", best["vv"], files, "files", baseline=best["find"]),
        Row("cleanup", "  of which plan (walk, decide)", best["plan"], files, "files"),
    ]


_LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARNING", "ERROR")
_NODES = ("ingest", "scan", "summarize", "sign", "journal", "monitor")
_MESSAGES = (
    "video accepted",
    "detections written",
    "summary done",
    "logline signed",
    "segment rolled",
    "health published",
)


def write_logs(logs: Path, megabytes: int, files: int = 4) -> int:
    """Log-like JSON lines (timestamps, levels, ids, numbers): compresses like real app logs."""
    logs.mkdir(parents=True)
    rng = random.Random(7)
    start = datetime(2024, 3, 10, tzinfo=UTC)
    per_file = megabytes * 1024 * 1024 // files
    total = 0
    for index in range(files):
        lines: list[str] = []
        size = 0
        second = 0.0
        while size < per_file:
            second += rng.random() * 0.05
            when = (
                (start + timedelta(seconds=second)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            )
            line = (
                f'{{"time":"{when}","level":"{rng.choice(_LEVELS)}","node":"{rng.choice(_NODES)}",'
                f'"msg":"{rng.choice(_MESSAGES)}","video":"{rng.getrandbits(128):032x}",'
                f'"seq":{rng.randrange(1 << 20)},"ms":{rng.random() * 500:.3f}}}\n'
            )
            lines.append(line)
            size += len(line)
        name = "app.log" if index == 0 else f"app.log.{index}"
        data = "".join(lines).encode()
        (logs / name).write_bytes(data)
        total += len(data)
    return total


def bench_export(work: Path, megabytes: int, rounds: int) -> list[Row]:
    """`vv export` vs `tar czf` on the same logs directory, best of `rounds` (alternating order)."""
    home = work / "home"
    print(f"export: writing {megabytes} MB of logs ...", file=sys.stderr)
    mb = write_logs(home / "logs", megabytes) / 1e6
    tar_out, out = work / "tar.tar.gz", work / "exports"
    store = KeyStore(work / "keys")
    store.generate()
    signer = store.signer()
    day = datetime.now(UTC).date()

    def run_tar() -> None:
        subprocess.run(["tar", "czf", str(tar_out), "-C", str(home), "logs"], check=True)

    def run_vv() -> None:
        shutil.rmtree(out, ignore_errors=True)  # a fresh export each round, not the "unchanged" path
        assert export_logs(home / "logs", out, "bench", day, day, signer).status == "written"

    best = {"tar": float("inf"), "vv": float("inf")}
    tools: list[tuple[str, Callable[[], None]]] = [("tar", run_tar), ("vv", run_vv)]
    for round_ in range(rounds):
        for name, action in tools if round_ % 2 == 0 else tools[::-1]:
            best[name] = min(best[name], timed(action))
    tarball = next(out.glob("*.tar.gz"))
    verify_s = timed(lambda: verify_export(tarball, store.verifiers()))
    print(
        f"export: {mb:.0f} MB compressed to {tar_out.stat().st_size / 1e6:.1f} MB by tar, "
        f"{tarball.stat().st_size / 1e6:.1f} MB by vv export",
        file=sys.stderr,
    )
    return [
        Row("export", "tar czf", best["tar"], mb, "MB", ref=True),
        Row(
            "export", "vv export (tar.gz+sha256+signed manifest)", best["vv"], mb, "MB", baseline=best["tar"]
        ),
        Row("export", "vv export --verify", verify_s, mb, "MB"),
    ]


def print_table(rows: list[Row]) -> None:
    header = f"{'bench':<8} {'tool':<44} {'seconds':>8} {'rate':>16} {'time vs ref':>12}"
    print(header)
    print("-" * len(header))
    for row in rows:
        rate = f"{row.rate:,.0f} {row.unit}/s" if row.unit != "MB" else f"{row.rate:,.1f} {row.unit}/s"
        print(f"{row.bench:<8} {row.tool:<44} {row.seconds:>8.2f} {rate:>16} {row.ratio:>12}")


def bench_alerts(alerts: int, keys: int) -> list[Row]:
    """The alerter folding and forwarding `alerts` (over `keys` distinct alerts) through a real broker."""
    from bench.alerts import end_to_end_rate, fold_rate  # a real broker, alerter and receiver

    fold = fold_rate(alerts, keys)
    e2e, posts = end_to_end_rate(alerts, keys)
    return [
        Row("alerts", "alerter fold (in process)", alerts / fold, alerts, "alerts"),
        Row("alerts", f"alerter end to end ({posts} notifications sent)", alerts / e2e, alerts, "alerts"),
    ]


BENCHES: dict[str, Callable[[Path, argparse.Namespace], list[Row]]] = {
    "cleanup": lambda work, args: bench_cleanup(work, args.files, args.rounds),
    "export": lambda work, args: bench_export(work, args.mb, args.rounds),
    "alerts": lambda work, args: bench_alerts(args.alerts, 50),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=100_000, help="cleanup: files per tree")
    parser.add_argument("--rounds", type=int, default=2, help="runs per tool; the best is reported")
    parser.add_argument("--mb", type=int, default=200, help="export: megabytes of log text")
    parser.add_argument("--alerts", type=int, default=5000, help="alerts: alerts to publish")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated: " + ", ".join(BENCHES))
    parser.add_argument("--dir", type=Path, help="work directory (default: a fresh temp dir, removed after)")
    args = parser.parse_args()
    rows: list[Row] = []
    for name in args.only.split(","):
        if name not in BENCHES:
            parser.error(f"unknown benchmark {name!r}")
        work = Path(tempfile.mkdtemp(prefix=f"vv-bench-{name}-", dir=args.dir))
        try:
            rows += BENCHES[name](work, args)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
