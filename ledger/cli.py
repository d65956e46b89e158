"""`spb-ledger`: the ledger's command line.

`init` writes a genesis, `run` is a validator on the bus, `fund`, `withdraw`, `retire` and
`rotate` are the operator's (ledger.operator_cli), `balance`, `show`, `head`, `audit`,
`proof` and `statement` read a validator's database (also while it runs), `check-proof`
needs only the genesis. `verify` is the operator's "why was this rejected?" tool: it runs exactly the
stateless checks a validator runs and prints the §4 reason code. `clear` prints the fills
of one trading interval's order book (ledger/clearing.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import tomllib
from pathlib import Path

from broker.args import BROKER_HELP, broker_url, hex_bytes, listen_port, parse_hex
from broker.clock import wall_ms
from broker.keys import KeyFileError, public_hex, write_new_key
from broker.statement_text import FORMATS, iso_ms, print_statement
from ledger.audit import AuditFailure, audit
from ledger.clearing import book_from_json, clear, clearing_lines
from ledger.fill import trade_ctp
from ledger.genesis import (
    DEFAULT_BLOCK_MS,
    DEFAULT_INTERVAL_S,
    MAX_UNITS,
    NO_SOURCE,
    Genesis,
    GenesisError,
    MarketTerms,
    MeterEntry,
    default_reveal_s,
    read_genesis,
    write_genesis,
)
from ledger.market_text import book_lines, interval_lines, token_lines
from ledger.operator_cli import add_operator_commands
from ledger.proof import ProofError, check_input_proof, check_proof, make_proof
from ledger.statement import StatementError, account_of, build_statement
from ledger.store import LedgerStore, StoreError
from ledger.validator import ValidatorIdentity, secret_validator_dir
from wire.cose import MAX_MESSAGE
from wire.messages import BODY_TYPES, SELL_SOURCES, CtpState
from wire.reasons import Reject
from wire.verify import Verifier

# What a command reports as one line and exit 1 instead of a traceback.
EXPECTED = (OSError, KeyFileError, GenesisError, StoreError, ProofError, StatementError)


def hex_key(text: object) -> bytes:
    """A 32-byte Ed25519 public key from hex; ValueError for anything else."""
    return parse_hex(text, 32, "32-byte key")


_key_arg = hex_bytes(32, "32-byte key")


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
    return ([hex_key(community["ca"]["pk"])], [hex_key(v["pk"]) for v in community.get("validators", [])])


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


def _account_arg(text: str) -> tuple[bytes, int]:
    key, sep, units = text.partition("=")
    try:
        if not sep or not units.isdecimal() or int(units) > MAX_UNITS:
            raise ValueError(f"{text[:80]!r} is not HEX=UNITS with units in 0..{MAX_UNITS}")
        return hex_key(key), int(units)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_ctp_id_arg = hex_bytes(16, "16-byte CTP id")


def _proof_id_arg(text: str) -> bytes:
    """A statement line's proof id: a CTP id (16 bytes) or a block input's message hash (32)."""
    return (_ctp_id_arg if len(text) == 32 else hex_bytes(32, "32-byte message hash"))(text)


def _meter_arg(text: str) -> MeterEntry:
    """ID=HEX[:SOURCE] for init --meter: a household meter, its account key and what it sells."""
    meter, sep, rest = text.partition("=")
    key, _, source = rest.partition(":")
    try:
        if not sep or not meter or any(c in meter for c in "/+#\0"):
            raise ValueError(f"{text[:80]!r} is not ID=HEX[:SOURCE]")
        if source not in (*SELL_SOURCES, NO_SOURCE):
            raise ValueError(f"{source!r} is not one of {', '.join(SELL_SOURCES)} (no :SOURCE: it cannot sell)")
        return MeterEntry(meter, hex_key(key), source)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _market_terms(args: argparse.Namespace) -> MarketTerms | None:
    """The genesis' market section if any market option was given, else None: a v1 chain."""
    if not (args.market or args.meter or args.interval_s is not None or args.reveal_s is not None):
        return None
    interval_s = DEFAULT_INTERVAL_S if args.interval_s is None else args.interval_s
    reveal_s = default_reveal_s(interval_s) if args.reveal_s is None else args.reveal_s
    return MarketTerms(tuple(sorted(args.meter, key=lambda m: m.meter)), interval_s=interval_s, reveal_s=reveal_s)


