"""`spb-deploy demo`: a whole community on one machine.

Provisions three meters (a solar producer and two consumers) with a ledger genesis whose
market has short intervals, starts a broker, the ledger and the three meters as real
processes with emulated MCP3008s, and has the consumers buy the producer's energy with
`spb-meter ctp`, then on the market: the producer asks and both consumers bid for one
interval (deploy.market). Each meter's Sense HAT is drawn in the terminal, with a live line
of balances from the ledger. The bus is watched like an operator's monitor would: every
birth, reading, export record, status, order, clearing result and block is verified. The
meters verify each other's births (their CoE witnesses), never each other's readings: those
tell when a household is home, so no meter reads them: only the ledger and monitors do
(docs/decisions/0012-neighbour-privacy.md). Exits 0 only if every trade ended as planned
(one is more than can be delivered before it expires, so it is refunded), the interval
cleared with fills that settled, each meter verified its peers' births and went offline
cleanly, the monitor verified every meter's readings, and the ledger's chain passes its audit.
"""

from __future__ import annotations

import argparse
import functools
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from rich.columns import Columns
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from broker.client import BusClient
from broker.clock import wall_ms
from broker.runtime import free_port
from deploy.day import add_day_arguments, run_day
from deploy.market import LedgerWatch, MarketOrder, MarketOutcome, Outcome, describe, market, orders, session, trade
from deploy.provision import Community, community_genesis, provision
from deploy.runs import audit_validators, start_community_broker, stop_all
from edge.peers import PeerTable
from ledger.genesis import write_genesis
from ledger.store import LedgerStore
from ledger.validator import ValidatorIdentity
from wire import topics
from wire.messages import CtpState
from wire.reasons import Reject
from wire.verify import Verifier

# (meter id, role, emulated power profile in W: + import, - export). 3600 W is 1 Wh a second.
METERS = (("m0001", "producer", "-4000"), ("m0002", "consumer", "3600"), ("m0003", "consumer", "3600"))
WH_PER_S = 1
SOURCES = {"m0001": "solar"}  # what the producer sells on the market
# The producer exports 11 Wh in a 10 s interval and asks 10 of them; one bid wants green
# energy and pays more, so both products clear: green at 3 (6 Wh), open at 2 (the other 4 Wh).
MARKET = (
    MarketOrder("m0001", "ask", 10, 2),
    MarketOrder("m0002", "bid", 6, 4, green=True),
    MarketOrder("m0003", "bid", 6, 3),
)
INTERVAL_S = range(10, 61)  # shorter: less export than the ask; longer: the run outlasts --seconds
DAY_INTERVAL_S = range(2, 61)  # --day: the agent orders a tenth of an interval (>= 1 s) before the gate
DAY_DEFAULT_S = 3  # 48 intervals of 3 s: a day in under three minutes
OPENING_UNITS = 1_000  # each household's balance in the genesis


@dataclass
class Seen:
    births: int = 0
    readings: int = 0
    rejects: int = 0
    state: str = "?"  # the live state; a previous run's retained one does not count
    last: str = ""
    peer_births: int = 0  # births of other meters that this meter verified itself ("peers' births")


