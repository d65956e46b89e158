"""`spb-deploy demo --day`: a street trades on its own for a (compressed) day.

Six households (deploy.day_street: three rooftop PV, two evening-peak homes, one small wind
turbine), four validators and the broker run as real processes on this machine. Every meter
runs its trading agent (`mode = "auto"` in its policy): before each gate it forecasts the
next interval from what it measured and asks its surplus or bids for its shortfall within
its policy; the validators clear each interval; buyers' meters confirm what they imported
with ERCs, sellers' meters prove their export. Nobody types a command.

The fake ADCs follow one shared schedule (`--fake-start-ms`): interval i of the day is
its hour for every house at once. At the end the demo prints, per household, what it
bought and sold, paid and received, the renewable share of its import and its bill against
the flat grid tariff of the genesis, and writes a plot of the day (PNG with the `plot`
extra's matplotlib, else SVG). It exits 0 only if every fill of the day ended settled or
refunded as the energy allowed, no (interval, source) sold more tokens than were minted,
every meter and validator stopped cleanly, every validator's chain passes its audit and
their heads agree.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import tomli_w
from rich.columns import Columns
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from broker.client import BusClient
from broker.clock import wall_ms
from broker.runtime import free_port
from deploy import day_ledger, day_street
from deploy.day_report import day_table, write_plot
from deploy.provision import Community, community_genesis, provision
from deploy.runs import audit_validators, start_community_broker, stop_all, validator_store
from deploy.watchers import PROMETHEUS_NAME, Watchers
from edge import policy
from edge.config import CONFIG_NAME
from edge.peers import PeerTable
from ledger.genesis import write_genesis
from ledger.market_audit import oversold_tokens
from wire import topics
from wire.messages import Cleared, CtpState, Erc, open_message
from wire.reasons import Reject
from wire.verify import Verifier

WARMUP_S = 12  # boot, births, CoEs and one measured interval before the day's first order
SETTLE_INTERVALS = 3  # after the day: the last fills' delivery, grace and expiry


@dataclass
class StreetWatch:
    """What the street publishes, verified: every meter's readings (for its import over the
    day; its export is in the ledger's records) and each interval's clearing result, printed
    as it comes."""

    console: Console
    peers: PeerTable
    verifier: Verifier
    labels: dict[int, str]
    readings: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # meter -> (t, Wh in)
    offline: set[str] = field(default_factory=set)
    confirmed: set[bytes] = field(default_factory=set)  # trades an ERC was sent for
    rejects: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_meter(self, topic: str, payload: bytes, retained: bool) -> None:
        parsed = topics.parse_meter_topic(topic)
        if parsed is None:
            return
        meter, leaf = parsed
        now = wall_ms()
        with self.lock:
            try:
                if leaf == "birth":
                    self.peers.on_birth(meter, payload, now)
                elif leaf == "state":
                    self.peers.on_state(meter, payload)
                    if not retained:
                        (self.offline.add if payload == topics.OFFLINE else self.offline.discard)(meter)
                elif leaf == "reading" and not retained:
                    r = self.peers.on_reading(meter, payload, now)
                    self.readings.setdefault(meter, []).append((r.t, r.wh_in))
            except Reject as exc:
                self.rejects += 1
                self.console.print(f"[red]✗ {meter} {leaf} rejected: {exc.reason}[/] {exc.detail}")

    def on_erc(self, topic: str, payload: bytes, retained: bool) -> None:
        """Which trades their buyer's meter confirmed: only to tell a late ERC from none
        (the ledger verifies ERCs; here the body is read, steps 1-3 of §4)."""
        try:
            erc = open_message(payload, Erc).body
        except Reject:
            return
        with self.lock:
            self.confirmed.add(erc.ctp)

    def on_result(self, topic: str, payload: bytes, retained: bool) -> None:
        if retained or topics.expected_type(topic) != "cleared":
            return
        try:
            result = self.verifier.verify(payload, wall_ms(), expect=Cleared).body
        except Reject as exc:
            self.rejects += 1
            self.console.print(f"[red]✗ result rejected: {exc.reason}[/] {exc.detail}")
            return
        label = self.labels.get(result.k)
        if label is None:
            return  # the warm-up's or the tail's intervals: not the day's
        (gp, gwh), (op, owh) = result.green, result.open
        green = f"green {gwh:>6} Wh at {gp}" if gp is not None else "green      –"
        other = f"open {owh:>6} Wh at {op}" if op is not None else "open      –"
        self.console.print(
            f"[bold cyan]{label}  #{result.k}  cleared: {green}, {other}; {result.fills} fill(s)[/]"
            "  validator signature ✓"
        )


def add_day_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--day",
        action="store_true",
        help="a street of six households trading on its own for a compressed day (make demo's default)",
    )
    p.add_argument(
        "--intervals",
        type=int,
        choices=range(8, 289),
        default=48,
        metavar="N",
        help="with --day: the day's intervals, 8..288 (default 48: half an hour each)",
    )


def run_day(args: argparse.Namespace, interval_s: int) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    console = Console(highlight=False)
    n = args.intervals
    community = provision(
        args.dir,
        meters=len(day_street.STREET),
        accounts=None,
        validators=args.validators,
        now_ms=wall_ms(),
        sources={h.meter: h.source for h in day_street.STREET if h.source},
        interval_s=interval_s,
    )
    genesis = community_genesis(community, day_street.OPENING_UNITS, block_ms=200, tariff=day_street.TARIFF)
    write_genesis(args.dir, genesis)
    for home in day_street.STREET:
        configure(community.root / "meters" / home.meter, home, n, interval_s)
    interval_ms = interval_s * 1000
    start = -(-(wall_ms() + WARMUP_S * 1000) // interval_ms) * interval_ms  # the day starts on a gate
    k0 = start // interval_ms
    ks = range(k0, k0 + n)
    labels = {k: day_street.label(k - k0, n) for k in ks}
    port = args.port or free_port()
    broker, url = start_community_broker(community.root, port, args.embedded)
    ca, validators = [bytes.fromhex(community.ca_pk)], [bytes.fromhex(v.pk) for v in community.validators]
    watch = StreetWatch(console, PeerTable(Verifier(cas=ca)), Verifier(cas=ca, validators=validators), labels)
    watchers = Watchers.choose(args.validators, port)
    (community.root / PROMETHEUS_NAME).write_text(watchers.prometheus_config())
    codes: list[int] = []
    try:
        console.print(
            f"[bold]a street's day[/]: {len(day_street.STREET)} households, {args.validators} validators, "
            f"{n} intervals of {interval_s} s (each {24 * 60 // n} min of the day), from #{k0}; "
            f"broker {broker.kind} on {url}, read-only on mqtt://127.0.0.1:{port}; logs in {community.root / 'logs'}"
        )
        for line in watchers.lines():
            console.print(line)
        watcher = BusClient("127.0.0.1", port, client_id="demo-street", clean_session=True)
        watcher.subscribe(topics.METERS_ALL, watch.on_meter)
        watcher.subscribe(topics.MARKET_ALL, watch.on_result)
        watcher.subscribe(topics.TX_ERC, watch.on_erc)
        watcher.connect()
        try:
            if not watcher.wait_connected(timeout=10):
                console.print("[bold red]demo failed[/]: the monitor could not subscribe")
                return 1
            codes = _run_street(args, community, url, watchers, (start, n, interval_ms), stop, console)
        finally:
            watcher.close()
    finally:
        broker.stop()
    audited = audit_validators(args.dir, args.validators)
    return _report(args, console, community, watch, ks, start, interval_ms, codes, audited)


def configure(state_dir: Path, home: day_street.Household, n: int, interval_s: int) -> None:
    """The household's config.toml: pots scaled to its compressed day, and its policy."""
    full = day_street.full_scale_w(home, n, interval_s)
    path = state_dir / CONFIG_NAME
    path.write_text(tomli_w.dumps({"import_full_w": full, "export_full_w": full}))
    speed = day_street.compression(n, interval_s)  # the meter's W are the compressed day's
    policy.save(path, replace(home.policy, reserve_w=home.policy.reserve_w * speed))


