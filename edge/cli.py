"""`spb-meter`: run a household meter, and trade from its state dir.

`run` is the firmware. `ctp`, `erc` and `status` work on the same state dir while it runs
(SQLite in WAL mode): they write into its store and outbox, and the running meter sends
what they queued, so a command never needs the network and nothing it signs is lost.
`statement` and `rotate-key` are the exceptions: they talk to the bus (edge/statement.py,
edge/rotation.py; rotate-key with the meter stopped).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import signal
import sys
import threading
from contextlib import ExitStack, closing
from pathlib import Path
from typing import IO

from broker.args import BROKER_HELP, broker_url, hex_bytes, positive_seconds
from broker.client import TlsFiles
from broker.clock import wall_ms
from broker.outcome import bus_client, send_and_wait
from broker.statement_text import FORMATS, iso_ms, print_statement
from edge import orders, policy, rotation, tx
from edge.config import CONFIG_NAME, IDENTITY_NAME, MeterConfig
from edge.display_drivers import DISPLAYS, Painter, SessionLed, open_display, open_input
from edge.energy import WMS_PER_WH
from edge.meter import MeterNode
from edge.sampling import PowerProfile
from edge.state_dir import MeterIdentity
from edge.store import MeterStore
from wire.messages import SOURCES
from wire.verify import Verifier

ROTATE_TIMEOUT_S = 30.0


def whole(text: str) -> int:
    """A non-negative whole number (Wh, units): the wire has no fractions (§1)."""
    if not text.isdecimal():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


MAX_W = 100_000_000  # far above a household even in `demo --day`, whose day runs ~600x fast; keeps readings sane


def profile(text: str) -> PowerProfile:
    try:
        parsed = PowerProfile.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if any(abs(w) > MAX_W for _, w in parsed.steps):
        raise argparse.ArgumentTypeError(f"{text!r} goes beyond ±{MAX_W} W")
    return parsed


class CliError(Exception):
    """Reported as one line on stderr and exit status 1."""


def _identity(state_dir: Path) -> MeterIdentity:
    try:
        return MeterIdentity.load(state_dir)
    except (OSError, KeyError, ValueError) as exc:
        raise CliError(f"{state_dir} is not a meter state dir from `spb-deploy provision`: {exc}") from None


def lock_state_dir(state_dir: Path) -> IO[str]:
    """An exclusive lock on DIR/run.lock: two meters on one state dir would fight over its
    client id, seqs and keys. The kernel drops it when the process dies, even by SIGKILL."""
    with ExitStack() as unless_locked:
        lock = unless_locked.enter_context(open(state_dir / "run.lock", "w"))
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        unless_locked.pop_all()  # locked: the caller holds the file from here
    return lock


def cmd_run(args: argparse.Namespace) -> int:
    from edge.sensing import open_sensing  # gpiozero: only the firmware needs it, not ctp/erc/status

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    identity = _identity(args.state_dir)
    try:
        config = MeterConfig.load(
            args.state_dir,
            reading_s=args.reading_s,
            sample_hz=args.sample_hz,
            display=args.display,
            resend_s=args.resend_s,
        )
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    adc = args.adc or ("fake" if args.fake is not None else "mcp3008")
    try:
        sense = open_sensing(adc, config, args.fake, args.fake_start_ms)
    except Exception as exc:  # no SPI, no gpiozero pin factory: say so in one line
        raise CliError(
            f"cannot open the {adc} ADC: {exc}{' (off a Raspberry Pi, try --adc fake --fake-w W)' * (adc != 'fake')}"
        ) from None
    try:
        lock = lock_state_dir(args.state_dir)  # held until the process exits
    except BlockingIOError:
        raise CliError(f"another `spb-meter run` is using {args.state_dir}") from None
    host, port, tls = args.broker
    painter = Painter(open_display(config.display, args.display_out))
    node = MeterNode(
        identity,
        config,
        host,
        port,
        sense,
        painter=painter,
        led=SessionLed(config.led_pin),
        tls=TlsFiles.in_dir(args.state_dir) if tls else None,
    )
    screen_input = open_input(painter.driver, painter.on_event, keys_fd(args.display_out, sys.stdin))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node.run(stop)
    finally:
        if screen_input is not None:
            screen_input.close()  # the terminal back as it was
    lock.close()
    return 0


def keys_fd(display_out: Path | None, stdin: IO | None) -> int | None:
    """The terminal the screens' keys are read from: stdin, if it is a terminal and the frames
    are drawn on it too. Never a terminal the frames do not go to: the demo runs six meters in
    the background with the user's terminal as their stdin, and none may read its keys or put
    it in cbreak mode."""
    return stdin.fileno() if display_out is None and stdin is not None and stdin.isatty() else None


def cmd_ctp(args: argparse.Namespace) -> int:
    identity = _identity(args.dir)
    now = wall_ms()
    with closing(MeterStore(identity.db_path)) as store:
        row = tx.new_ctp(
            store,
            identity.account_key(),
            args.payee,
            args.amount,
            args.wh,
            now + int(args.expiry * 1000),
            now,
            args.src,
        )
    print(row.id.hex())
    return 0


def cmd_erc(args: argparse.Namespace) -> int:
    with closing(MeterStore(_identity(args.dir).db_path)) as store:
        row = tx.confirm(store, args.ctp_id, args.wh, wall_ms(), force=args.force)
    print(f"ERC for CTP {row.id.hex()} ({args.wh} Wh) queued; key #{row.idx} of batch #{row.batch}")
    return 0


def cmd_statement(args: argparse.Namespace) -> int:
    from edge.statement import StatementFetchError, fetch_statement

    identity = _identity(args.dir)
    host, port, tls = args.broker
    try:
        statement = fetch_statement(
            identity, host, port, TlsFiles.in_dir(args.dir) if tls else None, args.start, args.end, args.timeout
        )
    except StatementFetchError as exc:
        raise CliError(str(exc)) from None
    print_statement(statement, args.format)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    identity = _identity(args.dir)
    with closing(MeterStore(identity.db_path)) as store:
        facts = status_facts(identity.meter, store, wall_ms())
    if args.json:
        print(json.dumps(facts))
    else:
        print("\n".join(status_lines(facts)))
    return 0


def status_facts(meter: str, store: MeterStore, now: int) -> dict:
    """What `spb-meter status` reports, read once: JSON values whose keys carry their units
    (`_wh`, `_ms` since the epoch, `_units`), for `--json` (Node-RED, scripts) and the text
    alike. Holds a little more than the text shows: the account status and the orders (which
    `spb-meter orders` prints) and bought fills besides sales."""
    totals, account = store.totals(), store.account()
    return {
        "meter": meter,
        "t_ms": now,  # when these were read: the text's "in 12 s" and "3 s ago" are from it
        "wh_in": totals.wh_in,
        "wh_out": totals.wh_out,
        "outbox": {"messages": store.outbox_size(), "dropped": store.dropped()},  # dropped: reason -> count
        "key_batches": [
            {"batch": b.id, "keys": b.size, "keys_free": b.size - b.next_idx, "coe_exp_ms": b.coe_exp}
            for b in store.batches()
        ],
        "trades": [
            {
                "ctp": r.id.hex(),
                "state": r.state,
                "reason": r.reason or None,
                "wh": r.wh,
                "delivered_wh": r.delivered_wms // WMS_PER_WH,
                "exp_ms": r.exp,
                "erc_sent": r.erc is not None,
                "cancel_sent": r.cancel is not None,
            }
            for r in store.trades()
        ],
        "exports": [  # the last five records, oldest first
            {"interval": k, "wh": wh, "total_wh": total, "reason": reason or None}
            for k, _raw, wh, total, _sent, reason in reversed(store.exports(limit=5))
        ],
        "sales": _sale_facts(store.sales()),
        "account": None
        if account is None
        else {"balance_units": account.balance, "held_units": account.held, "t_ms": account.t, "h": account.h},
        "orders": [
            {
                "order": r.id.hex(),
                "side": r.side,
                "interval": r.k,
                "wh": r.wh,
                "price_units_per_wh": r.price,
                "green": bool(r.green),
                "sealed": r.bid is not None,
                "state": r.state,
                "reason": r.reason or None,
                "filled_wh": r.filled,
                "withdraw_sent": r.withdraw is not None,
            }
            for r in store.orders()
        ],
    }


def _sale_facts(sales: list) -> dict:
    """The meter's sales and fills; for its held sales, the export still owed (§9.4)."""
    held = [s for s in sales if s.role == "sold" and s.state == "held"]
    owed = sum(s.wh or 0 for s in held) - sum(s.delivered_wms for s in held) // WMS_PER_WH
    return {
        "held": len(held),
        "held_wh_to_export": max(0, owed),
        "list": [
            {
                "ctp": s.id.hex(),
                "role": s.role,
                "state": s.state,
                "wh": s.wh,  # None: neither the status nor an order of ours said
                "delivered_wh": s.delivered_wms // WMS_PER_WH,
            }
            for s in sales
        ],
    }


