"""The demo's trading, as a person would: households buy the producer's energy with `spb-meter
ctp`, then on the market: the producer asks and the households bid for one interval.

Each buyer's running meter does the rest on its own: it sends the CTP, counts the energy
imported once the ledger holds the money, confirms it with an ERC signed by a one-time
key, or cancels when the promise lapses. One trade asks for more energy than can arrive
before it expires, so the ledger refunds it. Every trade settles only against energy the
producer's meter proved it exported (its export records, docs/PROTOCOL.md §9.4): an ERC
that comes first is refused `oversold` and sent again, which is normal, not an error.
The market's fills are held trades like CTPs, confirmed the same way. LedgerWatch shows what
the ledger publishes, every status, order and result checked against the validators of the
genesis, every export record against the community CA.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from broker.clock import wall_ms
from ledger.block import Block, BlockError, quorum
from wire import messages, topics
from wire.messages import Cleared, CtpState, Export, Rejection, Status
from wire.reasons import Reject
from wire.verify import Verifier

FINAL = (CtpState.SETTLED, CtpState.REFUNDED, CtpState.REJECTED)


@dataclass
class LedgerWatch:
    """Statuses, blocks, the market and the ledger's state, as an operator's monitor sees them."""

    console: Console
    verifier: Verifier
    states: dict[bytes, CtpState] = field(default_factory=dict)  # CTP id -> last status seen live
    payees: dict[bytes, bytes] = field(default_factory=dict)  # trade id -> payee, from statuses that name it
    validators: dict[str, str] = field(default_factory=dict)  # "vI" -> its last ledger/state payload
    cleared: dict[int, Cleared] = field(default_factory=dict)  # interval -> its clearing result
    blocks: int = 0
    rejects: int = 0
    oversold: int = 0  # ERCs refused until the seller's meter proves export: sent again, not a failure
    changed: threading.Condition = field(default_factory=threading.Condition)

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if retained:
            return  # earlier runs' statuses and states: not this run's
        try:
            self._show(topic, payload)
        except Reject as exc:
            self.rejects += 1
            self.console.print(f"[red]✗ ledger   {topic} rejected: {exc.reason}[/] {exc.detail}")
        with self.changed:
            self.changed.notify_all()

    def _show(self, topic: str, payload: bytes) -> None:
        typ = topics.expected_type(topic)
        if topic.startswith(topics.LEDGER_STATE_ALL[:-1]):
            validator = topic.rsplit("/", 1)[1]
            self.validators[validator] = payload.decode(errors="replace")
            self.console.print(f"[magenta]◆ ledger   {validator:8} {self.validators[validator]}[/]")
        elif topic == topics.LEDGER_BLOCKS:
            self._block(payload)
        elif typ == "reject":
            self._rejection(payload)
        elif typ == "status":
            self._status(payload)
        elif typ == "order":
            order = self.verifier.verify(payload, wall_ms(), expect=messages.Order).body
            terms = f"{order.wh} Wh at {order.price}" if order.wh is not None else f"deposit {order.deposit}"
            self.console.print(
                f"[cyan]◆ market   #{order.k} {order.side:3} {order.id.hex()[:12]}… {terms}: {order.state}"
                f", {order.filled} Wh filled  validator signature ✓[/]"
            )
        elif typ == "cleared":
            result = self.verifier.verify(payload, wall_ms(), expect=Cleared).body
            self.cleared[result.k] = result
            self.console.print(
                f"[bold cyan]◆ market   #{result.k} cleared: {describe(result)}  validator signature ✓[/]"
            )
        elif typ == "export":
            export = self.verifier.verify(payload, wall_ms(), expect=Export).body
            self.console.print(
                f"[green]◆ export   {export.meter} proves {export.wh} Wh exported in #{export.k} "
                f"({export.total} Wh in all)  devcert ✓ signature ✓[/]"
            )
        # Anything else under spb/v1 is not the ledger's to show here.

    def _block(self, payload: bytes) -> None:
        try:
            block = Block.from_chain_bytes(payload)
        except BlockError as exc:
            raise Reject("decode", f"not a block: {exc}") from None
        if block.valid_seals(self.verifier.validators) < quorum(len(self.verifier.validators)):
            raise Reject("signature", f"block #{block.header.height} is not sealed by a quorum of validators")
        self.blocks += 1
        self.console.print(
            f"[magenta]◆ ledger   block    #{block.header.height}: {len(block.trades)} trade(s), "
            f"{len(payload)} B on chain, {len(block.seals)} seals ✓[/]"
        )

    def _rejection(self, payload: bytes) -> None:
        rejection = self.verifier.verify(payload, wall_ms(), expect=Rejection).body
        if rejection.reason == "oversold":
            self.oversold += 1
            self.console.print(
                f"[yellow]◆ ledger   reject   oversold ({rejection.msg.hex()[:12]}…): the seller's meter has not "
                "proved that much export yet; the ERC is sent again after its next export record[/]"
            )
            return
        self.rejects += 1
        self.console.print(f"[red]◆ ledger   reject   {rejection.reason} ({rejection.msg.hex()[:12]}…)[/]")

    def _status(self, payload: bytes) -> None:
        status = self.verifier.verify(payload, wall_ms(), expect=Status).body
        self.states[status.ctp] = status.state
        if status.payee is not None:
            self.payees.setdefault(status.ctp, status.payee)
        self.console.print(
            f"[magenta]◆ ledger   status   CTP {status.ctp.hex()[:12]}… {status.state}"
            f"{f' in block #{status.h}' if status.h else ''}  validator signature ✓[/]"
        )

    @property
    def ledger(self) -> str:
        return ", ".join(f"{v} {state}" for v, state in sorted(self.validators.items())) or "?"

    def all_offline(self, validators: int) -> bool:
        """Every validator said it stopped cleanly."""
        return len(self.validators) == validators and all(s.startswith("offline") for s in self.validators.values())

    def wait_final(self, ctp_id: bytes, timeout: float) -> CtpState | None:
        with self.changed:
            self.changed.wait_for(lambda: self.states.get(ctp_id) in FINAL, timeout)
            return self.states.get(ctp_id)

    def wait_cleared(self, k: int, timeout: float) -> Cleared | None:
        with self.changed:
            self.changed.wait_for(lambda: k in self.cleared, timeout)
            return self.cleared.get(k)

    def wait_paid(self, payee: bytes, count: int, besides: set[bytes], timeout: float) -> list[bytes]:
        """The first `count` trades paying `payee` other than `besides`, once each is final (or
        the timeout passed): a fill's trade is known by its held status, which names its payee."""

        def paid() -> list[bytes]:
            return [t for t, p in self.payees.items() if p == payee and t not in besides][:count]

        with self.changed:
            self.changed.wait_for(
                lambda: len(paid()) == count and all(self.states.get(t) in FINAL for t in paid()), timeout
            )
            return paid()

    def wait_online(self, timeout: float) -> bool:
        """A quorum of validators is online: the ledger can commit."""
        need = quorum(len(self.verifier.validators))
        with self.changed:
            return self.changed.wait_for(
                lambda: sum(s.startswith("online") for s in self.validators.values()) >= need, timeout
            )