@dataclass
class Monitor:
    """Verifies and prints what the meters publish (a read-only bus client): the signed
    readings too, which the meters themselves no longer see of each other (decision 0012).

    Retained births still teach it device keys, but only live messages count towards the
    verdict: a rerun must not pass on what the previous run left on the broker.
    """

    console: Console
    peers: PeerTable
    seen: dict[str, Seen] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    all_offline: threading.Event = field(default_factory=threading.Event)

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        parsed = topics.parse_meter_topic(topic)
        if parsed is None or parsed[1] not in ("state", "birth", "reading"):
            return  # coe/req and coe/resp are between meters
        meter, leaf = parsed
        with self.lock:
            seen = self.seen.setdefault(meter, Seen())
            try:
                self._show(seen, meter, leaf, payload, retained)
            except Reject as exc:
                seen.rejects += 1
                self.console.print(f"[red]✗ {meter:6} {leaf:8} rejected: {exc.reason}[/] {exc.detail}")

    def _show(self, seen: Seen, meter: str, leaf: str, payload: bytes, retained: bool) -> None:
        now = wall_ms()
        note = " [dim](retained, from before)[/]" if retained else ""
        if leaf == "state":
            self.peers.on_state(meter, payload)
            state = payload.decode(errors="replace")
            colour = "green" if payload == topics.ONLINE else "yellow"
            self.console.print(f"[{colour}]● {meter:6} state    {state}[/]{note}")
            if not retained and (payload == topics.ONLINE or seen.state == "online"):
                seen.state = state
            if all(self.seen.get(m, Seen()).state == "offline" for m, _, _ in METERS):
                self.all_offline.set()
        elif leaf == "birth":
            birth = self.peers.on_birth(meter, payload, now)
            seen.births += not retained
            self.console.print(
                f"[cyan]★ {meter:6} birth    fw {birth.fw}, boot {birth.boot}; "
                f"devcert from the community CA ✓ signature ✓[/]{note}"
            )
        else:
            r = self.peers.on_reading(meter, payload, now)
            seen.readings += 1
            seen.last = f"{r.wh_in}/{r.wh_out}"
            self.console.print(
                f"  {meter:6} reading  #{r.seq:<3} {r.wh_in:>4} Wh in {r.wh_out:>4} Wh out {r.w:>+6d} W  signature ✓"
            )


def add_demo(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run a small trading community on this machine", description=__doc__.splitlines()[0]
    )
    p.add_argument("--dir", type=Path, default=Path("demo-community"), help="community dir (default ./demo-community)")
    p.add_argument(
        "--seconds",
        type=float,
        default=180.0,
        help="the longest the community runs; it stops earlier once every trade ended (default 180)",
    )
    p.add_argument(
        "--trades",
        type=_at_least_two,
        default=3,
        metavar="N",
        help="how many trades, at least 2 (default 3; the last cannot be delivered in time: refunded)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=0,
        help="the broker's plain port on 127.0.0.1, where anonymous clients may only read; the community "
        "itself talks over TLS on another free port (default: a free one)",
    )
    p.add_argument(
        "--validators",
        type=int,
        choices=range(1, 8),
        default=4,
        metavar="N",
        help="ledger validators, each its own process, reaching BFT consensus over the bus (default 4)",
    )
    p.add_argument("--reading-s", type=float, default=2.0, help="seconds between readings (default 2)")
    p.add_argument(
        "--interval-s",
        type=int,
        choices=DAY_INTERVAL_S,
        metavar="S",
        help=f"the market's interval in the genesis, {INTERVAL_S.start}..{INTERVAL_S.stop - 1} (default 10); "
        f"with --day {DAY_INTERVAL_S.start}..{DAY_INTERVAL_S.stop - 1} (default {DAY_DEFAULT_S})",
    )
    add_day_arguments(p)
    p.add_argument("--headless", action="store_true", help="no live Sense HAT panel: just the log and the verdict")
    p.add_argument(
        "--embedded",
        action="store_true",
        help="use the embedded broker (plain MQTT, no TLS or ACL) even if mosquitto is installed",
    )
    p.set_defaults(run=run_demo)


def _at_least_two(text: str) -> int:
    if not text.isdecimal() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 2")
    return int(text)


