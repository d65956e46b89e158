"""`make chaos SEED=n MINUTES=m`: the whole community on one machine under a seeded schedule of faults.

This module is the pure part: the schedule of faults and direct trades a seed makes, the
figures a run collects (Report), the verdict on them and the table that prints them. The
run itself, processes, bus and databases, is deploy.chaos_run; `python -m deploy.chaos` and
`spb-deploy chaos` start it.

The same seed gives the same schedule, so a failing run is replayed with its seed (the wall
clock, the OS scheduler and the broker still order things differently from run to run: a
seed fixes what happens and when, not every interleaving). Faults come in two lanes. The
first is one fault at a time, each recovered from before the next: a process killed with
SIGKILL is started again on its state dir at once; a paused validator gets SIGCONT; the
broker comes back on its port and persistence dir; a meter is revoked (once). The second,
beside it, breaks the network (deploy.fault_proxy: delay, partition, cut) and the clocks
(broker.clock's test hook) of validators and meters; the lanes overlap, but never two
validators are down at once (`down`: QBFT's f = 1 of 4).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field, replace

from rich.table import Table

KILL_VALIDATOR = "kill -9 validator"
KILL_METER = "kill -9 meter"
BROKER_RESTART = "broker restart"
PAUSE_VALIDATOR = "SIGSTOP validator"
HOSTILE = "hostile client"
REVOKE_METER = "meter revoked"
NET_DELAY = "network delay"
PARTITION = "network partition"
CUT = "connections cut"
CLOCK_JUMP = "clock jump"
# Two lanes of faults. The first is one fault at a time, each recovered before the next; the
# second (the network and the clocks) runs beside it, so faults overlap, but never two
# validators down at once (QBFT's f = 1 of 4): see `down`.
FIRST_LANE = (KILL_VALIDATOR, KILL_METER, BROKER_RESTART, PAUSE_VALIDATOR, HOSTILE, REVOKE_METER)
SECOND_LANE = (NET_DELAY, PARTITION, CUT, CLOCK_JUMP)
KINDS = FIRST_LANE + SECOND_LANE
ONCE = (REVOKE_METER,)  # a revoked meter stays revoked: one per run
# Seconds the system gets after a fault ends before the next one of its lane starts: a killed
# process boots and catches up, the clients' reconnect backoff (1 s, doubling) finds the broker again.
RECOVERY_S = {
    KILL_VALIDATOR: 5.0,
    KILL_METER: 5.0,
    BROKER_RESTART: 8.0,
    PAUSE_VALIDATOR: 4.0,
    HOSTILE: 2.0,
    REVOKE_METER: 2.0,
    NET_DELAY: 3.0,
    PARTITION: 5.0,
    CUT: 4.0,
    CLOCK_JUMP: 3.0,
}
OUTAGE_S = (2.0, 4.0)  # how long the broker stays away
PAUSE_S = (2.0, 5.0)  # how long a validator stays stopped
PARTITION_S = (3.0, 8.0)  # how long a client's bytes stop moving (under the 30 s keepalive: a stall)
DELAY_S = (4.0, 10.0)  # how long a client's link is slow
DELAY_MS = (100, 600)  # added each way
JUMP_S = (4.0, 12.0)  # how long a wall clock stays jumped (under ClockGuard's 60 s: never believed)
JUMP_MS = (10_000, 120_000)  # how far, forward or back
GAP_S = (1.0, 3.0)  # quiet time between one fault's recovery and the next fault of its lane
# How long each fault that lasts lasts.
SPANS = {
    BROKER_RESTART: OUTAGE_S,
    PAUSE_VALIDATOR: PAUSE_S,
    PARTITION: PARTITION_S,
    NET_DELAY: DELAY_S,
    CLOCK_JUMP: JUMP_S,
}
CTP_EVERY_S = (3.0, 6.0)  # a direct CTP from some consumer to some producer this often
CTP_WH = (1, 4)  # Wh a direct CTP buys (a consumer imports 1 Wh in about a second or two)
CTP_PRICE = 5  # units per Wh of a direct CTP
CTP_EXPIRY_S = 20  # a direct CTP lapses (its money returns) after this long


@dataclass(frozen=True)
class Fault:
    """One fault: `at_s` seconds after the chaos window opened, on `target` (v0.., m0001..,
    the broker, the hostile identity), lasting `seconds` (an outage, a pause, a partition, a
    delay, a jumped clock; 0: at once); `amount` is a delay's ms each way or a clock jump's
    ms (negative: back)."""

    at_s: float
    kind: str
    target: str
    seconds: float = 0.0
    amount: int = 0

    @property
    def end_s(self) -> float:
        """When the next fault of its lane may start: the fault over and recovered from."""
        return self.at_s + self.seconds + RECOVERY_S[self.kind]


VALIDATOR_DOWN = (KILL_VALIDATOR, PAUSE_VALIDATOR, PARTITION, CUT, NET_DELAY)


def down(f: Fault) -> tuple[str, float, float] | None:
    """(validator, from, until) if `f` takes a validator out of consensus: killed, stopped,
    cut off, partitioned or slowed (counted as down to be safe), until it has recovered."""
    if f.kind in VALIDATOR_DOWN and f.target.startswith("v"):
        return f.target, f.at_s, f.end_s
    return None


@dataclass(frozen=True)
class DirectCtp:
    """`spb-meter ctp` on the buyer's state dir at `at_s`: wh Wh from the seller for amount units."""

    at_s: float
    buyer: str
    seller: str
    wh: int
    amount: int