@dataclass(frozen=True)
class Order:
    buyer: str  # meter id
    amount: int
    wh: int
    expiry_s: int
    expect: CtpState  # settled, or refunded for the one that cannot be delivered in time


def orders(n: int, buyers: tuple[str, ...], wh_per_s: int) -> list[Order]:
    """n trades, buyers taking turns; the last asks for 20× what can arrive before it expires."""
    plan = [Order(buyers[i % len(buyers)], 3 * (i + 10), 10, 120, CtpState.SETTLED) for i in range(n - 1)]
    return [*plan, Order(buyers[(n - 1) % len(buyers)], 5, 20 * 15 * wh_per_s, 15, CtpState.REFUNDED)]


@dataclass
class Outcome:
    order: Order
    ctp: str = ""
    state: str = "not placed"  # then "placed", and a CtpState or "open" (no final status in time)

    @property
    def ok(self) -> bool:
        return self.state == self.order.expect


def describe(result: Cleared) -> str:
    """`green 3 × 6 Wh, open 2 × 4 Wh, 2 fill(s)`: each product's price (units per Wh) and Wh."""
    products = (f"{name} {'-' if price is None else price} × {wh} Wh" for name, (price, wh) in _products(result))
    return f"{', '.join(products)}, {result.fills} fill(s)"


def _products(result: Cleared) -> tuple[tuple[str, list], ...]:
    return (("green", result.green), ("open", result.open))


def spb_meter(root: Path, meter: str, command: list[str], console: Console, timeout: float) -> str:
    """`spb-meter COMMAND meters/METER ...` on a running meter's state dir, as a person types it;
    retried while it fails (the meter is still fetching its first CoE). Its output, stripped."""
    args = [sys.executable, "-m", "edge.cli", command[0], str(root / "meters" / meter), *command[1:]]
    console.print(f"[blue]$ spb-meter {command[0]} meters/{meter} {' '.join(command[1:])}[/]")
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.strip()
        if time.monotonic() > deadline:
            raise RuntimeError(done.stderr.strip())
        time.sleep(0.5)  # a command, not a test, waiting