def cmd_init(args: argparse.Namespace) -> int:
    accounts = dict(args.account)
    if len(accounts) != len(args.account):
        raise GenesisError("an account is listed twice")
    market = _market_terms(args)  # GenesisError before any key is written
    args.dir.mkdir(parents=True, exist_ok=True)
    keys = [write_new_key(secret_validator_dir(args.dir, i) / "validator.key") for i in range(args.validators)]
    genesis = Genesis.build(args.ca, accounts, [bytes(k.verify_key) for k in keys], args.block_ms, market)
    written = write_genesis(args.dir, genesis)
    print(f"genesis    {genesis.hash.hex()} ({'written' if written else 'unchanged'})")
    print(f"accounts   {len(genesis.accounts)}, {genesis.total} units")
    if market is not None:
        print(f"market     interval {market.interval_s} s, reveal {market.reveal_s} s, {len(market.meters)} meter(s)")
    for i, key in enumerate(keys):
        print(f"validator  {i} {public_hex(key)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The service runs on this thread; another waits for SIGTERM/SIGINT with sigwait.

    A Python signal handler runs on the main thread between bytecodes, so one that set an
    Event the main thread was itself inside would deadlock; sigwait needs no handler. The
    signals are blocked before any thread starts, so every thread inherits that.
    """
    from ledger import metrics
    from ledger.service import LedgerService  # paho and the bus only for the one command that needs them

    if args.metrics_port is not None and not metrics.available():
        print(f"spb-ledger: --metrics-port needs prometheus-client: {metrics.INSTALL}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    from broker.client import TlsFiles

    host, port, tls = args.broker
    identity = ValidatorIdentity.load(args.dir, args.validator)
    service = LedgerService(identity, host, port, tls=TlsFiles.in_dir(identity.home) if tls else None)
    if args.metrics_port is not None:
        bound = service.serve_metrics(args.metrics_port, args.metrics_host)
        # The port bound, for --metrics-port 0: tests and supervisors read it from this line.
        logging.getLogger("spb.ledger").info("metrics on http://%s:%d/metrics", args.metrics_host, bound)

    def wait_for_signal() -> None:
        signal.sigwait(stop_signals)
        service.stop()

    threading.Thread(target=wait_for_signal, name="signals", daemon=True).start()
    service.run()
    return 0


def _open_store(args: argparse.Namespace) -> LedgerStore:
    identity = ValidatorIdentity.load(args.dir, args.validator, with_key=False)
    return LedgerStore(identity.db_path, identity.genesis, readonly=True)


def cmd_balance(args: argparse.Namespace) -> int:
    found = _open_store(args).account(args.account)
    if found is None:
        print(f"spb-ledger: {args.account.hex()} is not an account of this ledger", file=sys.stderr)
        return 1
    print(f"balance {found[0]} held {found[1]}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = _open_store(args)
    row = store.ctp_row(args.ctp)
    if row is not None:
        raw, digest, state, height, by = row
        ctp = trade_ctp(raw)[0]
        print(f"state {state}\nheight {height}")
        print(f"payer {ctp.payer.hex()}\npayee {ctp.payee.hex()}\namount {ctp.amount}\nwh {ctp.wh}\nexp {ctp.exp}")
        print(f"ctp-message {digest.hex()}")
        if state != CtpState.HELD:
            print(f"by {by.hex() if by else 'expiry'}")
        return 0
    rejected = store.rejection(args.ctp)
    if rejected is None:
        print(f"spb-ledger: no CTP {args.ctp.hex()} on this ledger", file=sys.stderr)
        return 1
    reason, msg, t = rejected
    print(f"state {CtpState.REJECTED}\nreason {reason}\nmessage {msg.hex()}\nt {t}")
    return 0


def _market_state(args: argparse.Namespace):
    state = _open_store(args).load()
    if state.market is None:
        raise StoreError("this ledger's genesis has no market")
    return state


def cmd_market(args: argparse.Namespace) -> int:
    state = _market_state(args)
    assert state.market is not None
    lines = interval_lines(state.market) if args.interval is None else book_lines(state, args.interval)
    for line in lines:
        print(line)
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    state = _market_state(args)
    assert state.market is not None
    for line in token_lines(state.market, args.interval):
        print(line)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    try:
        report = audit(_open_store(args))
    except AuditFailure as exc:
        print(f"audit failed at height {exc.height}: {exc.what}")
        return 1
    print(f"audit ok: height {report.height}, {report.trades} trades, {report.ctps} CTPs")
    return 0


def cmd_head(args: argparse.Namespace) -> int:
    store = _open_store(args)
    height, digest, ctp_root = store.head()
    print(f"height {height} hash {digest.hex()} ctp-root {ctp_root.hex()}")
    return 0


def cmd_proof(args: argparse.Namespace) -> int:
    print(json.dumps(make_proof(_open_store(args), args.ctp), indent=1))
    return 0


def cmd_check_proof(args: argparse.Namespace) -> int:
    genesis = read_genesis(args.genesis) if args.genesis.is_dir() else Genesis.decode(args.genesis.read_bytes())
    try:
        doc = json.loads(sys.stdin.read() if args.file == "-" else Path(args.file).read_text())
    except json.JSONDecodeError as exc:
        raise ProofError(f"not a JSON proof: {exc}") from None
    if "input" in doc:  # a fund, payout or rotate: a block input (decision 0017)
        header, body = check_input_proof(doc, genesis.validators, genesis.operators)
        print(f"proof ok: {body.typ} {doc['input']} decided in block {header.height}")
        return 0
    header, ctp = check_proof(doc, genesis.validators)
    print(f"proof ok: CTP {ctp.id.hex()} ({ctp.amount} units for {ctp.wh} Wh) settled in block {header.height}")
    return 0


def cmd_statement(args: argparse.Namespace) -> int:
    store = _open_store(args)
    statement = build_statement(store, account_of(store, args.account), args.start, args.end)
    print_statement(statement, args.format)
    return 0


MAX_BOOK = 64 << 20  # bytes of a book `clear` reads: a 10,000-order interval is about 1 MB


def cmd_clear(args: argparse.Namespace) -> int:
    """A bad book is one line, `spb-ledger clear: <reason>`, and exit 1. Handled here rather
    than through EXPECTED, whose lines do not name the command, and because a book's mistakes
    are ValueErrors, which EXPECTED leaves as tracebacks for the other commands."""
    try:
        if args.file == "-":
            raw = sys.stdin.buffer.read(MAX_BOOK + 1)
        else:
            with open(args.file, "rb") as f:
                raw = f.read(MAX_BOOK + 1)
        if len(raw) > MAX_BOOK:
            raise ValueError(f"the book is over {MAX_BOOK} bytes")
        try:
            book = json.loads(raw.decode())  # UTF-8 only, as RFC 8259 wants, not json's guess from the bytes
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(f"not a JSON book: {exc}") from None
        lines = clearing_lines(clear(*book_from_json(book)))
    except OSError as exc:
        print(f"spb-ledger clear: {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"spb-ledger clear: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spb-ledger", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", help="write a genesis and validator keys")
    init.add_argument("dir", type=Path, metavar="DIR")
    init.add_argument(
        "--ca",
        type=_key_arg,
        action="append",
        required=True,
        metavar="HEX",
        help="trusted manufacturer CA public key (repeatable)",
    )
    init.add_argument(
        "--account",
        type=_account_arg,
        action="append",
        default=[],
        metavar="HEX=UNITS",
        help="household account key and opening balance (repeatable)",
    )
    init.add_argument("--validators", type=int, choices=range(1, 101), default=1, metavar="N")
    init.add_argument(
        "--block-ms",
        type=int,
        default=DEFAULT_BLOCK_MS,
        metavar="MS",
        help=f"shortest time between blocks (default {DEFAULT_BLOCK_MS})",
    )
    init.add_argument(
        "--market",
        action="store_true",
        help="a chain with the market and proof of delivery (docs/PROTOCOL.md §9); implied by the options below",
    )
    init.add_argument(
        "--meter",
        type=_meter_arg,
        action="append",
        default=[],
        metavar="ID=HEX[:SOURCE]",
        help=f"a household meter: its id, its account's key and what it sells ({', '.join(SELL_SOURCES)}; "
        "left out: nothing); only listed meters prove export (repeatable)",
    )
    init.add_argument(
        "--interval-s", type=int, metavar="S", help=f"the market's interval (default {DEFAULT_INTERVAL_S})"
    )
    init.add_argument(
        "--reveal-s",
        type=int,
        metavar="S",
        help="the sealed-bid reveal window after a gate, shorter than the interval (default 60, or half the interval)",
    )
    init.set_defaults(run=cmd_init)

    run = sub.add_parser("run", help="be the ledger on the bus")
    run.add_argument("dir", type=Path, metavar="DIR")
    run.add_argument(
        "--broker",
        type=broker_url,
        required=True,
        metavar="URL",
        help=BROKER_HELP.replace("state dir", "validator's dir (DIR/validators/vI)"),
    )
    run.add_argument("--validator", type=int, default=0, metavar="I")
    run.add_argument(
        "--metrics-port",
        type=listen_port,
        metavar="P",
        help="serve Prometheus metrics (spb_ledger_*) on this port; 0: a free one, logged (needs spb-energy[metrics])",
    )
    run.add_argument(
        "--metrics-host", default="127.0.0.1", metavar="H", help="the address to serve metrics on (default 127.0.0.1)"
    )
    run.set_defaults(run=cmd_run)

    for name, help_text, arg, arg_type in (
        ("balance", "print `balance <units> held <units>` of an account", "account", _key_arg),
        ("show", "state, block height and reason of a CTP", "ctp", _ctp_id_arg),
        (
            "proof",
            "JSON inclusion proof of a settled CTP (its id), or of a fund, payout or rotate (its message hash), "
            "checkable offline",
            "ctp",
            _proof_id_arg,
        ),
        ("audit", "replay every block and check hashes, roots, seals, signatures and invariants", None, None),
        ("head", "print `height <n> hash <hex> ctp-root <hex>` of the last committed block", None, None),
    ):
        query = sub.add_parser(name, help=help_text)
        query.add_argument("dir", type=Path, metavar="DIR")
        if arg is not None and arg_type is not None:  # both or neither
            query.add_argument(arg, type=arg_type, metavar="HEX")
        query.add_argument("--validator", type=int, default=0, metavar="I", help="whose database (default 0)")
        query.set_defaults(run=globals()[f"cmd_{name}"])

    market = sub.add_parser("market", help="one line per interval with orders, or one interval's book and result")
    market.add_argument("dir", type=Path, metavar="DIR")
    market.add_argument("--interval", type=int, metavar="K", help="this interval's orders, result and fills")
    market.add_argument("--validator", type=int, default=0, metavar="I", help="whose database (default 0)")
    market.set_defaults(run=cmd_market)
    tokens = sub.add_parser("tokens", help="print `<source> minted <wh> sold <wh>` of one interval per source")
    tokens.add_argument("dir", type=Path, metavar="DIR")
    tokens.add_argument("--interval", type=int, required=True, metavar="K")
    tokens.add_argument("--validator", type=int, default=0, metavar="I", help="whose database (default 0)")
    tokens.set_defaults(run=cmd_tokens)
    statement = sub.add_parser(
        "statement", help="an account's trades, funds and payouts over a period, with its balances (decision 0017)"
    )
    statement.add_argument("dir", type=Path, metavar="DIR")
    statement.add_argument("account", metavar="ACCOUNT", help="the account's key (64 hex digits) or one of its meters")
    statement.add_argument("--from", dest="start", type=iso_ms, required=True, metavar="DATE", help="ISO date, UTC")
    statement.add_argument(
        "--to", dest="end", type=iso_ms, required=True, metavar="DATE", help="ISO date, UTC; not included"
    )
    statement.add_argument("--format", choices=FORMATS, default="text", help="text (a table, the default), csv or json")
    statement.add_argument("--validator", type=int, default=0, metavar="I", help="whose database (default 0)")
    statement.set_defaults(run=cmd_statement)
    check = sub.add_parser("check-proof", help="check a proof from `spb-ledger proof` offline")
    check.add_argument("file", help="the proof, or - for stdin")
    check.add_argument("--genesis", type=Path, required=True, metavar="PATH", help="the ledger dir or its genesis.cbor")
    check.set_defaults(run=cmd_check_proof)
    clearing = sub.add_parser("clear", help="clear one trading interval's order book (JSON) and print its fills")
    clearing.add_argument("file", help='the book, {"bids": [...], "asks": [...]}, or - for stdin')
    clearing.set_defaults(run=cmd_clear)
    verify = sub.add_parser("verify", help="run the stateless checks of docs/PROTOCOL.md §4 on one message")
    verify.add_argument("file", help="file holding one raw message, or - for stdin")
    verify.add_argument(
        "--ca",
        type=_key_arg,
        action="append",
        default=[],
        metavar="HEX",
        help="trusted manufacturer CA public key (repeatable)",
    )
    verify.add_argument(
        "--validator",
        type=_key_arg,
        action="append",
        default=[],
        metavar="HEX",
        help="ledger validator public key, for status and reject messages (repeatable)",
    )
    verify.add_argument(
        "--community", type=Path, metavar="DIR", help="also trust the CA and validators listed in DIR/community.toml"
    )
    verify.add_argument("--device", type=_key_arg, metavar="HEX", help="device key of the meter, for readings")
    verify.add_argument("--now", type=int, metavar="MS", help="verifier clock, ms since the epoch (default: now)")
    verify.add_argument(
        "--expect", choices=sorted(BODY_TYPES), metavar="TYP", help="reject a body of any other typ as `type`"
    )
    verify.set_defaults(run=cmd_verify)
    add_operator_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except EXPECTED as exc:
        where = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename else exc
        print(f"spb-ledger: {where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