def run_demo(args: argparse.Namespace) -> int:
    if args.day:
        return run_day(args, args.interval_s or DAY_DEFAULT_S)
    if args.interval_s is None:
        args.interval_s = 10
    elif args.interval_s not in INTERVAL_S:
        print(
            f"spb-deploy demo: --interval-s is {INTERVAL_S.start}..{INTERVAL_S.stop - 1} without --day", file=sys.stderr
        )
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    console = Console(highlight=False)
    community = provision(
        args.dir,
        meters=len(METERS),
        accounts=None,
        validators=args.validators,
        now_ms=wall_ms(),
        sources=SOURCES,
        interval_s=args.interval_s,
    )
    write_genesis(args.dir, community_genesis(community, OPENING_UNITS, block_ms=200))
    port = args.port or free_port()
    broker, url = start_community_broker(community.root, port, args.embedded)
    outcomes: list[Outcome] = []
    traded = MarketOutcome()
    try:
        console.print(
            f"[bold]community[/] {community.root} ({len(community.meters)} meters)   "
            f"[bold]broker[/] {broker.kind} on {url}, read-only for anyone on mqtt://127.0.0.1:{port}"
        )
        console.print(
            "[bold]privacy[/] meters verify each other's births, not readings: this monitor verifies "
            "every reading; no meter reads a household's, only the ledger and monitors (decision 0012)"
        )
        ca, validators = [bytes.fromhex(community.ca_pk)], [bytes.fromhex(v.pk) for v in community.validators]
        monitor = Monitor(console, PeerTable(Verifier(cas=ca)))
        watch = LedgerWatch(console, Verifier(cas=ca, validators=validators))
        watcher = BusClient("127.0.0.1", port, client_id="demo-monitor", clean_session=True)
        watcher.subscribe(topics.METERS_ALL, monitor.on_message)
        for topic in (
            topics.STATUS_ALL,
            topics.REJECTS,
            topics.LEDGER_STATE_ALL,
            topics.LEDGER_BLOCKS,
            topics.MARKET_ALL,
            topics.TX_EXPORT,
        ):
            watcher.subscribe(topic, watch.on_message)
        watcher.connect()
        try:
            if not watcher.wait_connected(timeout=10):  # subscribed before any meter speaks
                console.print("[bold red]demo failed[/]: the monitor could not subscribe")
                return 1
            codes = _run_community(args, community, url, monitor, watch, stop, outcomes, traded)
            monitor.all_offline.wait(timeout=10)
        finally:
            watcher.close()
    finally:
        broker.stop()
    audited = audit_validators(args.dir, args.validators)
    return _summary(console, monitor, watch, codes, outcomes, traded, args.trades, audited)


def _run_community(
    args,
    community: Community,
    url: str,
    monitor: Monitor,
    watch: LedgerWatch,
    stop: threading.Event,
    outcomes: list[Outcome],
    traded: MarketOutcome,
) -> list[int]:
    """Run meters and ledger until the trades ended, args.seconds passed, or SIGINT/SIGTERM;
    their exit codes, meters first."""
    root, procs = community.root, []
    try:
        for meter, _, profile in METERS:
            procs.append(
                _start(
                    [
                        "edge.cli",
                        "run",
                        "--state-dir",
                        str(root / "meters" / meter),
                        "--broker",
                        url,
                        "--adc",
                        "fake",
                        f"--fake-profile={profile}",
                        "--reading-s",
                        str(args.reading_s),
                        "--resend-s",
                        "5",
                        "--display",
                        "terminal",
                        "--display-out",
                        str(_frame_file(root, meter)),
                    ],
                    meter,
                    monitor,
                )
            )
        for i in range(len(community.validators)):
            procs.append(
                _start(["ledger.cli", "run", str(root), "--broker", url, "--validator", str(i)], f"v{i}", monitor)
            )
        producer = next(m for m in community.meters if m.id == METERS[0][0])
        assert producer.account_pk is not None, "every demo meter has a household account"
        plan = orders(args.trades, tuple(m for m, role, _ in METERS if role == "consumer"), WH_PER_S)
        console = monitor.console
        direct = functools.partial(trade, root, plan, producer.account_pk, watch, console, 60, outcomes)
        seller = bytes.fromhex(producer.account_pk)

        def on_market() -> None:
            """After the direct trades ended: their CTPs are not the market's fills."""
            ctps = {bytes.fromhex(o.ctp) for o in outcomes if o.ctp}
            market(root, MARKET, seller, community.market.interval_s, watch, console, traded, ctps)

        done = threading.Event()
        threading.Thread(target=session, args=(direct, on_market, done), daemon=True).start()
        _watch_until(args, community, done, stop)
    finally:
        codes = stop_all(procs)
    return codes


def _watch_until(args, community: Community, traded: threading.Event, stop: threading.Event) -> None:
    """Wait for the trades (and 3 s more, so their outcome shows), showing the meters' displays live."""

    def wait() -> None:
        if traded.wait(args.seconds) and not stop.is_set():
            stop.wait(3)

    if args.headless:
        wait()
        return
    with Live(get_renderable=lambda: _panel(community), refresh_per_second=4, transient=False):
        wait()


def _frame_file(root: Path, meter: str) -> Path:
    return root / "meters" / meter / "display.ans"


