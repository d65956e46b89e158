"""The chaos run's adapter (deploy.chaos is its pure part): processes, the bus, the databases.

One machine: Mosquitto with the community's TLS and ACL, four `spb-ledger run` validators,
eight `spb-meter run` meters with fake ADCs whose agents trade on the market (policies in
`mode = auto`), direct CTPs queued with `spb-meter ctp` into the running meters, and the
seed's faults. A ninth meter, m0009, is provisioned but never runs: its certificate is the
hostile client's (a client with a running meter's certificate would take over that meter's
session, the broker makes the CN the client id).

Each validator and meter reaches the broker through its own deploy.fault_proxy (the
network faults) and reads its wall clock through broker.clock's offset-file test hook (the
clock jumps); the revocation is what `spb-deploy revoke --broker` does.

A monitor (the community's `monitor` certificate, a persistent session, so the broker keeps
what it missed across a broker restart) records every reading (verified against its meter's
birth), transaction, rejection and status. At the end the agents stop ordering, every held
trade ends by its expiry, the meters and the validators stop cleanly, and the databases are
read back into a deploy.chaos.Report.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from nacl.signing import SigningKey
from rich.console import Console

from broker.args import broker_url
from broker.client import BusClient, TlsFiles
from broker.clock import OFFSET_ENV, wall_ms
from broker.runtime import Mosquitto, find_mosquitto, free_port
from broker.secure import start_secure
from deploy import chaos
from deploy.access import publish_revocation, revoke_meter
from deploy.bus import DEFAULT_MONITOR
from deploy.day import settle
from deploy.fault_proxy import HOST, FaultProxy
from deploy.provision import community_genesis, provision
from deploy.runs import validator_store
from edge import policy
from edge.config import CONFIG_NAME
from edge.store import SENT, MeterStore
from ledger.audit import AuditFailure, audit
from ledger.genesis import write_genesis
from ledger.state import LedgerState
from wire import topics
from wire.cose import MAX_MESSAGE
from wire.messages import Birth, Ctp, CtpState, DevCert, OrderState, Reading, Rejection, Status, open_message
from wire.reasons import Reject
from wire.verify import Verifier

REPO = Path(__file__).resolve().parents[1]
VALIDATORS = 4
INTERVAL_S = 6
I_MS = INTERVAL_S * 1000
BLOCK_MS = 200
OPENING = 100_000  # every account's units in the genesis
GRACE = 1  # the genesis' default: a fill of k expires at the end of k + 1 + GRACE
HOSTILE = "m0009"
REPORT_NAME = "chaos-report.json"  # the table's figures, for tests and tools
# A message the revoked meter published just before its revocation may reach the monitor
# just after: what comes later than this is after the revocation.
REVOKE_GRACE_MS = 2000
SIGNERS = ("payer", "seller", "buyer", "by")  # the body field naming the account key that signs it
TAIL_S = 120  # the longest the settling tail waits, after the last expiry, for every trade to end


@dataclass(frozen=True)
class Household:
    meter: str
    watts: int  # the fake ADC: + import, - export
    source: str | None = None
    sell_min_price: int = 0
    buy_max_price: int = 0
    green_only: bool = False


# Four producers and four consumers whose prices cross every interval (3600 W is 1 Wh a second).
STREET = (
    Household("m0001", -3600, "solar", sell_min_price=2),
    Household("m0002", -3000, "solar", sell_min_price=3),
    Household("m0003", -1800, "wind", sell_min_price=1),
    Household("m0004", -2400, "solar", sell_min_price=2),
    Household("m0005", 3600, buy_max_price=6),
    Household("m0006", 2400, buy_max_price=5, green_only=True),
    Household("m0007", 1800, buy_max_price=4),
    Household("m0008", 3000, buy_max_price=6),
)
PRODUCERS = tuple(h.meter for h in STREET if h.watts < 0)
CONSUMERS = tuple(h.meter for h in STREET if h.watts > 0)


class Child:
    """A `python -m ...` process of the run, logging to logs/NAME.log, restartable."""

    def __init__(self, name: str, args: list[str], logs: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.args, self.logs = name, args, logs
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        with (self.logs / f"{self.name}.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", *self.args],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill_9_and_restart(self) -> str:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = self._spawn()
        return f"killed, restarted as pid {self.proc.pid}"

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM (SIGCONT first: a stopped process cannot act on it) and its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None


class Bus:
    """The monitor's record of the bus, appended on paho's thread.

    Readings are verified (§4 in full, wire.verify) against the device key in their meter's
    birth: one that fails counts as not received, and its reason is kept. A reading that
    comes before its meter's birth (the broker delivers the retained birth on subscribe, so
    only after a meter's first start) waits for it.
    """

    def __init__(self, verifier: Verifier) -> None:
        self.lock = threading.Lock()
        self.verifier = verifier
        self.tx: dict[bytes, tuple[str, bytes]] = {}  # H(payload) -> (typ, payload), first copy
        self.tx_seen_ms: dict[bytes, int] = {}  # H(payload) -> when the monitor first saw it
        self.ctps: list[bytes] = []  # CTP payloads in arrival order: the hostile client replays one
        self.readings: set[tuple[str, int]] = set()
        self.reading_seen_ms: dict[tuple[str, int], int] = {}
        self.bad_readings: list[str] = []
        self.device_keys: dict[str, bytes] = {}  # meter -> the device key of its last verified birth
        self.unborn: dict[str, list[bytes]] = {}  # readings waiting for their meter's birth
        self.rejections: list[Rejection] = []
        self.statuses: list[Status] = []
        self.online: set[str] = set()  # the topics that said `online` last

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        with self.lock:
            typ = topics.expected_type(topic)
            if topic in topics.TX_TYPES:
                digest = hashlib.sha256(payload).digest()
                if digest not in self.tx:
                    self.tx[digest] = (topics.TX_TYPES[topic], payload)
                    self.tx_seen_ms[digest] = wall_ms()
                    if typ == "ctp" and _decodes(payload, Ctp):
                        self.ctps.append(payload)
            elif topic == topics.REJECTS:
                self._open(payload, Rejection, self.rejections)
            elif typ == "status":
                self._open(payload, Status, self.statuses)
            elif typ == "reading":
                self._reading(topic, payload)
            elif typ == "birth":
                self._birth(topic, payload)
            elif topic.startswith(f"{topics.ROOT}/ledger/state/") or topic.endswith("/state"):
                (self.online.add if payload.startswith(topics.ONLINE) else self.online.discard)(topic)

    def _open(self, payload: bytes, kind, into: list) -> None:
        with contextlib.suppress(Reject):  # validators' messages: steps 1-3 are enough for counting
            into.append(open_message(payload, kind).body)

    def _birth(self, topic: str, payload: bytes) -> None:
        meter = topics.parse_meter_topic(topic)
        try:
            birth = self.verifier.verify(payload, wall_ms(), Birth).body
        except Reject as exc:
            self.bad_readings.append(f"{topic}: birth {exc.reason}")
            return
        if meter is None or birth.meter != meter[0]:
            self.bad_readings.append(f"{topic}: birth of {birth.meter}")
            return
        self.device_keys[birth.meter] = open_message(birth.cert, DevCert).body.pk
        for waiting in self.unborn.pop(birth.meter, []):
            self._reading(topic.rsplit("/", 1)[0] + "/reading", waiting)

    def _reading(self, topic: str, payload: bytes) -> None:
        meter = topics.parse_meter_topic(topic)
        name = meter[0] if meter else topic
        if name not in self.device_keys:
            self.unborn.setdefault(name, []).append(payload)
            return
        try:
            r = self.verifier.verify(payload, wall_ms(), Reading, device_key=self.device_keys[name]).body
            if r.meter != name:
                raise Reject("signature", f"a reading of {r.meter} on {topic}")
        except Reject as exc:
            self.bad_readings.append(f"{topic}: {exc.reason} {exc.detail}")
            return
        self.readings.add((r.meter, r.seq))
        self.reading_seen_ms.setdefault((r.meter, r.seq), wall_ms())


def _decodes(payload: bytes, kind) -> bool:
    try:
        open_message(payload, kind)
    except Reject:
        return False
    return True


@dataclass
class Run:
    args: argparse.Namespace
    console: Console
    root: Path
    broker: Mosquitto
    monitor: BusClient
    bus: Bus
    account: dict[str, bytes]
    validators: dict[str, Child] = field(default_factory=dict)
    meters: dict[str, Child] = field(default_factory=dict)
    ctp_procs: list[subprocess.Popen] = field(default_factory=list)
    hostile_sent: list[tuple[str, bytes]] = field(default_factory=list)  # (what, payload)
    proxies: dict[str, FaultProxy] = field(default_factory=dict)  # each validator's and meter's way to the broker
    revoked: tuple[str, int] | None = None  # (meter, revocation time)
    report: chaos.Report | None = None
    # The operator's commands, one at a time (its TLS identity is one client id: two at once
    # would kick each other off the broker), its revocation included.
    operator_lock: threading.Lock = field(default_factory=threading.Lock)
    money: queue.Queue[chaos.MoneyMove | None] = field(default_factory=queue.Queue)
    money_sent: set[str] = field(default_factory=set)  # refs of the operator's funds and payouts
    money_seen_applied: set[str] = field(default_factory=set)  # refs a command said were applied

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def meter_dir(self, meter: str) -> Path:
        return self.root / "meters" / meter

    def via_proxy(self, name: str) -> str:
        """The broker URL `name` connects to: its own FaultProxy, on 127.0.0.1 like the
        broker, so the broker's certificate still names the host the client dials."""
        assert self.broker.port is not None
        proxy = self.proxies.setdefault(name, FaultProxy(self.broker.port))
        return f"mqtts://{HOST}:{proxy.port}"

    def clock_env(self, name: str) -> dict[str, str]:
        """broker.clock's test hook: `name`'s wall clock is the real one plus this file's ms."""
        return {OFFSET_ENV: str(self.root / "clocks" / f"{name}.offset")}

    def jump_clock(self, name: str, ms: int) -> None:
        path = self.root / "clocks" / f"{name}.offset"
        path.with_suffix(".tmp").write_text(f"{ms}\n")
        path.with_suffix(".tmp").replace(path)  # atomic: a reader sees the old offset or the new one

    def start_validator(self, i: int) -> None:
        name = f"v{i}"
        args = ["ledger.cli", "run", str(self.root), "--broker", self.via_proxy(name), "--validator", str(i)]
        self.validators[name] = Child(name, args, self.logs, self.clock_env(name))

    def start_meter(self, h: Household) -> None:
        args = [
            "edge.cli", "run", "--state-dir", str(self.meter_dir(h.meter)), "--broker", self.via_proxy(h.meter),
            "--adc", "fake", f"--fake-w={h.watts}", "--reading-s", "2", "--resend-s", "2",
        ]  # fmt: skip
        self.meters[h.meter] = Child(h.meter, args, self.logs, self.clock_env(h.meter))

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.chaos", description=chaos.__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


