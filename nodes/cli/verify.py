"""`vv verify PATH...`: check LogLines offline (schema, signature, known key, chain and its head, artifacts).

Each LogLine is VALID or INVALID with its reasons; a chain that does not reach its head (the sign
node's signed head file, found beside a VV_HOME/storage tree by default, or `--head`) is INVALID.
How each check works: nodes/sign/verify.py. Exit codes: 0 all valid, 1 any invalid, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from bus.client import MqttError
from bus.config import ConfigError, load_settings
from bus.inputs import shown
from nodes.sign.head import head_path
from nodes.sign.keys import KeyStore, KeyStoreError, Verifier, load_public_keys
from nodes.sign.verify import (
    HeadCheck,
    VerifyUsageError,
    broker_head_check,
    default_head_file,
    head_check,
    raise_invalid_alerts,
    verify_paths,
)

PROGRESS_THRESHOLD = 200  # files; below this verification is too quick to need progress output


class _Progress:
    """A bar on a terminal, else a line every 10%: long audits show they are alive."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = 0.0
        self.step = -1

    def __call__(self, done: int, total: int) -> None:
        if total <= PROGRESS_THRESHOLD:
            return
        if self.tty:
            now = time.monotonic()
            if now - self.last < 0.1 and done < total:
                return
            self.last = now
            filled = 30 * done // total
            end = "\n" if done == total else ""
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} LogLines{end}")
        else:
            step = 10 * done // total
            if step == self.step:
                return
            self.step = step
            self.stream.write(f"verified {done}/{total} LogLines ({10 * step}%)\n")
        self.stream.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="LogLine files or directories")
    parser.add_argument(
        "--keys",
        type=Path,
        help="public keys: the JSON of `vv keys export`, or a directory of such files / a key store "
        "(default: the local key store, VV_HOME/keys)",
    )
    parser.add_argument(
        "--head",
        action="append",
        default=[],
        metavar="FILE|[DEVICE:]SEQ:HASH",
        help="a chain head the LogLines must reach: the sign node's signed head file (its signature "
        "checked with the keys) or seq and hash given by an auditor; repeatable. Default: the head "
        f"file of a VV_HOME or VV_HOME/storage tree given as PATH (state/{head_path(Path())})",
    )
    parser.add_argument(
        "--head-from-broker",
        action="store_true",
        help="also check the chain head the sign node keeps in its retained health (signed, so "
        "checked with the keys like a head file)",
    )
    parser.add_argument("--json", action="store_true", help="print a machine-readable report")
    parser.add_argument(
        "--alert", action="store_true", help="raise alert.critical on the bus for each INVALID"
    )
    parser.add_argument(
        "--no-artifacts",
        action="store_true",
        help="do not check video/analytic/summary files against their sha256",
    )


def _load_keys(path: Path | None) -> Mapping[str, Verifier]:
    if path is not None:
        return load_public_keys(path)
    store = KeyStore(load_settings().paths.keys)
    keys = store.verifiers()
    if not keys:
        raise VerifyUsageError(f"no keys in {store.directory}: pass --keys FILE (from `vv keys export`)")
    return keys


def _head_checks(args: argparse.Namespace, keys: Mapping[str, Verifier]) -> list[HeadCheck]:
    broker = [broker_head_check(load_settings(), keys)] if args.head_from_broker else []
    if args.head or broker:
        return [head_check(given, keys) for given in args.head] + broker
    found = default_head_file(args.paths)
    return [] if found is None else [head_check(str(found), keys, default=True)]


def _head_notes(heads: list[HeadCheck]) -> list[str]:
    """What the text output says about the heads used, before their verdicts."""
    if not heads:
        return ["note: no chain head given or found: removed newest LogLines cannot be detected (--head)"]
    return [
        f"chain head: {check.source}, the head file beside the storage tree (default; --head for another)"
        for check in heads
        if check.default
    ]


def run(args: argparse.Namespace) -> int:
    try:
        keys = _load_keys(args.keys)
        settings = load_settings() if args.alert else None
        heads = _head_checks(args, keys)
        invalid: list[dict[str, Any]] = []
        report = verify_paths(
            args.paths,
            keys,
            check_artifacts=not args.no_artifacts,
            on_invalid=invalid.append,
            progress=_Progress(sys.stderr),
            heads=heads,
        )
    except (VerifyUsageError, KeyStoreError, ConfigError) as exc:
        print(f"vv verify: {shown(exc)}", file=sys.stderr)
        return 2
    if settings is not None and invalid:
        try:
            asyncio.run(raise_invalid_alerts(settings, invalid))
        except MqttError as exc:
            print(f"vv verify: could not raise alerts: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for result in report.results:
            print(
                shown(
                    f"VALID {result.path}"
                    if result.valid
                    else f"INVALID {result.path}: {'; '.join(result.reasons)}"
                )
            )
        for line in _head_notes(heads) + [check.line() for check in report.heads]:
            print(shown(line))
        print(report.summary_line() if report.results else "no LogLines found: nothing verified")
    return 0 if report.valid else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vv verify", description=__doc__.splitlines()[0] if __doc__ else None
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
