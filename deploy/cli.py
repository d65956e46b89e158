"""`spb-deploy`: one subcommand per deployment task.

Each subcommand is a function that adds its parser to the subparsers and sets `run`, and
optionally `expected`: the exceptions `main` reports as one line and exit 1 instead of a
traceback. A new one (e.g. `demo`) lives in its own module and is appended to SUBCOMMANDS.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from broker.args import broker_url, positive_seconds
from broker.clock import wall_ms
from broker.keys import KeyFileError
from deploy.access import add_bridge_command, add_revoke, mark_applied, registrations, reload_brokers
from deploy.bus import meter_id_arg
from deploy.chaos_run import add_chaos
from deploy.demo import add_demo
from deploy.flash import add_flash_meter
from deploy.provision import (
    ACCOUNTS,
    DEFAULT_VALID_DAYS,
    INTERVAL_S,
    METERS,
    NO_SOURCE_WORD,
    VALID_DAYS,
    VALIDATORS,
    ProvisionError,
    community_genesis,
    provision,
)
from deploy.server import add_server
from ledger.genesis import (
    DEFAULT_BLOCK_MS,
    DEFAULT_INTERVAL_S,
    GENESIS_FILE,
    MAX_UNITS,
    NO_SOURCE,
    GenesisError,
    read_genesis,
    write_genesis,
)
from ledger.operator_cli import TIMEOUT_S, operator_key, outcome_line, send_as_operator
from wire.messages import SELL_SOURCES


def _within(allowed: range) -> Callable[[str], int]:
    """An argparse type, so out-of-range counts exit 2 with a usage message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"{value} is not in {allowed.start}..{allowed.stop - 1}")
        return value

    return parse


def _source_arg(text: str) -> tuple[str, str]:
    """METER=SOURCE for --source: a meter id and what it sells, or `none` (it cannot sell)."""
    meter, sep, source = text.partition("=")
    if not sep or source not in (*SELL_SOURCES, NO_SOURCE_WORD):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not METER=SOURCE with SOURCE one of {', '.join(SELL_SOURCES)}, {NO_SOURCE_WORD}"
        )
    return meter_id_arg(meter), NO_SOURCE if source == NO_SOURCE_WORD else source


def add_provision(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "provision",
        help="make or grow a community's keys and devcerts",
        description="Create the CA, meters, accounts and validators under DIR; re-running never overwrites a key.",
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--meters", type=_within(METERS), required=True, metavar="N")
    p.add_argument("--accounts", type=_within(ACCOUNTS), metavar="N", help="default: one per meter")
    p.add_argument("--validators", type=_within(VALIDATORS), default=1, metavar="N")
    p.add_argument(
        "--valid-days",
        type=_within(VALID_DAYS),
        default=DEFAULT_VALID_DAYS,
        metavar="D",
        help=f"devcert lifetime (default {DEFAULT_VALID_DAYS})",
    )
    p.add_argument(
        "--new-ca",
        action="store_true",
        help="if ca/ca.key is missing, make a new CA and reissue every devcert "
        "(every flashed meter must be reflashed); ignored while ca/ca.key exists",
    )
    p.add_argument(
        "--genesis-units",
        type=_within(range(0, MAX_UNITS + 1)),
        metavar="UNITS",
        help="also write DIR/genesis.cbor for `spb-ledger run DIR`: every account opens with "
        "UNITS; written once, refused if a different genesis is there",
    )
    p.add_argument(
        "--monitor",
        action="append",
        default=[],
        metavar="NAME",
        help="a read-only monitoring user with a certificate in DIR/monitoring/NAME (repeat; "
        "the first run makes `monitor`; `spb-monitor mirror` has its own, always made, in DIR/mirror)",
    )
    p.add_argument(
        "--broker-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name or address meters reach the main broker by, for its certificate (repeat; "
        "replaces the stored list; default localhost and loopback)",
    )
    p.add_argument(
        "--block-ms",
        type=_within(range(1, 3_600_001)),
        default=DEFAULT_BLOCK_MS,
        metavar="MS",
        help=f"the genesis' shortest time between blocks (default {DEFAULT_BLOCK_MS})",
    )
    p.add_argument(
        "--source",
        type=_source_arg,
        action="append",
        default=[],
        metavar="METER=SOURCE",
        help=f"what a household meter sells on the market: {', '.join(SELL_SOURCES)}, or {NO_SOURCE_WORD} "
        "(repeat; a meter not named keeps its recorded source, none at first: it cannot sell)",
    )
    p.add_argument(
        "--interval-s",
        type=_within(INTERVAL_S),
        metavar="S",
        help=f"the market's trading interval in the genesis (default: the recorded one, else {DEFAULT_INTERVAL_S})",
    )
    p.add_argument(
        "--reveal-s",
        type=_within(range(0, INTERVAL_S.stop)),
        metavar="S",
        help="the window after an interval's gate for revealing sealed bids, shorter than the interval "
        "(default: the recorded one, else 60 s or half the interval if shorter)",
    )
    p.add_argument(
        "--broker",
        type=broker_url,
        metavar="URL",
        help="a running community: send the `register` of each household its genesis lacks to the ledger "
        "through this broker (mqtts://HOST:PORT as DIR/operator, or HOST:PORT for plain MQTT in "
        "development) and wait until each account shows on the bus",
    )
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=TIMEOUT_S,
        metavar="S",
        help=f"with --broker: wait this long for the ledger (default {TIMEOUT_S:g})",
    )
    # A bad dir, a malformed key file, a community in a state to fix by hand: the operator's to fix.
    p.set_defaults(run=_run_provision, expected=(OSError, KeyFileError, ProvisionError, GenesisError, ValueError))