def _run_street(
    args, community: Community, url: str, watchers: Watchers, day: tuple[int, int, int], stop, console
) -> list[int]:
    """Start validators, monitors and meters, run the day (start, intervals, interval ms) and
    its settling tail, stop them: their exit codes."""
    root = community.root
    start, n, interval_ms = day
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    validators: list[tuple[subprocess.Popen, threading.Thread]] = []
    meters: list[tuple[subprocess.Popen, threading.Thread]] = []
    monitors: list[tuple[subprocess.Popen, threading.Thread]] = []
    interval_s = interval_ms // 1000
    try:
        for i in range(len(community.validators)):
            command = [
                "ledger.cli",
                "run",
                str(root),
                "--broker",
                url,
                "--validator",
                str(i),
                *watchers.validator_args(i),
            ]
            validators.append(_start(command, f"v{i}", logs, console))
        monitors = [_start(command, name, logs, console) for command, name in watchers.commands(root, url)]
        for home in day_street.STREET:
            command = [
                "edge.cli", "run", "--state-dir", str(root / "meters" / home.meter), "--broker", url,
                "--adc", "fake", f"--fake-profile={day_street.profile_text(home, n, interval_s)}",
                "--fake-start-ms", str(start), "--reading-s", "1", "--resend-s", "2",
                "--display", "terminal", "--display-out", str(root / "meters" / home.meter / "display.ans"),
            ]  # fmt: skip
            meters.append(_start(command, home.meter, logs, console))
        end = start + (n + SETTLE_INTERVALS) * interval_ms
        deadline = wall_ms() + int(args.seconds * 1000)

        def wait() -> None:
            while not stop.is_set() and wall_ms() < min(end, deadline):
                stop.wait(0.25)

        if args.headless:
            wait()
        else:
            with Live(get_renderable=lambda: _panel(root), refresh_per_second=4, transient=False):
                wait()
    finally:
        # The meters first: the validators then decide what is still in flight (a last export
        # record, an ERC) and reach one head before they stop, instead of one block apart.
        codes = stop_all(meters)
        settle(community.root, len(validators))
        codes = stop_all(validators) + codes + stop_all(monitors)
    return codes