def status_lines(facts: dict) -> list[str]:
    """`spb-meter status` as text, from status_facts."""
    now = facts["t_ms"]
    outbox = facts["outbox"]
    dropped = ", ".join(f"{n} {why}" for why, n in outbox["dropped"].items()) or "none"
    lines = [
        f"meter    {facts['meter']}: {facts['wh_in']} Wh imported, {facts['wh_out']} Wh exported",
        f"outbox   {outbox['messages']} message(s) waiting for the broker; dropped: {dropped}",
    ]
    for b in facts["key_batches"]:
        coe = f"CoE valid until {_when(b['coe_exp_ms'], now)}" if b["coe_exp_ms"] is not None else "waiting for a CoE"
        lines.append(f"keys     batch #{b['batch']}: {b['keys_free']} of {b['keys']} one-time keys free, {coe}")
    for r in facts["trades"]:
        reason = f" ({r['reason']})" if r["reason"] else ""
        lines.append(
            f"trade    {r['ctp']}  {r['state']}{reason}  {r['delivered_wh']}/{r['wh']} Wh  "
            f"expires {_when(r['exp_ms'], now)}{'  ERC sent' * r['erc_sent']}{'  cancel sent' * r['cancel_sent']}"
        )
    for e in facts["exports"]:
        reason = f" ({e['reason']})" if e["reason"] else ""
        lines.append(f"export   interval {e['interval']}: {e['wh']} Wh exported, {e['total_wh']} Wh in all{reason}")
    sales = facts["sales"]
    for s in sales["list"]:
        if s["role"] == "sold":
            sold = "? Wh" if s["wh"] is None else f"{s['wh']} Wh"
            lines.append(f"sale     {s['ctp']}  {s['state']}  {s['delivered_wh']} Wh exported of {sold}")
    if sales["held"]:
        lines.append(f"sales    {sales['held']} held, {sales['held_wh_to_export']} Wh still to export for them")
    return lines


