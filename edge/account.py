"""The household's money as the ledger tells it (docs/PROTOCOL.md §9.6, decision 0010): its
account status, checked like every ledger status, and what the agent may still spend.

Pure: the verifier and the clock come from the caller (edge.market_node, edge.agent_node);
the store keeps the newest status (edge.store.MeterStore.save_account).
"""

from __future__ import annotations

from collections.abc import Iterable

from edge.store import SENT, AccountRow, OrderRow
from wire import topics
from wire.messages import AccountStatus, Side
from wire.reasons import Reject
from wire.verify import Verifier


def accept(verifier: Verifier, topic: str, payload: bytes, now: int, account_pk: bytes) -> AccountRow:
    """The status on our account's topic as a row to keep, or Reject: not signed by a ledger
    validator, not an account status, or about another account than ours or its topic's
    (`type`: a validator never publishes one there). Ours is the current key only: after a
    rotation the old key's status says 0/0 for good, and its money is the new key's."""
    status = verifier.verify(payload, now, expect=AccountStatus).body
    if status.account != account_pk or topic != topics.account(account_pk):
        raise Reject("type", f"the status of account {status.account.hex()[:16]}... on {topic}")
    return AccountRow(status.balance, status.held, status.t, status.h, payload, status.account)


def spendable(balance: int, orders: Iterable[OrderRow]) -> int:
    """What a new bid may escrow: the free balance of the last status, less the escrow of our
    bids the ledger has not answered yet (SENT: maybe not in a block the status counted; if it
    was, counting it again only makes the agent bid less, never more than the money)."""
    pending = sum(row.wh * row.price for row in orders if row.side == Side.BID and row.state == SENT)
    return max(0, balance - pending)