def add_chaos(subparsers: argparse._SubParsersAction) -> None:
    """`spb-deploy chaos`: the same run as `python -m deploy.chaos`."""
    p = subparsers.add_parser("chaos", help="run a community under a seeded schedule of faults and check it")
    add_arguments(p)
    p.set_defaults(run=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=1, help="the schedule's seed (default 1)")
    p.add_argument("--minutes", type=float, default=5.0, help="how long the faults go on (default 5)")
    p.add_argument("--dir", type=Path, help="a new or empty dir for the community and logs (default: a temp dir)")


def run(args: argparse.Namespace) -> int:
    console = Console(highlight=False, width=max(100, Console().width))
    if find_mosquitto() is None:
        console.print("chaos needs Mosquitto: apt-get install mosquitto")
        return 2
    root = args.dir or Path(tempfile.mkdtemp(prefix="spb-chaos-"))
    if root.exists() and any(root.iterdir()):
        console.print(f"{root} is not empty: the run provisions a new community")
        return 2
    community = provision(
        root,
        meters=len(STREET) + 1,
        accounts=None,
        validators=VALIDATORS,
        now_ms=wall_ms(),
        sources={h.meter: h.source for h in STREET if h.source},
        interval_s=INTERVAL_S,
    )
    genesis = community_genesis(community, OPENING, block_ms=BLOCK_MS)
    write_genesis(root, genesis)
    for h in STREET:
        auto = policy.Policy(
            mode="auto",
            sell_min_price=h.sell_min_price,
            buy_max_price=h.buy_max_price,
            green_only=h.green_only,
            max_spend_per_day=OPENING,
        )
        policy.save(root / "meters" / h.meter / CONFIG_NAME, auto)
    (root / "logs").mkdir(exist_ok=True)
    broker = start_secure(root / "broker", free_port())
    assert broker.port is not None
    bus = Bus(genesis.verifier())
    monitor = BusClient(
        "127.0.0.1",
        broker.port,
        DEFAULT_MONITOR,
        clean_session=False,
        reconnect_min_delay=0.05,
        reconnect_max_delay=0.5,
        tls=TlsFiles.in_dir(root / "monitoring" / DEFAULT_MONITOR),
    )
    for topic_filter in (topics.TX_ALL, topics.REJECTS, topics.STATUS_ALL, topics.LEDGER_STATE_ALL):
        monitor.subscribe(topic_filter, bus.on_message)
    for leaf in ("reading", "state", "birth"):
        monitor.subscribe(topics.every_meter(leaf), bus.on_message)
    account = {m.id: bytes.fromhex(m.account_pk) for m in community.meters if m.account_pk}
    r = Run(args, console, root, broker, monitor, bus, account)
    (root / "clocks").mkdir()
    r.report = chaos.Report(seed=args.seed, minutes=args.minutes, money_start=sum(dict(genesis.accounts).values()))
    console.print(
        f"[bold]chaos[/]: seed {args.seed}, {args.minutes:g} min of faults; {VALIDATORS} validators, "
        f"{len(STREET)} meters, hostile {HOSTILE}; broker {broker.url}; logs in {root / 'logs'}"
    )
    try:
        monitor.connect()
        if not monitor.wait_connected(10):
            console.print("[bold red]chaos failed[/]: the monitor could not connect")
            return 1
        _run(r)
    finally:
        for child in (*r.meters.values(), *r.validators.values()):
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait(10)
        monitor.close()
        broker.stop()
        for proxy in r.proxies.values():
            proxy.close()
    _read_back(r)
    console.print(chaos.table(r.report))
    (root / REPORT_NAME).write_text(json.dumps(asdict(r.report), indent=1, default=str) + "\n")
    broken = chaos.verdict(r.report)
    for what in broken:
        console.print(f"[red]✗ {what}[/]")
    console.print(f"figures in {root / REPORT_NAME}, logs in {root / 'logs'}")
    console.print("[bold green]chaos ok[/]" if not broken else f"[bold red]chaos failed[/] (seed {args.seed})")
    return 0 if not broken else 1