def _panel(community: Community):
    """Each meter's Sense HAT as its terminal driver last drew it, and every household's balance."""
    hats = []
    for meter, role, _ in METERS:
        try:
            frame = Text.from_ansi(_frame_file(community.root, meter).read_text())
        except OSError:
            frame = Text("(starting)")
        hats.append(Panel(frame, title=f"{meter} {role}", expand=False))
    return Group(Columns(hats), Text(_balances(community), style="bold"))


def _balances(community: Community) -> str:
    try:
        identity = ValidatorIdentity.load(community.root, 0, with_key=False)
        store = LedgerStore(identity.db_path, identity.genesis, readonly=True)
    except Exception:  # not written yet: the ledger is starting
        return "balances: (ledger starting)"
    try:
        accounts = store.accounts()
    finally:
        store.close()
    parts = []
    for m in community.meters:
        if m.account_pk is None:  # a meter without an account has no balance
            continue
        balance, held = accounts.get(bytes.fromhex(m.account_pk), (0, 0))
        parts.append(f"{m.id} {balance}" + (f" (+{held} held)" if held else ""))
    return "balances: " + "   ".join(parts)


def _start(module_args: list[str], name: str, monitor: Monitor):
    proc = subprocess.Popen(
        [sys.executable, "-m", *module_args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    reader = threading.Thread(target=_relay, args=(proc, name, monitor), daemon=True)
    reader.start()
    return proc, reader


def _relay(proc: subprocess.Popen, name: str, monitor: Monitor) -> None:
    """Show a process's own log, dimmed, and count the peers' births each meter verified."""
    assert proc.stdout is not None, "_start pipes it"
    for line in proc.stdout:
        with monitor.lock:
            if " verified birth of " in line:
                monitor.seen.setdefault(name, Seen()).peer_births += 1
            monitor.console.print(Text("    " + line.rstrip(), style="dim"))


def _summary(
    console: Console,
    monitor: Monitor,
    watch: LedgerWatch,
    codes: list[int],
    outcomes: list[Outcome],
    traded: MarketOutcome,
    planned_trades: int,
    audited: str,
) -> int:
    table = Table(title="What the monitor verified")
    for column in ("meter", "births", "readings", "rejects", "peers' births", "Wh in/out", "state"):
        table.add_column(column)
    ok = all(code == 0 for code in codes)
    for meter, _, _ in METERS:
        s = monitor.seen.get(meter, Seen())
        table.add_row(meter, str(s.births), str(s.readings), str(s.rejects), str(s.peer_births), s.last, s.state)
        ok = ok and s.births >= 1 and s.readings >= 2 and s.peer_births >= 1 and not s.rejects and s.state == "offline"
    console.print(table)
    trades = Table(title="Trades")
    for column in ("CTP", "buyer", "units", "Wh", "expected", "ended"):
        trades.add_column(column)
    for o in outcomes:
        trades.add_row(
            o.ctp[:12] + "…",
            o.order.buyer,
            str(o.order.amount),
            str(o.order.wh),
            o.order.expect,
            f"[green]{o.state}[/]" if o.ok else f"[red]{o.state}[/]",
        )
    console.print(trades)
    settled = sum(o.state == CtpState.SETTLED for o in outcomes)
    refunded = sum(o.state == CtpState.REFUNDED for o in outcomes)
    cleared = "not cleared" if traded.result is None else f"cleared: {describe(traded.result)}"
    fills = ", ".join(f"{t.hex()[:12]}… {state}" for t, state in traded.fills.items()) or "none"
    console.print(f"market: interval #{traded.k} {cleared}; fill trades: {fills}")
    console.print(
        f"ledger: {settled} settled, {refunded} refunded, {watch.blocks} blocks, {watch.rejects} rejects, "
        f"{watch.oversold} oversold (sent again), state {watch.ledger}; audit {audited}"
    )
    planned = len(outcomes) == planned_trades and all(o.ok for o in outcomes) and traded.ok
    ok = ok and planned and watch.all_offline(len(codes) - len(METERS)) and audited.startswith("ok")
    console.print("[bold green]demo ok[/]" if ok else f"[bold red]demo failed[/] (exit codes {codes})")
    return 0 if ok else 1
