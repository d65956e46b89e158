"""`spb-deploy demo`: a community on one machine, for a bounded time.

Provisions two meters with a ledger genesis, starts a broker, both meters (one importing,
one exporting) and the ledger as real processes, trades between the two households
(deploy.market), and watches the bus like an operator's monitor would: every birth,
reading, status and block is verified and shown decoded. Exits 0 only if both meters were
seen online, verified each other's readings and went offline cleanly, one trade settled
and one expired promise was refunded, and the ledger's chain passes its audit.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from broker import topics
from broker.client import BusClient
from broker.clock import wall_ms
from broker.reasons import Reject
from broker.runtime import free_port, start_broker, wait_or_kill
from broker.verify import Verifier
from deploy.market import LedgerWatch, Trades, trade
from deploy.provision import community_genesis, provision
from deploy.simulate import SimCommunity
from edge.peers import PeerTable
from ledger.audit import AuditFailure, audit
from ledger.genesis import write_genesis
from ledger.store import LedgerStore
from ledger.validator import ValidatorIdentity

# (meter id, simulated power in W): a household importing and one exporting solar.
METERS = (("m0001", 1500), ("m0002", -2000))
OPENING_UNITS = 1_000  # each household's balance in the genesis


@dataclass
class Seen:
    births: int = 0
    readings: int = 0
    rejects: int = 0
    state: str = "?"  # the live state; a previous run's retained one does not count
    last: str = ""
    peer_readings: int = 0  # readings of the other meter that this meter verified itself ("verified peer")


@dataclass
class Monitor:
    """Verifies and prints what the meters publish (a read-only bus client).

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
        if parsed is None:
            return
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
            if all(self.seen.get(m, Seen()).state == "offline" for m, _ in METERS):
                self.all_offline.set()
        elif leaf == "birth":
            birth = self.peers.on_birth(meter, payload, now)
            seen.births += not retained
            self.console.print(f"[cyan]★ {meter:6} birth    fw {birth.fw}, boot {birth.boot}; "
                               f"devcert from the community CA ✓ signature ✓[/]{note}")
        elif leaf == "reading":
            r = self.peers.on_reading(meter, payload, now)
            seen.readings += 1
            seen.last = f"{r.wh_in}/{r.wh_out}"
            self.console.print(f"  {meter:6} reading  #{r.seq:<3} {r.wh_in:>4} Wh in {r.wh_out:>4} Wh out "
                               f"{r.w:>+6d} W  signature ✓")


def add_demo(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run a small community on this machine for a while",
                              description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=Path("demo-community"), help="community dir (default ./demo-community)")
    p.add_argument("--seconds", type=float, default=20.0, help="how long the meters run (default 20)")
    p.add_argument("--port", type=int, default=0, help="broker port on 127.0.0.1 (default: a free one)")
    p.add_argument("--reading-s", type=float, default=2.0, help="seconds between readings (default 2)")
    p.add_argument("--embedded", action="store_true", help="use the embedded broker even if mosquitto is installed")
    p.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    stop, trades = threading.Event(), Trades()

    def interrupted(*_) -> None:
        stop.set()
        trades.done.set()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupted)
    console = Console(highlight=False)
    community = provision(args.dir, meters=len(METERS), accounts=None, validators=1, now_ms=wall_ms())
    write_genesis(args.dir, community_genesis(community, OPENING_UNITS, block_ms=200))
    port = args.port or free_port()
    broker = start_broker(port, args.dir / "broker", embedded=args.embedded)
    try:
        console.print(f"[bold]community[/] {community.root} ({len(community.meters)} meters)   "
                      f"[bold]broker[/] {broker.kind} on {broker.url}")
        ca, validators = [bytes.fromhex(community.ca_pk)], [bytes.fromhex(v.pk) for v in community.validators]
        monitor = Monitor(console, PeerTable(Verifier(cas=ca)))
        watch = LedgerWatch(console, Verifier(cas=ca, validators=validators))
        watcher = BusClient("127.0.0.1", port, client_id="demo-monitor", clean_session=True)
        watcher.subscribe(topics.METERS_ALL, monitor.on_message)
        for topic in (topics.STATUS_ALL, topics.REJECTS, topics.LEDGER_STATE, topics.LEDGER_BLOCKS):
            watcher.subscribe(topic, watch.on_message)
        watcher.connect()
        try:
            if not watcher.wait_connected(timeout=10):  # subscribed before any meter speaks
                console.print("[bold red]demo failed[/]: the monitor could not subscribe")
                return 1
            codes = _run_community(args, community.root, port, monitor, watch, stop, trades)
            monitor.all_offline.wait(timeout=10)
        finally:
            watcher.close()
    finally:
        broker.stop()
    return _summary(console, monitor, watch, codes, trades, _audit(args.dir))