def _run(r: Run) -> None:
    assert r.report is not None
    for i in range(VALIDATORS):
        r.start_validator(i)
    for h in STREET:
        r.start_meter(h)
    want = {topics.ledger_state(i) for i in range(VALIDATORS)} | {topics.meter(h.meter, "state") for h in STREET}
    if not _wait(lambda: want <= r.bus.online, 90):
        raise SystemExit(f"not online within 90 s: {sorted(want - r.bus.online)}; logs in {r.logs}")
    r.say("everyone online: the faults begin")
    faults = chaos.schedule(r.args.seed, r.args.minutes, VALIDATORS, tuple(h.meter for h in STREET), HOSTILE)
    window = max(r.args.minutes * 60, max(f.end_s for f in faults))
    # Each fault begins at at_s and, if it lasts, ends at at_s + seconds: faults of the two
    # lanes interleave. (time, order, what): ends before begins at the same instant.
    plan: list[tuple[float, int, chaos.Fault | chaos.DirectCtp | chaos.MoneyMove, bool]] = []
    for f in faults:
        plan.append((f.at_s, 1, f, True))
        if f.seconds:
            plan.append((f.at_s + f.seconds, 0, f, False))
    plan += [(c.at_s, 2, c, True) for c in chaos.direct_ctps(r.args.seed, window / 60, CONSUMERS, PRODUCERS)]
    households = tuple(h.meter for h in STREET)
    plan += [(m.at_s, 3, m, True) for m in chaos.money_moves(r.args.seed, window / 60, households)]
    plan.sort(key=lambda e: (e[0], e[1]))
    operator = threading.Thread(target=_operator, args=(r,), name="operator", daemon=True)
    operator.start()
    start = time.monotonic()
    for at_s, _, event, begin in plan:
        delay = start + at_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the schedule's time: a scenario, not a wait on a condition
        if isinstance(event, chaos.DirectCtp):
            _direct_ctp(r, event)
        elif isinstance(event, chaos.MoneyMove):
            r.money.put(event)  # the operator's thread sends it: its commands wait for their outcome
        elif begin:
            outcome = _begin(r, event)
            r.report.faults.append((event, outcome))
            what = f"{event.kind} {event.target} {event.seconds or ''} {event.amount or ''}"
            r.say(f"+{event.at_s:5.1f} s  {what}: {outcome}")
        else:
            r.say(f"+{at_s:5.1f} s  {event.kind} {event.target}: {_end(r, event)}")
    time.sleep(max(0.0, start + window - time.monotonic()))
    r.money.put(None)
    operator.join()
    _tail(r)