MONEY_EVERY_S = (8.0, 16.0)  # the operator funds or pays out a household this often
FUND_UNITS = (100, 2000)
PAYOUT_UNITS = (10, 500)
AGAIN = 0.4  # the share of moves the operator sends twice (a retry): the ledger takes a ref once


@dataclass(frozen=True)
class MoneyMove:
    """The operator moves money into or out of a household's account (docs/PROTOCOL.md §10):
    `spb-ledger fund|withdraw DIR METER AMOUNT --ref REF` at `at_s`, and once more at once
    if `again`: the ledger must take the reference once."""

    at_s: float
    kind: str  # "fund" or "withdraw"
    meter: str
    amount: int
    ref: str
    again: bool


def money_moves(seed: int, minutes: float, meters: tuple[str, ...], until_s: float | None = None) -> list[MoneyMove]:
    """The operator's moves of a run, in time order, from a generator of their own (the faults
    and direct trades of a seed stay what they were)."""
    rng = random.Random(f"money-{seed}")
    end = minutes * 60 if until_s is None else until_s
    plan: list[MoneyMove] = []
    t = rng.uniform(*MONEY_EVERY_S)
    while t < end:
        kind = rng.choice(("fund", "withdraw"))
        amount = rng.randint(*(FUND_UNITS if kind == "fund" else PAYOUT_UNITS))
        plan.append(
            MoneyMove(round(t, 1), kind, rng.choice(meters), amount, f"{seed}-{len(plan)}", rng.random() < AGAIN)
        )
        t += rng.uniform(*MONEY_EVERY_S)
    return plan


def schedule(seed: int, minutes: float, validators: int, meters: tuple[str, ...], hostile: str) -> list[Fault]:
    """The faults of a run, in time order: two lanes, each one fault at a time.

    In each lane every kind comes once first, in an order the seed shuffles (so even a
    one-minute run has every kind), then kinds the seed draws until the window of `minutes`
    is full. A second-lane fault that would take a validator down while the first lane has
    another one down is moved onto that same validator, or onto a meter.
    """
    rng = random.Random(seed)
    vs = tuple(f"v{i}" for i in range(validators))
    first = _lane(rng, minutes, FIRST_LANE, vs, meters, hostile)
    second = _lane(rng, minutes, SECOND_LANE, vs, meters, hostile)
    busy = [d for d in map(down, first) if d]
    placed = []
    for f in second:
        d = down(f)
        if d:
            overlapping = {v for v, start, end in busy if start < d[2] and d[1] < end}
            if len(overlapping) == 1:
                f = replace(f, target=overlapping.pop())
            elif overlapping:
                f = replace(f, target=rng.choice(meters))
        placed.append(f)
    return sorted(first + placed, key=lambda f: (f.at_s, KINDS.index(f.kind)))


def _lane(
    rng: random.Random,
    minutes: float,
    kinds: tuple[str, ...],
    vs: tuple[str, ...],
    meters: tuple[str, ...],
    hostile: str,
) -> list[Fault]:
    window = minutes * 60
    first = list(kinds)
    rng.shuffle(first)
    again = [k for k in kinds if k not in ONCE]
    faults: list[Fault] = []
    t = rng.uniform(*GAP_S)
    while True:
        kind = first.pop(0) if first else rng.choice(again)
        f = _draw(rng, kind, round(t, 1), vs, meters, hostile)
        if f.end_s > window and len(faults) >= len(kinds):
            return faults
        faults.append(f)
        t = f.end_s + rng.uniform(*GAP_S)


