"""The demo's trading: the two households trade through the ledger with their own keys.

Until the meter firmware makes CTPs and ERCs itself (next issue), this does it on the
households' behalf with the keys `spb-deploy provision` wrote: the buyer pays for energy
(CTP), its meter confirms receipt with a one-time key vouched for by the other meter (ERC),
and a second promise is left to expire so the ledger refunds it. LedgerWatch shows what
the ledger publishes, every status checked against the validators of the genesis.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from rich.console import Console

from broker import topics
from broker.client import BusClient
from broker.clock import wall_ms
from broker.messages import open_message
from broker.reasons import Reject
from broker.verify import Verifier
from deploy.simulate import SimCommunity
from ledger.block import Block, BlockError

BUYER, SELLER = 0, 1  # m0001 imports, m0002 exports (deploy.demo.METERS)
EXPIRING_MS = 1_500


@dataclass
class LedgerWatch:
    """Statuses, blocks and the ledger's state, as an operator's monitor sees them."""

    console: Console
    verifier: Verifier
    states: dict[bytes, str] = field(default_factory=dict)  # CTP id -> last status seen live
    ledger: str = "?"
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
        if topic == topics.LEDGER_STATE:
            self.ledger = payload.decode(errors="replace")
            self.console.print(f"[magenta]◆ ledger   state    {self.ledger}[/]")
        elif topic == topics.LEDGER_BLOCKS:
            try:
                block = Block.from_chain_bytes(payload)
            except BlockError as exc:
                raise Reject("decode", f"not a block: {exc}") from None
            if not block.valid_seals(self.verifier.validators):
                raise Reject("signature", f"block #{block.header.height} is not sealed by a validator")
            self.blocks += 1
            self.console.print(f"[magenta]◆ ledger   block    #{block.header.height}: {len(block.trades)} trade(s), "
                               f"{len(payload)} B on chain, sealed ✓[/]")
        elif topic == topics.REJECTS:
            rejection = self.verifier.verify(payload, wall_ms(), expect="reject").body
            self.rejects += 1
            self.console.print(f"[red]◆ ledger   reject   {rejection.reason} ({rejection.msg.hex()[:12]}…)[/]")
        else:
            status = self.verifier.verify(payload, wall_ms(), expect="status").body
            self.states[status.ctp] = status.state
            self.console.print(f"[magenta]◆ ledger   status   CTP {status.ctp.hex()[:12]}… {status.state}"
                               f"{f' in block #{status.h}' if status.h else ''}  validator signature ✓[/]")

    def wait_state(self, ctp_id: bytes, state: str, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.states.get(ctp_id) == state, timeout)

    def wait_online(self, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.ledger.startswith("online"), timeout)


@dataclass
class Trades:
    settled: int = 0
    refunded: int = 0
    done: threading.Event = field(default_factory=threading.Event)


def trade(community: SimCommunity, bus: BusClient, watch: LedgerWatch, console: Console, timeout: float,
          result: Trades) -> None:
    """One trade that settles and one promise that expires; sets result.done either way."""
    try:
        if not watch.wait_online(timeout):
            console.print("[red]the ledger did not come online[/]")
            return
        now = wall_ms()
        paid = community.ctp(BUYER, SELLER, amount=30, wh=10, exp=now + 60_000)
        lapsed = community.ctp(BUYER, SELLER, amount=5, wh=2, exp=now + EXPIRING_MS)
        for ctp, what in ((paid, "30 units for 10 Wh"), (lapsed, f"5 units for 2 Wh, expiring in {EXPIRING_MS} ms")):
            console.print(f"[blue]$ {community.households[BUYER].meter_id} pays "
                          f"{community.households[SELLER].meter_id} {what}: CTP[/]")
            bus.publish(topics.TX_CTP, ctp)
        paid_id, lapsed_id = (open_message(c, "ctp").body.id for c in (paid, lapsed))
        if watch.wait_state(paid_id, "held", timeout):
            console.print(f"[blue]$ {community.households[BUYER].meter_id}'s meter confirms the 10 Wh "
                          f"with one-time key #0 of a batch its peer vouched for: ERC[/]")
            bus.publish(topics.TX_ERC, community.erc(paid))
            result.settled += watch.wait_state(paid_id, "settled", timeout)
        result.refunded += watch.wait_state(lapsed_id, "refunded", timeout)
    finally:
        result.done.set()