def _begin(r: Run, f: chaos.Fault) -> str:
    if f.kind == chaos.KILL_VALIDATOR:
        return r.validators[f.target].kill_9_and_restart()
    if f.kind == chaos.KILL_METER:
        return r.meters[f.target].kill_9_and_restart()
    if f.kind == chaos.PAUSE_VALIDATOR:
        r.validators[f.target].proc.send_signal(signal.SIGSTOP)
        return f"stopped for {f.seconds} s"
    if f.kind == chaos.BROKER_RESTART:
        r.broker.stop()
        return f"stopped for {f.seconds} s"
    if f.kind == chaos.NET_DELAY:
        r.proxies[f.target].delay(f.amount)
        return f"+{f.amount} ms each way for {f.seconds} s"
    if f.kind == chaos.PARTITION:
        r.proxies[f.target].partition(True)
        return f"no bytes either way for {f.seconds} s"
    if f.kind == chaos.CUT:
        return f"{r.proxies[f.target].cut()} connection(s) closed"
    if f.kind == chaos.CLOCK_JUMP:
        r.jump_clock(f.target, f.amount)
        return f"wall clock {f.amount / 1000:+.1f} s for {f.seconds} s"
    if f.kind == chaos.REVOKE_METER:
        return _revoke(r, f.target)
    return _hostile(r, f)