def _draw(
    rng: random.Random, kind: str, at_s: float, vs: tuple[str, ...], meters: tuple[str, ...], hostile: str
) -> Fault:
    """One fault of `kind` at `at_s`: its target, how long, how much."""
    if kind in (KILL_VALIDATOR, PAUSE_VALIDATOR):
        target = rng.choice(vs)
    elif kind in (KILL_METER, REVOKE_METER):
        target = rng.choice(meters)
    elif kind in SECOND_LANE:
        target = rng.choice(vs + meters)
    elif kind == BROKER_RESTART:
        target = "broker"
    else:
        target = hostile
    seconds = round(rng.uniform(*SPANS[kind]), 1) if kind in SPANS else 0.0
    amount = 0
    if kind == NET_DELAY:
        amount = rng.randint(*DELAY_MS)
    elif kind == CLOCK_JUMP:
        amount = rng.choice((-1, 1)) * rng.randint(*JUMP_MS)
    return Fault(at_s, kind, target, seconds, amount)


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
    funded: int = 0  # units its ledger took in by `fund`
    withdrawn: int = 0  # units it paid out by `payout`


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
    readings_unverified: list[str] = field(default_factory=list)  # failed §4 at the monitor: why
    readings_refused: int = 0  # the revoked meter's, after its revocation, that never came (expected)
    readings_after_revocation: int = 0  # the revoked meter's, after its revocation, that came anyway
    revoked: str = ""  # "m0007 at <ms>": the meter revoked mid-run
    revoked_seen_after: int = 0  # its transactions on the bus after the revocation
    revoked_accepted: list[str] = field(default_factory=list)  # ...that the ledger accepted
    revoked_through: list[str] = field(default_factory=list)  # its messages after: what, how long after
    hostile: list[tuple[str, str]] = field(default_factory=list)  # (what was sent, how the ledger answered)
    hostile_accepted: list[str] = field(default_factory=list)
    money_start: int = 0
    # The operator's funds and payouts: each command's outcome ("fund applied", "withdraw
    # rejected insufficient-funds", "fund no answer", ...), references the ledger applied that
    # the operator never sent, and references a command saw applied that the ledger lacks.
    money_outcomes: dict[str, int] = field(default_factory=dict)
    refs_unknown: list[str] = field(default_factory=list)
    refs_missing: list[str] = field(default_factory=list)
    validators: list[ValidatorEnd] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)  # at the clean stop


def verdict(r: Report) -> list[str]:
    """Every invariant the run broke, in words; [] if it held them all (exit 0)."""
    broken = []
    ends = [v.money for v in r.validators]
    if not ends or any(v.money != r.money_start + v.funded - v.withdrawn for v in r.validators):
        moved = [(v.funded, v.withdrawn) for v in r.validators]
        broken.append(f"money not conserved: {r.money_start} at the start, {ends} at the end, (in, out) {moved}")
    if len({(v.funded, v.withdrawn) for v in r.validators}) > 1:
        broken.append("the validators disagree on the money funded and paid out")
    if r.refs_unknown or r.refs_missing:
        broken.append(
            f"references applied but never sent {r.refs_unknown[:5]}, seen applied but absent {r.refs_missing[:5]}"
        )
    if r.settled_twice:
        broken.append(f"settled twice: {', '.join(r.settled_twice[:5])}")
    if r.unended:
        broken.append(f"{len(r.unended)} accepted transaction(s) never ended: {', '.join(r.unended[:5])}")
    if r.readings_lost:
        broken.append(f"{len(r.readings_lost)} reading(s) lost: {', '.join(r.readings_lost[:10])}")
    if r.readings_unverified:
        bad = r.readings_unverified
        broken.append(f"{len(bad)} reading(s) failed verification: {'; '.join(bad[:5])}")
    if r.revoked_accepted:
        broken.append(f"the ledger accepted the revoked meter's transactions: {', '.join(r.revoked_accepted[:5])}")
    failed = [f"{f.kind} {f.target}: {outcome}" for f, outcome in r.faults if outcome.startswith("failed")]
    if failed:
        broken.append(f"faults not applied: {'; '.join(failed)}")
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
    t.add_row(
        "readings received",
        str(r.readings_received),
        f"lost {len(r.readings_lost)}, failed verification {len(r.readings_unverified)}",
    )
    if r.revoked:
        t.add_row("revoked meter", r.revoked, "")
        t.add_row("  its readings after", str(r.readings_after_revocation), f"{r.readings_refused} refused (expected)")
        t.add_row("  its transactions after", str(r.revoked_seen_after), f"{len(r.revoked_accepted)} accepted")
        if r.revoked_through:
            t.add_row("  came through", str(len(r.revoked_through)), ", ".join(r.revoked_through[:4]))
    t.add_row("money at the start", str(r.money_start), "")
    for outcome, n in sorted(r.money_outcomes.items()):
        t.add_row(f"  operator {outcome}", str(n), "")
    for v in r.validators:
        t.add_row(f"{v.name} money at the end", str(v.money), f"funded {v.funded}, paid out {v.withdrawn}")
    for v in r.validators:
        t.add_row(f"{v.name} head", str(v.height), f"{v.head[:16]}…  audit {v.audit}")
    t.add_row("seed", str(r.seed), f"replay: make chaos SEED={r.seed} MINUTES={r.minutes:g}")
    return t


def main(argv: list[str] | None = None) -> int:
    from deploy.chaos_run import main as run_main  # processes and sockets only when run

    return run_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
