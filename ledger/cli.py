"""`spb-ledger`: the ledger's command line.

`verify` is the operator's "why was this rejected?" tool: it runs exactly the stateless
checks a validator runs and prints the §4 reason code.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from broker.clock import wall_ms
from broker.cose import MAX_MESSAGE
from broker.messages import BODY_TYPES
from broker.reasons import Reject
from broker.verify import Verifier


def hex_key(text: object) -> bytes:
    """A 32-byte Ed25519 public key from hex; ValueError for anything else."""
    try:
        key = bytes.fromhex(text)
    except (TypeError, ValueError):
        key = b""
    if len(key) != 32:
        raise ValueError(f"{str(text)[:80]!r} is not a 32-byte key in hex")
    return key


def _key_arg(text: str) -> bytes:
    try:
        return hex_key(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _read(path: str) -> bytes:
    """At most one byte over the size limit: enough to reject it, and /dev/zero cannot hang us."""
    if path == "-":
        return sys.stdin.buffer.read(MAX_MESSAGE + 1)
    with open(path, "rb") as f:
        return f.read(MAX_MESSAGE + 1)


def _community_keys(path: Path) -> tuple[list[bytes], list[bytes]]:
    """(CA keys, validator keys) from a community.toml written by `spb-deploy provision`."""
    toml_path = path / "community.toml" if path.is_dir() else path
    community = tomllib.loads(toml_path.read_text())
    return ([hex_key(community["ca"]["pk"])],
            [hex_key(v["pk"]) for v in community.get("validators", [])])


def cmd_verify(args: argparse.Namespace) -> int:
    now = args.now if args.now is not None else wall_ms()
    cas, validators = list(args.ca), list(args.validator)
    if args.community is not None:
        try:
            more_cas, more_validators = _community_keys(args.community)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            print(f"spb-ledger: cannot read the community at {args.community}: {exc}", file=sys.stderr)
            return 2
        cas += more_cas
        validators += more_validators
    verifier = Verifier(cas=cas, validators=validators)
    try:
        raw = _read(args.file)
    except OSError as exc:
        print(f"spb-ledger: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        opened = verifier.verify(raw, now, expect=args.expect, device_key=args.device)
    except Reject as exc:
        print(f"reject {exc.reason}")
        if exc.detail:
            print(exc.detail, file=sys.stderr)
        return 1
    print(f"ok {opened.body.typ} {opened.hash.hex()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spb-ledger", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="run the stateless checks of PROTOCOL.md §4 on one message")
    verify.add_argument("file", help="file holding one raw message, or - for stdin")
    verify.add_argument("--ca", type=_key_arg, action="append", default=[], metavar="HEX",
                        help="trusted manufacturer CA public key (repeatable)")
    verify.add_argument("--validator", type=_key_arg, action="append", default=[], metavar="HEX",
                        help="ledger validator public key, for status and reject messages (repeatable)")
    verify.add_argument("--community", type=Path, metavar="DIR",
                        help="also trust the CA and validators listed in DIR/community.toml")
    verify.add_argument("--device", type=_key_arg, metavar="HEX", help="device key of the meter, for readings")
    verify.add_argument("--now", type=int, metavar="MS", help="verifier clock, ms since the epoch (default: now)")
    verify.add_argument("--expect", choices=sorted(BODY_TYPES), metavar="TYP",
                        help="reject a body of any other typ as `type`")
    verify.set_defaults(run=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
