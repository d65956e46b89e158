"""`spb-ledger fund|withdraw|retire|rotate`: the operator moves money in and out, closes
accounts and replaces a household's lost key (docs/PROTOCOL.md §10), signed with
DIR/operator/operator.key and sent through the broker.

Each waits for the ledger's word and prints it: exit 0 applied, 1 rejected (with the §4
reason) or no answer in time, 2 a usage error (an unknown account among them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from broker.args import BROKER_HELP, broker_url, hex_bytes, positive_seconds
from broker.clock import wall_ms
from broker.keys import load_key
from broker.outcome import Expect, Outcome, bus_client, send_and_wait
from ledger import operator
from ledger.genesis import Genesis, GenesisError, read_genesis

TIMEOUT_S = 30.0
MAX_AMOUNT = (1 << 63) - 1


def send_as_operator(root: Path, url, expects: list[Expect], timeout_s: float) -> list[Outcome]:
    """Send operator transactions of the community in `root` through the broker at `url`
    (as DIR/operator over TLS, or plain) and wait for each outcome (broker.outcome)."""
    genesis = read_genesis(root)
    client = bus_client(url, operator.OPERATOR, root / operator.OPERATOR)
    blocks = operator.block_time(genesis.validators)
    return send_and_wait(client, genesis.verifier(), expects, timeout_s, wall_ms, blocks)


def operator_key(root: Path, genesis: Genesis):
    """The operator's signing key, refused here if the genesis does not list it (the ledger
    would reject everything it signs as `not-operator`)."""
    key = load_key(operator.operator_key_path(root))
    if bytes(key.verify_key) not in genesis.operators:
        raise GenesisError(
            f"{operator.operator_key_path(root)} is not an operator of {root}'s genesis"
            f"{' (it lists none: made before operators)' if not genesis.operators else ''}; "
            "a chain's genesis never changes"
        )
    return key


def _amount(text: str) -> int:
    if not text.isdecimal() or not 0 < int(text) <= MAX_AMOUNT:
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a whole number of units from 1 to {MAX_AMOUNT}")
    return int(text)


def _ref(text: str) -> str:
    if not 0 < len(text) <= 64:
        raise argparse.ArgumentTypeError("a reference is 1 to 64 characters (the external payment's id)")
    return text


def cmd_money(args: argparse.Namespace) -> int:
    """fund, withdraw (a `payout` on the wire) and retire."""
    try:
        account = operator.resolve_account(args.dir, args.account)
    except ValueError as exc:
        print(f"spb-ledger: {exc}", file=sys.stderr)
        return 2
    genesis = read_genesis(args.dir)
    key, t = operator_key(args.dir, genesis), wall_ms()
    if args.command == "fund":
        expect = operator.fund(key, account, args.amount, args.ref, t)
    elif args.command == "withdraw":
        expect = operator.payout(key, account, args.amount, args.ref, t)
    elif args.command == "rotate":
        expect = operator.rotate(key, account, args.new, t)
    else:
        expect = operator.retire(key, account, t)
    [outcome] = send_as_operator(args.dir, args.broker, [expect], args.timeout)
    print(outcome_line(args.command, account, outcome))
    return 0 if outcome.applied else 1


def outcome_line(what: str, account: bytes, outcome: Outcome) -> str:
    """One line: `applied` or `rejected <reason>`, the message hash, and the account's money."""
    head = f"applied    {what}" if outcome.applied else f"rejected   {what}: {outcome.reason}"
    money = ""
    if outcome.status is not None:
        money = f", balance {outcome.status.balance} held {outcome.status.held} after block {outcome.status.h}"
    return f"{head} (message {outcome.hash.hex()}) account {account.hex()}{money}"


def add_operator_commands(sub: argparse._SubParsersAction) -> None:
    for name, help_text, amount in (
        ("fund", "credit an account against an external payment (a `fund`, taken once per --ref)", True),
        ("withdraw", "pay units out of an account's free balance (a `payout`, taken once per --ref)", True),
        ("retire", "close an account: no new trades; open ones end normally; pay it out after", False),
        ("rotate", "replace a household's lost account key with NEWKEY (its money and meters follow)", False),
    ):
        p = sub.add_parser(name, help=help_text, description=__doc__.splitlines()[0])
        p.add_argument("dir", type=Path, metavar="DIR", help="the community (spb-deploy provision's DIR)")
        p.add_argument("account", metavar="ACCOUNT", help="a meter id (0003 or m0003), an account id, or the key's hex")
        if amount:
            p.add_argument("amount", type=_amount, metavar="AMOUNT", help="units")
            p.add_argument("--ref", type=_ref, required=True, metavar="REF", help="the external payment's reference")
        if name == "rotate":
            p.add_argument("new", type=hex_bytes(32, "32-byte key"), metavar="NEWKEY", help="the new public key, hex")
        p.add_argument(
            "--broker",
            type=broker_url,
            required=True,
            metavar="URL",
            help=BROKER_HELP.replace("state dir", "DIR/operator"),
        )
        p.add_argument(
            "--timeout",
            type=positive_seconds,
            default=TIMEOUT_S,
            metavar="S",
            help=f"wait this long (default {TIMEOUT_S:g})",
        )
        p.set_defaults(run=cmd_money)