def _run_provision(args: argparse.Namespace) -> int:
    community = provision(
        args.dir,
        args.meters,
        args.accounts,
        args.validators,
        now_ms=wall_ms(),
        valid_days=args.valid_days,
        new_ca=args.new_ca,
        monitors=tuple(args.monitor),
        broker_hosts=tuple(args.broker_host),
        sources=dict(args.source),
        interval_s=args.interval_s,
        reveal_s=args.reveal_s,
    )
    sellers = [f"{m.id} {m.source}" for m in community.meters if m.source]
    print(f"community  {community.root}")
    print(f"meters     {len(community.meters)}")
    print(f"accounts   {len(community.accounts)}")
    print(f"validators {len(community.validators)}")
    print(f"market     interval {community.market.interval_s} s, reveal {community.market.reveal_s} s")
    print(f"sellers    {', '.join(sellers) or 'none'}")
    print(f"wrote      {community.toml_path}")
    if args.genesis_units is not None:
        genesis = community_genesis(community, args.genesis_units, args.block_ms)
        written = write_genesis(args.dir, genesis)
        print(f"genesis    {genesis.hash.hex()} ({'written' if written else 'unchanged'})")
    elif (args.dir / GENESIS_FILE).exists():
        print(f"genesis    {read_genesis(args.dir).hash.hex()} (kept: a chain's genesis never changes)")
    reloaded = reload_brokers(args.dir)
    print(f"brokers    {', '.join(str(h) for h in reloaded) or 'none running here'} re-read the ACL and CRL")
    return _register_households(args, community) if (args.dir / GENESIS_FILE).exists() else 0


def _register_households(args: argparse.Namespace, community) -> int:
    """The running community's new households join the ledger: their `register`s, sent with --broker."""
    genesis = read_genesis(args.dir)
    if genesis.market is None:  # a v1 chain: no operators, no meters to register
        return 0
    pending = registrations(args.dir, community, genesis, wall_ms())
    if not pending:
        return 0
    names = " ".join(name for name, _ in pending)
    if args.broker is None:
        print(f"register   {names}: not on the ledger yet; run again with --broker URL")
        return 0
    operator_key(args.dir, genesis)  # refused here if the genesis does not list it
    outcomes = send_as_operator(args.dir, args.broker, [expect for _, expect in pending], args.timeout)
    for (name, expect), outcome in zip(pending, outcomes, strict=True):
        account = expect.appears or bytes.fromhex(next(a.pk for a in community.accounts if a.id == name))
        print(outcome_line(f"register {name}", account, outcome))
        if outcome.applied:
            mark_applied(args.dir, name)
    return 0 if all(o.applied for o in outcomes) else 1


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_provision,
    add_revoke,
    add_bridge_command,
    add_demo,
    add_flash_meter,
    add_server,
    add_chaos,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spb-deploy", description="Flash meters and provision communities.")
    parser.set_defaults(expected=())
    subparsers = parser.add_subparsers(required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except args.expected as exc:
        print(f"spb-deploy: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: Exception) -> str:
    """OSError's str starts with "[Errno N]"; the file and the reason read better."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


if __name__ == "__main__":
    raise SystemExit(main())