def _market(state_dir: Path) -> MeterConfig:
    try:
        return MeterConfig.load(state_dir)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None


def cmd_ask(args: argparse.Namespace) -> int:
    identity, config, now = _identity(args.dir), _market(args.dir), wall_ms()
    k = orders.interval_arg(args.interval, now, config.interval_s * 1000)
    with closing(MeterStore(identity.db_path)) as store:
        row = orders.new_ask(store, identity.account_key(), identity.meter, config.source, args.wh, args.price, k, now)
    print(row.id.hex())
    return 0


def cmd_bid(args: argparse.Namespace) -> int:
    identity, config, now = _identity(args.dir), _market(args.dir), wall_ms()
    interval_ms = config.interval_s * 1000
    k = orders.interval_arg(args.interval, now, interval_ms)
    exp = (k + 1 + config.grace) * interval_ms  # the fills' expiry (§9.3): the batch's CoE must last
    with closing(MeterStore(identity.db_path)) as store:
        row = orders.new_bid(store, identity.account_key(), args.wh, args.price, k, args.green, args.sealed, exp, now)
    print(row.id.hex())
    return 0


def cmd_orders(args: argparse.Namespace) -> int:
    identity = _identity(args.dir)
    with closing(MeterStore(identity.db_path)) as store:
        fills: dict[bytes, list] = {}
        for sale in store.sales():
            if sale.order_id is not None:
                fills.setdefault(sale.order_id, []).append(sale)
        for r in store.orders():
            kind = f"{r.side}{' sealed' if r.bid else ''}{' green' if r.green else ''}"
            reason = f" ({r.reason})" if r.reason else ""
            print(
                f"order    {r.id.hex()}  interval {r.k}  {kind}  {r.wh} Wh at {r.price}  "
                f"{r.state}{reason}  {r.filled} Wh filled{'  withdraw sent' if r.withdraw else ''}"
            )
            for sale in fills.get(r.id, []):
                print(f"  fill   {sale.id.hex()}  {sale.wh} Wh  {sale.state}")
    return 0