def settle(root: Path, validators: int, timeout_s: float = 15.0) -> None:
    """Wait until every validator's database has the same head for half a second (nothing more
    is coming once the meters stopped), at most timeout_s; the audit says if they never did."""
    deadline, agreed_since = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        heads: set[tuple[int, bytes, bytes] | None] = set()
        for i in range(validators):
            try:
                with validator_store(root, i) as store:
                    heads.add(store.head())
            except Exception:  # a database being written: look again
                heads.add(None)
        if len(heads) == 1 and None not in heads:
            agreed_since = agreed_since or time.monotonic()
            if time.monotonic() - agreed_since >= 0.5:
                return
        else:
            agreed_since = None
        time.sleep(0.1)


def _start(module_args: list[str], name: str, logs: Path, console: Console):
    """A process whose log goes to logs/NAME.log; its agent's orders and its warnings show dimmed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *module_args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def relay() -> None:
        assert proc.stdout is not None
        with open(logs / f"{name}.log", "a") as log:
            for line in proc.stdout:
                log.write(line)
                if " agent: " in line or "Traceback" in line or "rror" in line:
                    console.print(Text("    " + line.rstrip(), style="dim"))

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    return proc, reader


def _panel(root: Path):
    hats = []
    for home in day_street.STREET:
        try:
            frame = Text.from_ansi((root / "meters" / home.meter / "display.ans").read_text())
        except OSError:
            frame = Text("(starting)")
        hats.append(Panel(frame, title=f"{home.meter} {home.kind}", expand=False))
    return Group(Columns(hats))


def _report(
    args, console, community: Community, watch: StreetWatch, ks: range, start: int, interval_ms: int, codes, audited
) -> int:
    with validator_store(community.root, 0) as store:
        state = store.load()
    market = state.market
    assert market is not None, "the street's genesis has a market"
    end = start + len(ks) * interval_ms
    accounts = {m.id: bytes.fromhex(m.account_pk) for m in community.meters if m.account_pk}
    homes = [
        day_ledger.Home(
            h.meter, h.kind, accounts[h.meter],
            day_ledger.imported_between(watch.readings.get(h.meter, []), start, end) or 0,
            day_ledger.exported_in(market, h.meter, ks),
        )
        for h in day_street.STREET
    ]  # fmt: skip
    labels = [watch.labels[k] for k in ks]
    console.print(day_table(day_ledger.household_rows(state, ks, homes), day_street.TARIFF))
    plot = write_plot(day_ledger.interval_rows(state, ks, labels), community.root / "day")
    console.print(f"the day's plot: {plot}")
    fills = day_ledger.day_fills(state, ks)
    refunds = day_ledger.refunds(state, ks, watch.confirmed)
    for refund in refunds:
        doc = refund.fill.fill
        assert doc is not None
        why = refund.why or "[red]the energy was there: the confirmation came too late[/]"
        console.print(f"refunded  #{doc.k} fill {doc.id.hex()[:12]}… {doc.wh} Wh: {why}")
    unfinished, oversold = day_ledger.unfinished(state, ks), oversold_tokens(market)
    late = [r for r in refunds if not r.why]
    settled = sum(r.state == CtpState.SETTLED for r in fills)
    console.print(
        f"market: {len(fills)} fills in the day: {settled} settled, {len(refunds)} refunded "
        f"({len(late)} late), {len(unfinished)} unfinished; tokens oversold: {', '.join(oversold) or 'none'}; "
        f"monitor rejects {watch.rejects}; audit {audited}"
    )
    offline = set(watch.offline) >= {h.meter for h in day_street.STREET}
    ok = (
        all(code == 0 for code in codes)
        and bool(fills)
        and not unfinished
        and not oversold
        and not late
        and not watch.rejects
        and offline
        and audited.startswith("ok")
    )
    console.print(
        "[bold green]demo ok[/]" if ok else f"[bold red]demo failed[/] (exit codes {codes}, all offline: {offline})"
    )
    return 0 if ok else 1