def place(root: Path, order: Order, payee_hex: str, console: Console, timeout: float) -> str:
    """`spb-meter ctp` on the buyer's state dir: the CTP's id."""
    command = ["ctp", payee_hex, str(order.amount), str(order.wh), "--expiry", str(order.expiry_s)]
    return spb_meter(root, order.buyer, command, console, timeout)


def trade(
    root: Path,
    plan: list[Order],
    payee_hex: str,
    watch: LedgerWatch,
    console: Console,
    timeout: float,
    outcomes: list[Outcome],
) -> bool:
    """Place every order, then wait for each to end; False if the ledger never came online or a
    trade could not be placed."""
    try:
        if not watch.wait_online(timeout):
            console.print("[red]the ledger did not come online[/]")
            return False
        for order in plan:
            outcome = Outcome(order)
            outcomes.append(outcome)
            outcome.ctp = place(root, order, payee_hex, console, timeout)
            outcome.state = "placed"
            console.print(
                f"[blue]  CTP {outcome.ctp[:12]}… by {order.buyer}: {order.amount} units for "
                f"{order.wh} Wh within {order.expiry_s} s[/]"
            )
        for outcome in outcomes:
            outcome.state = watch.wait_final(bytes.fromhex(outcome.ctp), timeout + outcome.order.expiry_s) or "open"
        return True
    except RuntimeError as exc:
        console.print(f"[red]could not place a trade: {exc}[/]")
        return False


@dataclass(frozen=True)
class MarketOrder:
    """One line of the market's plan: `spb-meter ask` (the meter's registered source) or `bid`."""

    meter: str
    side: str  # ask | bid
    wh: int
    price: int  # units per Wh: the least an ask takes, the most a bid pays
    green: bool = False  # a bid for renewable energy only

    def command(self, k: int) -> list[str]:
        return [self.side, str(self.wh), str(self.price), *(["--green"] if self.green else []), "--interval", str(k)]


@dataclass
class MarketOutcome:
    """What became of the market's plan: the interval, its clearing and its fills' trades."""

    k: int | None = None
    result: Cleared | None = None
    fills: dict[bytes, str] = field(default_factory=dict)  # fill trade id -> its final state, or "open"

    @property
    def ok(self) -> bool:
        """Cleared with fills, and every fill's trade settled: the seller delivered and was paid."""
        return (
            self.result is not None
            and self.result.fills > 0
            and len(self.fills) == self.result.fills
            and all(state == CtpState.SETTLED for state in self.fills.values())
        )


def market(
    root: Path,
    plan: tuple[MarketOrder, ...],
    seller_pk: bytes,
    interval_s: int,
    watch: LedgerWatch,
    console: Console,
    outcome: MarketOutcome,
    besides: set[bytes],
) -> None:
    """Place the plan for the interval after next, so every order is in before its gate
    (orders for interval k close when k starts), then wait for the interval's clearing and for
    its fills' trades (those paying `seller_pk`, other than `besides`) to end."""
    interval_ms = interval_s * 1000
    outcome.k = k = wall_ms() // interval_ms + 2
    console.print(
        f"[bold blue]market: orders for interval #{k}, whose gate closes in {k * interval_ms - wall_ms()} ms[/]"
    )
    try:
        for order in plan:
            placed = spb_meter(root, order.meter, order.command(k), console, interval_s)
            console.print(f"[blue]  {order.side} {placed[:12]}… by {order.meter}: {order.wh} Wh at {order.price}[/]")
    except RuntimeError as exc:
        console.print(f"[red]could not place an order: {exc}[/]")
        return
    # Cleared in the first block at or after the gate (after the reveal window if a bid is sealed).
    wait_s = (k * interval_ms - wall_ms()) / 1000 + 2 * interval_s + 30
    outcome.result = watch.wait_cleared(k, wait_s)
    if outcome.result is None:
        console.print(f"[red]interval #{k} was not cleared within {wait_s:.0f} s[/]")
        return
    # A fill's trade expires `grace` (one) interval after its interval ends.
    paid = watch.wait_paid(seller_pk, outcome.result.fills, besides, 3 * interval_s + 30)
    outcome.fills = {t: watch.states.get(t) or "open" for t in paid}


def session(trading: Callable[[], bool], then: Callable[[], None], done: threading.Event) -> None:
    """The direct trades, then (if they could be placed) the market; sets `done` either way."""
    try:
        if trading():
            then()
    finally:
        done.set()