def _end(r: Run, f: chaos.Fault) -> str:
    if f.kind == chaos.PAUSE_VALIDATOR:
        r.validators[f.target].proc.send_signal(signal.SIGCONT)
        return "continued"
    if f.kind == chaos.BROKER_RESTART:
        port, data_dir = r.broker.port, r.broker.data_dir
        assert port is not None and data_dir is not None
        r.broker.start(port, data_dir)
        return f"back on port {port}"
    if f.kind == chaos.NET_DELAY:
        r.proxies[f.target].delay(0)
        return "delay over"
    if f.kind == chaos.PARTITION:
        r.proxies[f.target].partition(False)
        return "bytes move again"
    assert f.kind == chaos.CLOCK_JUMP, f
    r.jump_clock(f.target, 0)
    return "wall clock back"


def _revoke(r: Run, meter: str) -> str:
    """`spb-deploy revoke DIR METER --broker URL` while the meter trades: CRL and ACL
    rewritten, the broker SIGHUPed, the CA's revoke message sent to the ledger."""
    try:
        entry, message, reloaded = revoke_meter(r.root, meter, wall_ms())
        r.revoked = (meter, entry.t)
        with r.operator_lock:
            publish_revocation(r.root, message, broker_url(r.broker.url))
    except Exception as exc:  # the verdict names a fault that could not be applied
        return f"failed: {exc!r}"
    return f"revoked at {entry.t}, {len(reloaded)} broker(s) reloaded, revoke on the bus"


def _operator(r: Run) -> None:
    """The operator's funds and payouts, in order, each by `spb-ledger fund|withdraw`: a move
    sent twice and a move whose command heard no answer (the broker away, a validator down)
    are sent again with the same reference, as an operator retries a payment."""
    assert r.report is not None
    outcomes: Counter[str] = Counter()
    while (move := r.money.get()) is not None:
        r.money_sent.add(move.ref)
        for _ in range(2 if move.again else 1):
            for _ in range(3):  # a command that heard no answer is sent again, same reference
                outcome = _money_command(r, move)
                outcomes[outcome] += 1
                if outcome.endswith("applied"):
                    r.money_seen_applied.add(move.ref)
                if not outcome.endswith("no answer"):
                    break
        r.report.money_outcomes = dict(outcomes)


