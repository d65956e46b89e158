"""`make chaos SEED=n MINUTES=m`: the whole community on one machine under a seeded schedule of faults.

This module is the pure part: the schedule of faults and direct trades a seed makes, the
figures a run collects (Report), the verdict on them and the table that prints them. The
run itself, processes, bus and databases, is deploy.chaos_run; `python -m deploy.chaos` and
`spb-deploy chaos` start it.

The same seed gives the same schedule, so a failing run is replayed with its seed (the wall
clock, the OS scheduler and the broker still order things differently from run to run: a
seed fixes what happens and when, not every interleaving). Each fault is recoverable and
ends before the next one starts: a process killed with SIGKILL is started again on its
state dir at once; a paused validator gets SIGCONT; the broker comes back on its port and
persistence dir. Not done in this version: network faults on loopback, clock jumps and a
meter revoked mid-run (docs/RELIABILITY.md).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from rich.table import Table

KILL_VALIDATOR = "kill -9 validator"
KILL_METER = "kill -9 meter"
BROKER_RESTART = "broker restart"
PAUSE_VALIDATOR = "SIGSTOP validator"
HOSTILE = "hostile client"
KINDS = (KILL_VALIDATOR, KILL_METER, BROKER_RESTART, PAUSE_VALIDATOR, HOSTILE)
# Seconds the system gets after a fault ends before the next one starts: a killed process
# boots and catches up, the clients' reconnect backoff (1 s, doubling) finds the broker again.
RECOVERY_S = {KILL_VALIDATOR: 5.0, KILL_METER: 5.0, BROKER_RESTART: 8.0, PAUSE_VALIDATOR: 4.0, HOSTILE: 2.0}
OUTAGE_S = (2.0, 4.0)  # how long the broker stays away
PAUSE_S = (2.0, 5.0)  # how long a validator stays stopped
GAP_S = (1.0, 3.0)  # quiet time between one fault's recovery and the next fault
CTP_EVERY_S = (3.0, 6.0)  # a direct CTP from some consumer to some producer this often
CTP_WH = (1, 4)  # Wh a direct CTP buys (a consumer imports 1 Wh in about a second or two)
CTP_PRICE = 5  # units per Wh of a direct CTP
CTP_EXPIRY_S = 20  # a direct CTP lapses (its money returns) after this long


@dataclass(frozen=True)
class Fault:
    """One fault: `at_s` seconds after the chaos window opened, on `target` (v0.., m0001..,
    the broker, the hostile identity), lasting `seconds` (an outage, a pause; 0: at once)."""

    at_s: float
    kind: str
    target: str
    seconds: float = 0.0


@dataclass(frozen=True)
class DirectCtp:
    """`spb-meter ctp` on the buyer's state dir at `at_s`: wh Wh from the seller for amount units."""

    at_s: float
    buyer: str
    seller: str
    wh: int
    amount: int


def schedule(seed: int, minutes: float, validators: int, meters: tuple[str, ...], hostile: str) -> list[Fault]:
    """The faults of a run, in time order, none overlapping another's recovery.

    Each kind of fault comes once first, in an order the seed shuffles (so even a one-minute
    run has every kind), then kinds the seed draws until the window of `minutes` is full.
    """
    rng = random.Random(seed)
    window = minutes * 60
    first = list(KINDS)
    rng.shuffle(first)
    faults: list[Fault] = []
    t = rng.uniform(*GAP_S)
    while True:
        kind = first.pop(0) if first else rng.choice(KINDS)
        if kind in (KILL_VALIDATOR, PAUSE_VALIDATOR):
            target = f"v{rng.randrange(validators)}"
        elif kind == KILL_METER:
            target = rng.choice(meters)
        elif kind == BROKER_RESTART:
            target = "broker"
        else:
            target = hostile
        seconds = 0.0
        if kind == BROKER_RESTART:
            seconds = round(rng.uniform(*OUTAGE_S), 1)
        elif kind == PAUSE_VALIDATOR:
            seconds = round(rng.uniform(*PAUSE_S), 1)
        end = t + seconds + RECOVERY_S[kind]
        if end > window and len(faults) >= len(KINDS):
            return faults
        faults.append(Fault(round(t, 1), kind, target, seconds))
        t = end + rng.uniform(*GAP_S)


def direct_ctps(
    seed: int, minutes: float, buyers: tuple[str, ...], sellers: tuple[str, ...], until_s: float | None = None
) -> list[DirectCtp]:
    """The direct trades of a run (beside the agents' market orders), in time order, from a
    generator of their own so that they do not shift the faults of the same seed."""
    rng = random.Random(f"ctp-{seed}")
    end = minutes * 60 if until_s is None else until_s
    plan, t = [], rng.uniform(*CTP_EVERY_S)
    while t < end:
        wh = rng.randint(*CTP_WH)
        plan.append(DirectCtp(round(t, 1), rng.choice(buyers), rng.choice(sellers), wh, wh * CTP_PRICE))
        t += rng.uniform(*CTP_EVERY_S)
    return plan


