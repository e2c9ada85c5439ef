"""`vv`: one command for operators. Each verb lives in its own module, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys
import typing
from collections.abc import Sequence

from bus.config import ConfigError
from bus.inputs import shown

# verb -> (module with add_arguments/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("nodes.cli.up", "start the broker and every node of the device, supervised"),
    "run": ("nodes.cli.run", "run one node in the foreground (a process of the mesh)"),
    "broker": ("nodes.cli.broker", "run the edge mosquitto broker configured for VV_HOME"),
    "ingest": ("nodes.cli.ingest", "ingest video files now (moved, or copied with --copy) and announce them"),
    "tail": ("nodes.cli.tail", "print live events decoded, one line each"),
    "status": ("nodes.cli.status", "fold the journal into each video's state"),
    "replay": ("nodes.cli.replay", "re-publish journal events (same ids: consumers dedupe)"),
    "verify": ("nodes.cli.verify", "verify signed LogLines: signature, key, chain, chain head, artifacts"),
    "keys": ("nodes.cli.keys", "generate, list and export signing keys"),
    "cleanup": ("nodes.cli.cleanup", "remove old files under given roots, safely"),
    "export": ("nodes.cli.export", "export logs as a signed tarball, or verify one"),
    "console": ("nodes.cli.console", "run the central console service: fleet state, alerts, chain witness"),
    "fleet": ("nodes.cli.fleet", "enrol devices, and see and act on the fleet from the console's store"),
    "demo": ("nodes.cli.demo", "run the whole pipeline once on a sample video and verify its LogLine"),
    "model": (
        "nodes.cli.model",
        "export a YOLO model to ONNX for lean edge boxes, or quantize it to int8",
    ),
}


class Parser(argparse.ArgumentParser):
    """argparse echoes the offending argument in its errors: escape it (subparsers share this class)."""

    def error(self, message: str) -> typing.NoReturn:
        super().error(shown(message))


def build_parser(verbs: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = Parser(
        prog="vv",
        description="VV Edge: edge video-AI as an event-sourced MQTT mesh.",
        epilog="Settings: VV_CONFIG=file.toml, overridden by VV_<SECTION>_<KEY> variables.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for verb, (module_name, help_text) in COMMANDS.items():
        if verbs is not None and verb not in verbs:
            sub.add_parser(verb, help=help_text, add_help=False)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # a verb whose module is not part of this build
        command = sub.add_parser(verb, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    # Import only the module of the verb in use (fast startup, and a missing optional extra never
    # breaks unrelated verbs); `vv --help` imports them all to list them.
    parser = build_parser([verb] if verb in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"vv: configuration error: {shown(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # VV_HOME or a directory under it unusable (not a directory, no access, full)
        print(f"vv {args.command}: {shown(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