def _run_community(args, root: Path, port: int, monitor: Monitor, watch: LedgerWatch,
                   stop: threading.Event, trades: Trades) -> list[int]:
    """Run meters and ledger for args.seconds and until the trades are done (or SIGINT/SIGTERM);
    their exit codes, meters first."""
    procs = []
    households = BusClient("127.0.0.1", port, client_id="demo-households")
    try:
        for meter, watts in METERS:
            procs.append(_start(["edge.cli", "run", "--state-dir", str(root / "meters" / meter), "--broker",
                                 f"127.0.0.1:{port}", "--fake-w", str(watts), "--reading-s", str(args.reading_s)],
                                meter, monitor))
        procs.append(_start(["ledger.cli", "run", str(root), "--broker", f"127.0.0.1:{port}"], "ledger", monitor))
        households.connect()
        threading.Thread(target=trade, args=(SimCommunity.from_dir(root, wall_ms()), households, watch,
                                             monitor.console, 30, trades), daemon=True).start()
        if not stop.wait(args.seconds):
            trades.done.wait(60)  # SIGINT/SIGTERM set it too
    finally:
        households.close()
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        codes = []
        for proc, reader in procs:
            wait_or_kill(proc, 15)
            codes.append(proc.returncode)
            reader.join(timeout=5)
    return codes


def _start(module_args: list[str], name: str, monitor: Monitor):
    proc = subprocess.Popen([sys.executable, "-m", *module_args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    reader = threading.Thread(target=_relay, args=(proc, name, monitor), daemon=True)
    reader.start()
    return proc, reader


def _audit(root: Path) -> str:
    """`spb-ledger audit` of the ledger's database after the run: 'ok ...' or why not."""
    try:
        identity = ValidatorIdentity.load(root, 0, with_key=False)
        report = audit(LedgerStore(identity.db_path, identity.genesis, readonly=True))
    except AuditFailure as exc:
        return f"failed at height {exc.height}: {exc.what}"
    except Exception as exc:  # the verdict, not a traceback: the demo is for people watching
        return f"failed: {exc}"
    return f"ok, height {report.height}, {report.trades} trades"


def _relay(proc: subprocess.Popen, meter: str, monitor: Monitor) -> None:
    """Show the meter's own log, dimmed, and count the peer readings it verified."""
    for line in proc.stdout:
        with monitor.lock:
            if " verified reading " in line:
                monitor.seen.setdefault(meter, Seen()).peer_readings += 1
            monitor.console.print(f"[dim]    {line.rstrip()}[/]")


def _summary(console: Console, monitor: Monitor, watch: LedgerWatch, codes: list[int], trades: Trades,
             audited: str) -> int:
    table = Table(title="What the monitor verified")
    for column in ("meter", "births", "readings", "rejects", "verified peer", "Wh in/out", "state"):
        table.add_column(column)
    ok = all(code == 0 for code in codes)
    for meter, _ in METERS:
        s = monitor.seen.get(meter, Seen())
        table.add_row(meter, str(s.births), str(s.readings), str(s.rejects), str(s.peer_readings), s.last, s.state)
        ok = ok and s.births >= 1 and s.readings >= 2 and s.peer_readings >= 1 and not s.rejects and s.state == "offline"
    console.print(table)
    console.print(f"ledger: {trades.settled} trade settled, {trades.refunded} expired promise refunded, "
                  f"{watch.blocks} blocks, {watch.rejects} rejects, state {watch.ledger}; audit {audited}")
    ok = (ok and trades.settled == 1 and trades.refunded == 1 and not watch.rejects
          and watch.ledger.startswith("offline") and audited.startswith("ok"))
    console.print("[bold green]demo ok[/]" if ok else f"[bold red]demo failed[/] (exit codes {codes})")
    return 0 if ok else 1
