"""Shared material for ledger tests: a ledger dir for a simulated community, a ledger
service on a real broker, and decoding what it publishes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from ledger.service import LedgerService
from ledger.validator import ValidatorIdentity
from ledger.workload import YEAR_MS, SimCommunity, pk
from tests.support.bus import Inbox, wait_for
from wire import topics
from wire.messages import Rejection, Revoke, Status, open_message

NOW = 1_800_000_000_000  # a fixed clock for pure tests: 2027-01-15
COE_T = NOW - YEAR_MS  # when SimCommunity issues every CoE


def ctp_id(raw: bytes) -> bytes:
    return open_message(raw, "ctp").body.id


def revoke(c: SimCommunity, meter: int, t: int, *, signer=None, iss=None) -> bytes:
    """The revocation of household `meter`'s device key from time t on, naming `iss` (default: the CA)."""
    h = c.households[meter]
    return Revoke(meter=h.meter_id, pk=pk(h.device), iss=pk(iss or c.ca), t=t).sign(signer or c.ca)


def ledger_dir(root: Path, community: SimCommunity, balance: int = 1_000, block_ms: int = 50) -> Path:
    """A ledger dir (genesis + validator 0's key) whose accounts are the community's households."""
    return community.ledger_dir(root, balance, block_ms)


class RunningLedger:
    """A LedgerService on its own thread, as `spb-ledger run` runs it; stop() joins it."""

    def __init__(self, root: Path, port: int, **options):
        self.service = LedgerService(ValidatorIdentity.load(root, 0), "127.0.0.1", port, **options)
        self.thread = threading.Thread(target=self.service.run, name="ledger", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 10) -> None:
        self.service.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the ledger did not stop"


def signed_trades(community: SimCommunity, count: int, now: int) -> list[tuple[bytes, bytes, int, int, int]]:
    """`count` pre-signed trades (ctp, erc, payer, payee, amount) in which every household
    buys and sells; each ERC uses the key its CTP reserved, and the CTPs hold for an hour."""
    households = len(community.households)
    trades = []
    for i in range(count):
        payer = i % households
        payee = (payer + 1 + i % (households - 1)) % households
        amount = 1 + i % 50
        ctp = community.ctp(payer, payee, amount=amount, wh=3, exp=now + 3_600_000)
        trades.append((ctp, community.erc(ctp), payer, payee, amount))
    return trades


def publish_trades(client, trades: list, acked: bool = False) -> None:
    """Each ERC right after its CTP: one publisher, so the broker keeps the order. With
    `acked`, return once the broker has acknowledged every one: it holds them for its
    subscribers, whether these read them yet or not."""
    sent = []
    for ctp, erc, *_ in trades:
        sent.append(client.publish(topics.TX_CTP, ctp))
        sent.append(client.publish(topics.TX_ERC, erc))
    if acked:
        unacked = [info.mid for info in sent if not client.wait_acked(info, 60)]
        assert not unacked, f"the broker acknowledged {len(sent) - len(unacked)} of {len(sent)} publishes"


def settled_accounts(community: SimCommunity, balance: int, trades: list) -> dict[bytes, tuple[int, int]]:
    """Each account's (balance, held) once every trade settled exactly once."""
    expected = {pk(h.account): balance for h in community.households}
    for _, _, payer, payee, amount in trades:
        expected[pk(community.households[payer].account)] -= amount
        expected[pk(community.households[payee].account)] += amount
    return {account: (units, 0) for account, units in expected.items()}


def said_online(inbox: Inbox, since: int = 0, index: int = 0) -> bool:
    """Whether validator `index` said `online` in inbox.messages[since:] (inbox subscribed to
    its spb/v1/ledger/state topic). It says so once subscribed: from then on the broker keeps
    transactions for it, so a test publishes only after this."""
    topic = topics.ledger_state(index)
    return any(t == topic and p.startswith(b"online") for t, p, _ in inbox.messages[since:])


def wait_online(inbox: Inbox, since: int = 0, index: int = 0, logs: Callable[[], str] = str) -> None:
    """Wait until said_online(); `logs` adds the processes' logs to a failure."""
    wait_for(lambda: said_online(inbox, since, index), 30, lambda: f"validator {index} online{logs()}")


def statuses(inbox: Inbox) -> list[Status]:
    """Every status in an inbox subscribed to spb/v1/status/+, in arrival order."""
    return [open_message(p, "status").body for t, p, _ in inbox.messages if t.startswith(f"{topics.ROOT}/status/")]


def rejections(inbox: Inbox) -> list[Rejection]:
    return [open_message(p, "reject").body for t, p, _ in inbox.messages if t == topics.REJECTS]


def wait_status(inbox: Inbox, ctp_id: bytes, state: str, timeout: float = 10) -> Status:
    """The first status of `ctp_id` in `state`, once it has arrived."""

    def found():
        return next((s for s in statuses(inbox) if s.ctp == ctp_id and s.state == state), None)

    return wait_for(
        found,
        timeout,
        lambda: f"{state} for {ctp_id.hex()}; saw {[(s.ctp.hex()[:8], s.state) for s in statuses(inbox)]}",
    )


def wait_reject(inbox: Inbox, msg_hash: bytes, timeout: float = 10) -> Rejection:
    def found():
        return next((r for r in rejections(inbox) if r.msg == msg_hash), None)

    return wait_for(
        found,
        timeout,
        lambda: f"a reject of {msg_hash.hex()[:16]}; saw {[(r.msg.hex()[:8], r.reason) for r in rejections(inbox)]}",
    )


class Chain:
    """A validator's database built block by block in-process, as the service builds it."""

    def __init__(self, root: Path, community: SimCommunity, balance: int = 1_000):
        from ledger.node import LedgerNode

        ledger_dir(root, community, balance)
        self.node = LedgerNode(ValidatorIdentity.load(root, 0))
        self.identity, self.store, self.state, self.verifier = (
            self.node.identity,
            self.node.store,
            self.node.state,
            self.node.verifier,
        )

    def block(self, t: int, *messages: tuple[str, bytes]) -> list[str | None]:
        """Decide `messages` ((typ, raw) pairs) in one block at time t; their reject reasons."""
        assert t > self.state.t, "a test block must be later than the last"
        return self.node.decide(list(messages), t).reasons
