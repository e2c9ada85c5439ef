"""`vv keys generate|list|export`: manage the signing keys in VV_HOME/keys.

`export` prints the public keys as `{"<key_id>": "<base64 public key>"}` for auditors
(`vv verify --keys FILE`); HMAC keys are shared secrets and are never exported.
"""

from __future__ import annotations

import argparse
import json
import sys

from bus.config import ConfigError, load_settings
from nodes.sign.keys import ALGS, Alg, KeyStore, KeyStoreError
from nodes.sign.settings import SignSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="generate|list|export")
    generate = verbs.add_parser("generate", help="create a key (it becomes the active signing key)")
    generate.add_argument("--alg", choices=ALGS, help="signature algorithm (default: the sign.alg setting)")
    generate.add_argument(
        "--no-activate", action="store_true", help="keep signing with the current key (prepare a rotation)"
    )
    listing = verbs.add_parser("list", help="show the known keys and which one signs")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    verbs.add_parser("export", help="print the public keys as JSON for `vv verify --keys`")


def _generate(store: KeyStore, alg: Alg, activate: bool) -> int:
    info = store.generate(alg, activate=activate)
    print(info.key_id)
    state = "active" if info.active else "not active"
    print(f"generated {info.alg} key {info.key_id} ({state}) in {info.path}", file=sys.stderr)
    return 0


def _list(store: KeyStore, as_json: bool) -> int:
    infos = store.list()
    if as_json:
        print(json.dumps([info.to_dict() for info in infos], indent=2))
    elif not infos:
        print(f"no keys in {store.directory}: run `vv keys generate`", file=sys.stderr)
    else:
        print(f"{'KEY ID':<16}  {'ALG':<11}  {'CREATED':<24}  ACTIVE")
        for info in infos:
            print(f"{info.key_id:<16}  {info.alg:<11}  {info.created_at:<24}  {'*' if info.active else ''}")
    return 0


def _export(store: KeyStore) -> int:
    public = store.public_keys()
    secret = [info.key_id for info in store.list() if info.public_key is None]
    if secret:
        print(f"not exported: {', '.join(secret)} (hmac-sha256 keys are secret)", file=sys.stderr)
    if not public:
        print(f"no Ed25519 keys in {store.directory} to export", file=sys.stderr)
        return 1
    print(json.dumps(public, indent=2, sort_keys=True))
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
        store = KeyStore(settings.paths.keys)
        if args.verb == "generate":
            return _generate(store, args.alg or settings.section(SignSettings).alg, not args.no_activate)
        if args.verb == "list":
            return _list(store, args.json)
        return _export(store)
    except ConfigError as exc:
        print(f"vv keys: {exc}", file=sys.stderr)
        return 2
    except KeyStoreError as exc:
        print(f"vv keys: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vv keys", description="Manage the signing keys in VV_HOME/keys.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
