"""The demo's trading: households buy the producer's energy with `spb-meter ctp`, as a person would.

Each buyer's running meter does the rest on its own: it sends the CTP, counts the energy
imported once the ledger holds the money, confirms it with an ERC signed by a one-time
key, or cancels when the promise lapses. One trade asks for more energy than can arrive
before it expires, so the ledger refunds it. LedgerWatch shows what the ledger publishes,
every status checked against the validators of the genesis.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from broker.clock import wall_ms
from ledger.block import Block, BlockError, quorum
from wire import topics
from wire.messages import CtpState, Rejection, Status
from wire.reasons import Reject
from wire.verify import Verifier

FINAL = (CtpState.SETTLED, CtpState.REFUNDED, CtpState.REJECTED)


@dataclass
class LedgerWatch:
    """Statuses, blocks and the ledger's state, as an operator's monitor sees them."""

    console: Console
    verifier: Verifier
    states: dict[bytes, CtpState] = field(default_factory=dict)  # CTP id -> last status seen live
    validators: dict[str, str] = field(default_factory=dict)  # "vI" -> its last ledger/state payload
    blocks: int = 0
    rejects: int = 0
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
        if topic.startswith(topics.LEDGER_STATE_ALL[:-1]):
            validator = topic.rsplit("/", 1)[1]
            self.validators[validator] = payload.decode(errors="replace")
            self.console.print(f"[magenta]◆ ledger   {validator:8} {self.validators[validator]}[/]")
        elif topic == topics.LEDGER_BLOCKS:
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
        elif topic == topics.REJECTS:
            rejection = self.verifier.verify(payload, wall_ms(), expect=Rejection).body
            self.rejects += 1
            self.console.print(f"[red]◆ ledger   reject   {rejection.reason} ({rejection.msg.hex()[:12]}…)[/]")
        else:
            status = self.verifier.verify(payload, wall_ms(), expect=Status).body
            self.states[status.ctp] = status.state
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


def place(root: Path, order: Order, payee_hex: str, console: Console, timeout: float) -> str:
    """`spb-meter ctp` on the buyer's state dir; retried while its meter has no CoE yet."""
    args = [
        sys.executable,
        "-m",
        "edge.cli",
        "ctp",
        str(root / "meters" / order.buyer),
        payee_hex,
        str(order.amount),
        str(order.wh),
        "--expiry",
        str(order.expiry_s),
    ]
    console.print(
        f"[blue]$ spb-meter ctp meters/{order.buyer} <producer> {order.amount} {order.wh} --expiry {order.expiry_s}[/]"
    )
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.strip()
        if time.monotonic() > deadline:
            raise RuntimeError(done.stderr.strip())
        time.sleep(0.5)  # the meter is still fetching its first CoE (a command, not a test, waiting)


def trade(
    root: Path,
    plan: list[Order],
    payee_hex: str,
    watch: LedgerWatch,
    console: Console,
    timeout: float,
    outcomes: list[Outcome],
    done: threading.Event,
) -> None:
    """Place every order, then wait for each to end; sets `done` either way."""
    try:
        if not watch.wait_online(timeout):
            console.print("[red]the ledger did not come online[/]")
            return
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
    except RuntimeError as exc:
        console.print(f"[red]could not place a trade: {exc}[/]")
    finally:
        done.set()