def cmd_cancel_order(args: argparse.Namespace) -> int:
    identity, config = _identity(args.dir), _market(args.dir)
    with closing(MeterStore(identity.db_path)) as store:
        orders.withdraw(store, identity.account_key(), args.order_id, config.interval_s * 1000, wall_ms())
    print(f"withdraw of order {args.order_id.hex()} queued")
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    """Show the trading policy; with --set, change it first (all or nothing)."""
    if not (args.dir / IDENTITY_NAME).exists():
        raise CliError(f"{args.dir} is not a meter state dir from `spb-deploy provision`: no {IDENTITY_NAME}")
    path = args.dir / CONFIG_NAME
    try:
        current = policy.load(path)
        if args.set:
            current = current.with_set(args.set)
            policy.save(path, current)
    except (ValueError, TypeError) as exc:  # TypeError: a table with a wrongly typed key
        raise CliError(str(exc)) from None
    print(current.render(), end="")
    return 0


def _when(t: int, now: int) -> str:
    delta = (t - now) // 1000
    return f"in {delta} s" if delta >= 0 else f"{-delta} s ago"


def cmd_rotate_key(args: argparse.Namespace) -> int:
    """Replace the household's account key (edge.rotation): exit 0 applied, 1 rejected or no answer."""
    identity = _identity(args.dir)
    try:
        lock = lock_state_dir(args.dir)  # the running meter signs with the key we replace
    except BlockingIOError:
        raise CliError(f"`spb-meter run` is using {args.dir}: stop it first, and start it again after") from None
    with closing(lock):
        done = rotation.finished(args.dir)
        if done is not None:
            print(f"rotated    already: the account key is {done.hex()}")
            return 0
        change = rotation.prepare(args.dir, wall_ms())
        verifier = Verifier(cas=[identity.ca_pk], validators=identity.validators)
        client = bus_client(args.broker, identity.meter, args.dir)
        [outcome] = send_and_wait(client, verifier, [change.expect], args.timeout, wall_ms)
        if not outcome.applied:
            rotation.abandon(args.dir)
            print(f"rejected   rotate: {outcome.reason} (message {outcome.hash.hex()}); the key is unchanged")
            return 1
        kept = rotation.switch(args.dir, change)
    print(f"rotated    account {change.old_pk.hex()} -> {change.new_pk.hex()} (message {outcome.hash.hex()})")
    print(f"kept       the old key in {kept}")
    print(
        f"operator   the broker's ACL still lets {identity.meter} read the old account's topic only: the operator "
        f"puts this account.key in DIR/meters/{identity.meter}/ and runs `spb-deploy provision DIR --meters N`, "
        "which rewrites the ACL and reloads the broker"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spb-meter", description="Run a household meter, and trade from it.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="sample, sign and publish until SIGINT/SIGTERM")
    run.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="the meter's dir from `spb-deploy provision` (DIR/meters/<id>)",
    )
    run.add_argument("--broker", type=broker_url, required=True, metavar="URL", help=BROKER_HELP)
    run.add_argument(
        "--adc",
        choices=("mcp3008", "fake"),
        help="mcp3008 (a Pi's SPI; the default) or fake (an emulated MCP3008 driven by --fake-w/--fake-profile)",
    )
    fake = run.add_mutually_exclusive_group()
    fake.add_argument(
        "--fake-w",
        dest="fake",
        type=profile,
        metavar="W",
        help="with --adc fake: constant power in W (+import, -export)",
    )
    fake.add_argument(
        "--fake-profile",
        dest="fake",
        type=profile,
        metavar="S:W,...",
        help="with --adc fake: power in W from second S on, e.g. 0:3600,30:0",
    )
    run.add_argument(
        "--fake-start-ms",
        type=int,
        metavar="MS",
        help="with --adc fake: the wall-clock time (ms since the epoch) the profile's second 0 is, "
        "instead of the meter's start (meters started apart then follow one schedule)",
    )
    run.add_argument("--display", choices=DISPLAYS, help="the LED matrix driver (default: config.toml's, else none)")
    run.add_argument(
        "--display-out",
        type=Path,
        metavar="FILE",
        help="with --display terminal: keep the latest frame in FILE instead of drawing on stdout",
    )
    run.add_argument("--reading-s", type=positive_seconds, metavar="S", help="seconds between readings (default 10)")
    run.add_argument("--sample-hz", type=positive_seconds, metavar="HZ", help="samples per second (default 10)")
    run.add_argument(
        "--resend-s",
        type=positive_seconds,
        metavar="S",
        help="send an unanswered CTP, ERC or cancel again after S seconds (default 30)",
    )
    run.set_defaults(run=cmd_run)

    ctp = sub.add_parser("ctp", help="promise to pay for energy (SPB's `CTP tx_addr tx_amount tx_energy`)")
    ctp.add_argument("dir", type=Path, metavar="DIR", help="the meter's state dir")
    ctp.add_argument(
        "payee", type=hex_bytes(32, "32-byte account key"), metavar="PAYEE_HEX", help="the seller's account public key"
    )
    ctp.add_argument("amount", type=whole, metavar="AMOUNT", help="units to pay")
    ctp.add_argument("wh", type=whole, metavar="WH", help="Wh to receive")
    ctp.add_argument(
        "--expiry",
        type=positive_seconds,
        default=3600.0,
        metavar="S",
        help="seconds until the promise lapses and the money returns (default 3600)",
    )
    ctp.add_argument("--src", choices=sorted(SOURCES), help="the energy source asked for")
    ctp.set_defaults(run=cmd_ctp)

    erc = sub.add_parser("erc", help="confirm energy received by hand (SPB's `ERC CTP_ID energy_amount`)")
    erc.add_argument("dir", type=Path, metavar="DIR", help="the meter's state dir")
    erc.add_argument("ctp_id", type=hex_bytes(16, "16-byte CTP id"), metavar="CTP_ID")
    erc.add_argument("wh", type=whole, metavar="WH", help="Wh received")
    erc.add_argument(
        "--force",
        action="store_true",
        help="sign even if WH is below the promise or the trade expired (the ledger will refuse it)",
    )
    erc.set_defaults(run=cmd_erc)

    ask = sub.add_parser("ask", help="offer this meter's export on the market (its registered source)")
    _order_args(ask)
    ask.set_defaults(run=cmd_ask)
    bid = sub.add_parser("bid", help="bid for energy on the market, delivered to this meter")
    _order_args(bid)
    bid.add_argument("--green", action="store_true", help="only from renewable sources (solar, wind, hydro)")
    bid.add_argument(
        "--sealed", action="store_true", help="publish only a commitment and a deposit; the meter reveals it later"
    )
    bid.set_defaults(run=cmd_bid)
    orders_ = sub.add_parser("orders", help="this meter's market orders, their state and fills")
    orders_.add_argument("dir", type=Path, metavar="DIR", help="the meter's state dir")
    orders_.set_defaults(run=cmd_orders)
    cancel = sub.add_parser("cancel-order", help="withdraw an order before its interval begins")
    cancel.add_argument("dir", type=Path, metavar="DIR", help="the meter's state dir")
    cancel.add_argument("order_id", type=hex_bytes(16, "16-byte order id"), metavar="ID")
    cancel.set_defaults(run=cmd_cancel_order)

    policy_ = sub.add_parser("policy", help="show the trading policy (config.toml [policy]); --set changes it")
    policy_.add_argument("dir", type=Path, metavar="DIR", help="the meter's state dir")
    policy_.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="e.g. mode=auto, buy_max_price=30, green_only=true (repeatable; all checked before any is written)",
    )
    policy_.set_defaults(run=cmd_policy)

    statement = sub.add_parser(
        "statement", help="the household's statement over a period, fetched from the validators over the bus"
    )
    statement.add_argument("dir", type=Path, metavar="DIR", help="the meter's state dir")
    statement.add_argument("--broker", type=broker_url, required=True, metavar="URL", help=BROKER_HELP)
    statement.add_argument("--from", dest="start", type=iso_ms, required=True, metavar="DATE", help="ISO date, UTC")
    statement.add_argument(
        "--to", dest="end", type=iso_ms, required=True, metavar="DATE", help="ISO date, UTC; not included"
    )
    statement.add_argument("--format", choices=FORMATS, default="text", help="text (a table, the default), csv or json")
    statement.add_argument(
        "--timeout", type=positive_seconds, default=30.0, metavar="S", help="wait this long for an answer (default 30)"
    )
    statement.set_defaults(run=cmd_statement)

    rotate = sub.add_parser(
        "rotate-key",
        help="replace the household's account key on the ledger (the meter stopped)",
        description="Make a new account key, send a `rotate` signed by the old one, wait until the "
        "ledger applied it, then switch account.key to the new key (the old one is kept beside it).",
    )
    rotate.add_argument("dir", type=Path, metavar="DIR", help="the meter's state dir")
    rotate.add_argument("--broker", type=broker_url, required=True, metavar="URL", help=BROKER_HELP)
    rotate.add_argument(
        "--timeout",
        type=positive_seconds,
        default=ROTATE_TIMEOUT_S,
        metavar="S",
        help=f"wait this long for the ledger (default {ROTATE_TIMEOUT_S:g})",
    )
    rotate.set_defaults(run=cmd_rotate_key)

    status = sub.add_parser("status", help="the meter's energy, keys, outbox and trades")
    status.add_argument("dir", type=Path, metavar="DIR", help="the meter's state dir")
    status.add_argument(
        "--json", action="store_true", help="one JSON object on stdout, units in its keys (wh_in, exp_ms, ...)"
    )
    status.set_defaults(run=cmd_status)
    return parser


def _order_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR", help="the meter's state dir")
    parser.add_argument("wh", type=whole, metavar="WH", help="Wh")
    parser.add_argument("price", type=whole, metavar="PRICE", help="units per Wh")
    parser.add_argument(
        "--interval", metavar="K|next", help="the trading interval (default: next, the first whose gate is ahead)"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (CliError, tx.TradeError, OSError) as exc:  # the household's to fix: one line, no traceback
        print(f"spb-meter: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