@dataclass
class ValidatorEnd:
    """One validator after the run: its head, its audit (`ok ...` or why not), its money."""

    name: str
    height: int
    head: str  # the head block's hash, hex
    audit: str
    money: int  # balances + holds


@dataclass
class Report:
    """What a run counted, for the table and the verdict."""

    seed: int
    minutes: float
    faults: list[tuple[Fault, str]] = field(default_factory=list)  # each with what happened
    tx_sent: dict[str, int] = field(default_factory=dict)  # distinct messages on the bus, by type
    rejected: dict[str, int] = field(default_factory=dict)  # distinct messages, by reason
    direct_sent: int = 0  # `spb-meter ctp` runs that queued a CTP
    direct_accepted: int = 0
    fills: int = 0
    orders_booked: int = 0
    settled: int = 0
    refunded: int = 0
    unended: list[str] = field(default_factory=list)  # accepted transactions still open, why
    settled_twice: list[str] = field(default_factory=list)  # trades with two ends, or money moved twice
    readings_sent: int = 0  # seqs the meters' stores used
    readings_received: int = 0  # distinct (meter, seq) the monitor got
    readings_lost: list[str] = field(default_factory=list)  # "m0003 #17"
    readings_pending: int = 0  # still in an outbox at the end (not yet sent: not lost)
    hostile: list[tuple[str, str]] = field(default_factory=list)  # (what was sent, how the ledger answered)
    hostile_accepted: list[str] = field(default_factory=list)
    money_start: int = 0
    validators: list[ValidatorEnd] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)  # at the clean stop


def verdict(r: Report) -> list[str]:
    """Every invariant the run broke, in words; [] if it held them all (exit 0)."""
    broken = []
    ends = [v.money for v in r.validators]
    if not ends or any(m != r.money_start for m in ends):
        broken.append(f"money not conserved: {r.money_start} at the start, {ends} at the end")
    if r.settled_twice:
        broken.append(f"settled twice: {', '.join(r.settled_twice[:5])}")
    if r.unended:
        broken.append(f"{len(r.unended)} accepted transaction(s) never ended: {', '.join(r.unended[:5])}")
    if r.readings_lost:
        broken.append(f"{len(r.readings_lost)} reading(s) lost: {', '.join(r.readings_lost[:10])}")
    if len({(v.height, v.head) for v in r.validators}) != 1:
        broken.append("the validators' heads differ")
    broken += [f"{v.name} audit: {v.audit}" for v in r.validators if not v.audit.startswith("ok")]
    if r.hostile_accepted:
        broken.append(f"the ledger accepted hostile messages: {', '.join(r.hostile_accepted)}")
    stopped_badly = {name: code for name, code in r.exit_codes.items() if code != 0}
    if stopped_badly:
        broken.append(f"processes that did not stop cleanly: {stopped_badly}")
    if r.settled + r.refunded == 0:
        broken.append("no trade ended at all: nothing was tested")
    return broken


def table(r: Report) -> Table:
    """The run in one table: transactions, readings, money, validators, the seed."""
    t = Table(title=f"chaos run: seed {r.seed}, {r.minutes:g} min, {len(r.faults)} faults", show_lines=False)
    t.add_column("what")
    t.add_column("figure", justify="right")
    t.add_column("detail")
    kinds = Counter(f.kind for f, _ in r.faults)
    t.add_row("faults", str(len(r.faults)), ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    t.add_row(
        "transactions sent",
        str(sum(r.tx_sent.values())),
        "distinct on the bus, the hostile client's aside: "
        + ", ".join(f"{k} {n}" for k, n in sorted(r.tx_sent.items())),
    )
    t.add_row("  direct CTPs queued", str(r.direct_sent), f"{r.direct_accepted} accepted by the ledger")
    t.add_row("  orders booked", str(r.orders_booked), f"{r.fills} fills")
    for reason, n in sorted(r.rejected.items()):
        t.add_row(f"  rejected: {reason}", str(n), "")
    t.add_row("trades settled", str(r.settled), "")
    t.add_row("trades refunded", str(r.refunded), "")
    t.add_row("accepted, never ended", str(len(r.unended)), ", ".join(r.unended[:3]))
    t.add_row("settled twice", str(len(r.settled_twice)), ", ".join(r.settled_twice[:3]))
    for (sent, answer), n in sorted(Counter(r.hostile).items()):
        t.add_row(f"  hostile {sent}", str(n), answer)
    t.add_row("readings sent", str(r.readings_sent), f"{r.readings_pending} still in an outbox")
    t.add_row("readings received", str(r.readings_received), f"lost {len(r.readings_lost)}")
    t.add_row("money at the start", str(r.money_start), "")
    for v in r.validators:
        t.add_row(f"{v.name} money at the end", str(v.money), "")
    for v in r.validators:
        t.add_row(f"{v.name} head", str(v.height), f"{v.head[:16]}…  audit {v.audit}")
    t.add_row("seed", str(r.seed), f"replay: make chaos SEED={r.seed} MINUTES={r.minutes:g}")
    return t


def main(argv: list[str] | None = None) -> int:
    from deploy.chaos_run import main as run_main  # processes and sockets only when run

    return run_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