def _money_command(r: Run, move: chaos.MoneyMove) -> str:
    """One `spb-ledger fund|withdraw` run, and what it said: "fund applied", "withdraw
    rejected insufficient-funds", "fund no answer"."""
    args = [move.kind, str(r.root), move.meter, str(move.amount), "--ref", move.ref]
    with r.operator_lock:
        done = subprocess.run(
            [sys.executable, "-m", "ledger.cli", *args, "--broker", r.broker.url, "--timeout", "20"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    words = (done.stdout.strip().splitlines() or [""])[-1].replace(":", " ").split()
    if done.returncode == 0 and words[:1] == ["applied"]:
        return f"{move.kind} applied"
    if words[:2] == ["rejected", move.kind] and len(words) > 2:
        return f"{move.kind} rejected {words[2]}"
    return f"{move.kind} no answer"


def _direct_ctp(r: Run, c: chaos.DirectCtp) -> None:
    """`spb-meter ctp` on the buyer's state dir: the running meter sends it."""
    payee = r.account[c.seller].hex()
    args = ["edge.cli", "ctp", str(r.meter_dir(c.buyer)), payee, str(c.amount), str(c.wh)]
    r.ctp_procs.append(
        subprocess.Popen(
            [sys.executable, "-m", *args, "--expiry", str(chaos.CTP_EXPIRY_S)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **r.clock_env(c.buyer)},  # the buyer's clock signs it
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    )


def _hostile(r: Run, f: chaos.Fault) -> str:
    """m0009's certificate publishes garbage, an oversized payload, a replay of a real CTP
    from the bus and a CTP forged with a wrong key."""
    assert r.broker.port is not None and r.report is not None
    rng = random.Random(f"hostile-{r.args.seed}-{f.at_s}")  # new bytes each time: no copy of the last attack
    ours = {payload for _, payload in r.hostile_sent}
    with r.bus.lock:
        real_ctps = [p for p in r.bus.ctps if p not in ours]  # a meter's, not an earlier attack's
        first = next((m for m in r.bus.tx.values() if m[1] not in ours), None)  # no CTP yet: any real transaction
    captured = rng.choice(real_ctps) if real_ctps else None
    if captured is not None:
        real = open_message(captured, Ctp).body
    else:  # no direct CTP yet: forge one between two real accounts
        now = wall_ms()
        real = Ctp(
            id=rng.randbytes(16),
            payer=r.account[CONSUMERS[0]],
            payee=r.account[PRODUCERS[0]],
            amount=5,
            wh=1,
            exp=now + 60_000,
            meter=rng.randbytes(32),
            t=now,
        )
    forged = replace(real, id=rng.randbytes(16)).sign(SigningKey(rng.randbytes(32)))
    sends = [
        ("garbage", topics.TX_CTP, rng.randbytes(200)),
        ("oversized", topics.TX_CTP, rng.randbytes(MAX_MESSAGE + 6 * 1024)),
        ("forged", topics.TX_CTP, forged),
    ]
    if captured is not None:
        sends.append(("replay", topics.TX_CTP, captured))
    elif first is not None:
        typ, payload = first
        sends.append(("replay", next(t for t, kind in topics.TX_TYPES.items() if kind == typ), payload))
    client = BusClient(
        "127.0.0.1", r.broker.port, HOSTILE, clean_session=True, tls=TlsFiles.in_dir(r.meter_dir(HOSTILE))
    )
    client.connect()
    try:
        if not client.wait_connected(10):
            return "could not connect"
        acked = [client.wait_acked(client.publish(topic, payload), 10) for _, topic, payload in sends]
    finally:
        client.close()
    r.hostile_sent += [(what, payload) for what, _, payload in sends]
    return ", ".join(f"{what} {'acked' if ok else 'not acked'}" for (what, _, _), ok in zip(sends, acked, strict=True))


def _tail(r: Run) -> None:
    """Stop ordering, let every held trade end by its expiry, stop everyone cleanly."""
    assert r.report is not None
    for h in STREET:
        path = r.meter_dir(h.meter) / CONFIG_NAME
        policy.save(path, policy.load(path).with_set(["mode=manual"]))
    for proc in r.ctp_procs:
        out, _ = proc.communicate(timeout=60)
        if proc.returncode == 0:
            r.report.direct_sent += 1
        else:
            r.say(f"spb-meter ctp refused: {out.decode(errors='replace').strip().splitlines()[-1:]}")
    now = wall_ms()
    last_exp = max((now // I_MS + 2 + GRACE) * I_MS, now + chaos.CTP_EXPIRY_S * 1000)
    r.say(f"settling tail: orders stopped; every trade ends by {(last_exp - now) / 1000:.0f} s from now")
    deadline = time.monotonic() + (last_exp - now) / 1000 + TAIL_S
    while (why := _still_open(r, last_exp)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if why:
        r.report.unended.append(f"after the tail: {why}")
    r.say("every trade ended; stopping the meters")
    for name, child in r.meters.items():
        r.report.exit_codes[name] = child.stop()
    sent = _readings_sent(r)
    _wait(lambda: _readings_missing(r, sent) == [], 20)
    settle(r.root, VALIDATORS)
    for name, child in r.validators.items():
        r.report.exit_codes[name] = child.stop()
    r.say("everyone stopped")


def _still_open(r: Run, last_exp: int) -> str:
    """What is still open ("" once nothing is): the clock, the ledger, the meters' stores."""
    if wall_ms() <= last_exp:
        return f"the clock before {last_exp}"
    try:
        with validator_store(r.root, 0) as store:
            state = store.load()
    except Exception as exc:  # a database being written: look again
        return f"v0 unreadable: {exc}"
    assert state.market is not None
    held = [rec.ctp.id.hex()[:12] for rec in state.ctps.values() if rec.state == CtpState.HELD]
    if held or state.market.pending:
        return f"held {held}, pending intervals {sorted(state.market.pending)}"
    for h in STREET:
        if r.revoked and h.meter == r.revoked[0]:
            continue  # refused by the broker: what it still has open, it cannot send
        meter = MeterStore(r.meter_dir(h.meter) / "meter.db")
        try:
            open_orders = [o.id.hex()[:12] for o in meter.orders() if o.state in (SENT, OrderState.OPEN)]
            open_trades = [t.id.hex()[:12] for t in meter.trades() if t.state in (SENT, CtpState.HELD)]
            open_trades += [x.id.hex()[:12] for x in meter.sales() if x.state == CtpState.HELD]
        finally:
            meter.close()
        if open_orders or open_trades:
            return f"{h.meter}: orders {open_orders}, trades {open_trades}"
    return ""


def _readings_sent(r: Run) -> dict[str, tuple[int, set[int]]]:
    """Per meter: the last seq its store used, and the seqs of readings still in its outbox.

    The seq counter is edge.store's `counters` table (read-only here, the meter stopped)."""
    sent = {}
    for h in STREET:
        db = sqlite3.connect(f"file:{r.meter_dir(h.meter) / 'meter.db'}?mode=ro", uri=True)
        try:
            (last,) = db.execute("SELECT value FROM counters WHERE name = 'seq'").fetchone()
            rows = db.execute("SELECT payload FROM outbox WHERE kind = 'reading'").fetchall()
        finally:
            db.close()
        sent[h.meter] = (last, {open_message(p, Reading).body.seq for (p,) in rows})
    return sent


def _readings_missing(r: Run, sent: dict[str, tuple[int, set[int]]]) -> list[str]:
    """Readings a store used that the monitor never verified and that are not in the outbox.

    A revoked meter is expected up to the last seq the monitor had when it was revoked:
    later ones the broker refuses (counted apart, `_after_revocation`)."""
    with r.bus.lock:
        got = set(r.bus.readings)
    return [
        f"{meter} #{seq}"
        for meter, (last, pending) in sent.items()
        for seq in range(1, _expected_last(r, meter, last) + 1)
        if (meter, seq) not in got and seq not in pending
    ]


def _expected_last(r: Run, meter: str, last: int) -> int:
    """The last seq of `meter` that must reach the monitor: all, or for the revoked meter the
    last that reached it within REVOKE_GRACE_MS of the revocation."""
    if r.revoked is None or r.revoked[0] != meter:
        return last
    until = r.revoked[1] + REVOKE_GRACE_MS
    with r.bus.lock:
        before = [seq for (m, seq), ms in r.bus.reading_seen_ms.items() if m == meter and ms <= until]
    return min(last, max(before, default=0))


def _read_back(r: Run) -> None:
    """The report's figures from the bus record, the meters' stores and every validator's database."""
    rep = r.report
    assert rep is not None
    sent = _readings_sent(r)
    rep.readings_sent = sum(last for last, _ in sent.values())
    rep.readings_pending = sum(len(pending) for _, pending in sent.values())
    rep.readings_received = len(r.bus.readings)
    rep.readings_lost = _readings_missing(r, sent)
    rep.readings_unverified = list(r.bus.bad_readings) + [
        f"{meter}: {len(waiting)} reading(s) without a birth" for meter, waiting in r.bus.unborn.items()
    ]
    if r.revoked:
        meter, t = r.revoked
        last, pending = sent[meter]
        expected = _expected_last(r, meter, last)
        got = {seq for m, seq in r.bus.readings if m == meter}
        rep.readings_refused = sum(seq not in got and seq not in pending for seq in range(expected + 1, last + 1))
        late = sorted(seq for seq in got if seq > expected)
        rep.readings_after_revocation = len(late)
        rep.revoked_through += [f"reading #{seq} +{r.bus.reading_seen_ms[meter, seq] - t} ms" for seq in late]
    hostile = {hashlib.sha256(p).digest() for what, p in r.hostile_sent if what != "replay"}
    rep.tx_sent = dict(Counter(typ for digest, (typ, _) in r.bus.tx.items() if digest not in hostile))
    reasons: dict[bytes, set[str]] = {}
    for rejection in r.bus.rejections:
        reasons.setdefault(rejection.msg, set()).add(rejection.reason)
    rep.rejected = dict(Counter(reason for why in reasons.values() for reason in why))
    states: list[LedgerState] = []
    money_ops: list[tuple[str, bytes, int]] = []
    for i in range(VALIDATORS):
        with validator_store(r.root, i) as store:
            state = store.load()
            height, digest, _ = store.head()
            try:
                report = audit(store)
                verdict = f"ok: {report.trades} trades, {report.ctps} CTPs"
            except AuditFailure as exc:
                verdict = f"failed at height {exc.height}: {exc.what}"
            applied = {ref for (ref,) in store.db.execute("SELECT ref FROM money")}
            ops = list(store.db.execute("SELECT typ, account, amount FROM money ORDER BY height, idx"))
        states.append(state)
        end = chaos.ValidatorEnd(f"v{i}", height, digest.hex(), verdict, state.total(), state.funded, state.withdrawn)
        rep.validators.append(end)
        if i == 0:
            rep.refs_unknown = sorted(applied - r.money_sent)
            rep.refs_missing = sorted(r.money_seen_applied - applied)
            money_ops = ops
    state = states[0]
    assert state.market is not None
    records = state.ctps.values()
    rep.fills = sum(rec.fill is not None for rec in records)
    rep.direct_accepted = sum(rec.fill is None for rec in records)
    rep.orders_booked = len(state.market.orders)
    rep.settled = sum(rec.state == CtpState.SETTLED for rec in records)
    rep.refunded = sum(rec.state == CtpState.REFUNDED for rec in records)
    rep.unended += [f"CTP {rec.ctp.id.hex()[:12]} held" for rec in records if rec.state == CtpState.HELD]
    rep.unended += [f"interval {k} pending" for k in sorted(state.market.pending)]
    rep.unended += [
        f"order {o.id.hex()[:12]} {o.state}"
        for o in state.market.orders.values()
        if o.state in (OrderState.OPEN, OrderState.SEALED)
    ]
    rep.unended += [f"escrow {pk.hex()[:12]} {n}" for pk, n in state.held.items() if n]
    rep.settled_twice = _settled_twice(r, states, money_ops)
    _after_revocation(r, state)
    hashes = {hashlib.sha256(p).digest(): what for what, p in r.hostile_sent}
    for what, payload in r.hostile_sent:
        why = reasons.get(hashlib.sha256(payload).digest())
        rep.hostile.append((what, f"rejected: {', '.join(sorted(why))}" if why else "no rejection published"))
    rep.hostile_accepted = [
        f"{hashes[rec.hash]} {rec.ctp.id.hex()[:12]}"
        for rec in records
        if rec.hash in hashes and hashes[rec.hash] != "replay"
    ]


def _after_revocation(r: Run, state: LedgerState) -> None:
    """The revoked meter's transactions (signed by its account key) that the monitor first
    saw more than REVOKE_GRACE_MS after the revocation, and which of those the ledger took."""
    rep = r.report
    assert rep is not None and state.market is not None
    if r.revoked is None:
        return
    meter, t = r.revoked
    rep.revoked = f"{meter} at {t}"
    key = r.account[meter]
    accepted = {rec.hash for rec in state.ctps.values()} | {o.hash for o in state.market.orders.values()}
    for digest, (typ, payload) in r.bus.tx.items():
        if r.bus.tx_seen_ms[digest] <= t + REVOKE_GRACE_MS:
            continue
        try:
            body = open_message(payload).body
            signer = next((getattr(body, name) for name in SIGNERS if hasattr(body, name)), None)
            if signer != key:
                continue
            r.bus.verifier.verify(payload, wall_ms())  # signed by it: the hostile client forges CTPs naming it
        except Reject:
            continue
        rep.revoked_seen_after += 1
        rep.revoked_through.append(f"{typ} {digest.hex()[:12]} +{r.bus.tx_seen_ms[digest] - t} ms")
        if digest in accepted:
            rep.revoked_accepted.append(f"{typ} {digest.hex()[:12]}")


def _settled_twice(r: Run, states: list[LedgerState], money_ops: list[tuple[str, bytes, int]]) -> list[str]:
    """Trades that ended two ways on the bus, validators that disagree on a trade, and money
    that moved other than once per settled trade, fund and payout: balance + held = opening
    + received - paid + funded - paid out."""
    found = []
    ends: dict[bytes, set[str]] = {}
    for status in r.bus.statuses:
        if status.state in (CtpState.SETTLED, CtpState.REFUNDED):
            ends.setdefault(status.ctp, set()).add(status.state)
    found += [f"{ctp.hex()[:12]} {sorted(s)}" for ctp, s in ends.items() if len(s) > 1]
    first = states[0]
    for i, state in enumerate(states[1:], 1):
        if {k: v.state for k, v in state.ctps.items()} != {k: v.state for k, v in first.ctps.items()}:
            found.append(f"v{i}'s trades differ from v0's")
    expected = dict(first.genesis.accounts)
    for rec in first.ctps.values():
        if rec.state == CtpState.SETTLED:
            expected[rec.ctp.payer] -= rec.ctp.amount
            expected[rec.ctp.payee] += rec.ctp.amount
    for typ, account, amount in money_ops:
        expected[account] += amount if typ == "fund" else -amount
    for i, state in enumerate(states):
        have = {pk: state.balances[pk] + state.held[pk] for pk in expected}
        wrong = [pk.hex()[:12] for pk in expected if have[pk] != expected[pk]]
        if wrong:
            found.append(f"v{i}: balances not opening + received - paid for {wrong}")
    return found


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
