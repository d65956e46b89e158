"""When a validator may hand a status to the broker, pure: what keeps every retained status
the ledger writes moving forward (docs/CONSENSUS.md "Statuses only move forward", decision
0007): a CTP's status (spb/v1/status/{id}), and in a market chain an order's status
(spb/v1/market/{k}/order/{id}), an interval's result (spb/v1/market/{k}/result) and an
account's money (spb/v1/account/{key}, decision 0010).

Such a topic is written by whichever validator publishes, on its own connection, and the
broker keeps the last one it received. Three rules keep that last one the newest:
- **In block order.** A block's statuses go out only once every earlier block this
  validator decided has appeared on spb/v1/ledger/blocks, which its publisher sends after
  its statuses: so the broker has the older statuses before the newer ones (Gate).
- **Never behind.** Nothing goes out while the validator is catching up: not before the
  backlog of a new connection is read, not before the Replica says it is caught up, not
  while a later block than its own tip has been announced (Gate).
- **Late copies are the current ones.** What goes out late (a stand-in, an outbox left by a
  crash, a restore) is each topic's current status only, never one a later block superseded
  (`superseded`), and a copy that a later block can still supersede is followed by the new
  status from the same validator (ledger.service).

ledger.service applies them on MQTT; `lost_since` says what a restore must cover.
"""

from __future__ import annotations

from collections.abc import Callable

from ledger.market import Escrowed, OrderRecord, Result
from ledger.state import AccountRecord, CtpRecord, LedgerState
from wire import topics
from wire.messages import CtpState

# A block's statuses can reach the broker this long after its block time: stand-ins wait
# up to (n - 1) x 3 s, and a backlog of publishes can delay anything. A restore judged from
# the broker's copy of `online <h>` covers the statuses of blocks this much older than h.
LATE_MS = 120_000
ANNOUNCE_WAIT_S = 30.0  # a block's statuses wait at most this long for an earlier block's announcement
_STATUS = topics.status(bytes(16))[:-32]  # the CTP status topics' prefix
_MARKET = f"{topics.MARKET}/"  # the order status and result topics' prefix
_ACCOUNT = f"{topics.ACCOUNT}/"  # the account status topics' prefix


def lost_since(session_present: bool, stored: bytes | None, tip: int, block_time: Callable[[int], int]) -> int | None:
    """The block time from which the broker may have lost statuses (0: all of them), or None
    if it lost nothing: judged on connect from what the broker still retains on this
    validator's spb/v1/ledger/state/v{I} (`stored`, None if nothing), which the validator
    writes after the statuses it publishes. `tip` is its height now.

    - No session, or nothing retained: the broker lost everything.
    - `offline` (the will): the broker took it after everything this validator sent on its
      last connection, and a broker that restarts keeps it only with all of that.
    - `offline <h>` (a clean stop) with h at the tip: the same; the validator sent nothing after.
    - `online <h>` (or an older `offline <h>`): the broker lost what came after (it crashed
      and reloaded its last save): statuses of blocks from LATE_MS before block h on.
    - Anything else: the topic was written by someone else; all of them.
    """
    if not session_present or stored is None:
        return 0
    words = stored.split()
    if words == [topics.OFFLINE]:
        return None
    if len(words) != 2 or words[0] not in (topics.ONLINE, topics.OFFLINE) or not words[1].isdigit():
        return 0
    height = int(words[1])
    if height > tip:
        return 0  # not what this database wrote
    if words[0] == topics.OFFLINE and height == tip:
        return None
    return max(0, block_time(height) - LATE_MS) if height else 0


def is_status(topic: str) -> bool:
    """Whether a topic is a retained status the ledger writes: a CTP's, an order's, a result,
    an account's."""
    return topic.startswith(_STATUS) or topic.startswith(_MARKET) or topic.startswith(_ACCOUNT)


def ctp_of(topic: str) -> bytes | None:
    """The CTP id of a CTP status topic; None for any other topic."""
    return bytes.fromhex(topic[len(_STATUS) :]) if topic.startswith(_STATUS) else None


def order_of(topic: str) -> bytes | None:
    """The order id of an order status topic (spb/v1/market/{k}/order/{id}); None for any other."""
    return bytes.fromhex(topic.rsplit("/", 1)[1]) if topics.expected_type(topic) == "order" else None


def result_of(topic: str) -> int | None:
    """The interval of a result topic (spb/v1/market/{k}/result); None for any other."""
    return int(topic[len(_MARKET) :].split("/")[0]) if topics.expected_type(topic) == "cleared" else None


def account_of(topic: str) -> bytes | None:
    """The account key of an account status topic (spb/v1/account/{key}); None for any other."""
    return bytes.fromhex(topic[len(_ACCOUNT) :]) if topics.expected_type(topic) == "account" else None


def current(state: LedgerState, topic: str) -> CtpRecord | OrderRecord | Result | AccountRecord | None:
    """What the status on this topic is now made from: the CTP's, order's, interval's or
    account's record; None if there is none (yet), or the topic is no status."""
    ctp_id = ctp_of(topic)
    if ctp_id is not None:
        return state.ctps.get(ctp_id)
    market = state.market
    if market is None:
        return None
    pk = account_of(topic)
    if pk is not None:
        return state.account(pk)
    order_id = order_of(topic)
    if order_id is not None:
        return market.orders.get(order_id)
    k = result_of(topic)
    return None if k is None else market.results.get(k)


def superseded(state: LedgerState, topic: str, height: int) -> bool:
    """Whether a status on this topic from block `height` is older than the current one.
    (A `rejected` CTP status carries no height: pass 0, and a CTP held since supersedes it.)"""
    record = current(state, topic)
    return record is not None and record.height > height


def open_to_change(state: LedgerState, topic: str) -> bool:
    """Whether a later block can still supersede the current status on this topic: a `held`
    CTP, or a `rejected` id that a CTP can still take; a `sealed` or `open` order (a reveal,
    a withdrawal or the clearing moves it); an account (any block may move its money).
    Settled and refunded CTPs, orders in any other state and results are final."""
    record = current(state, topic)
    if isinstance(record, AccountRecord):
        return True
    if isinstance(record, CtpRecord):
        return record.state == CtpState.HELD
    if isinstance(record, OrderRecord):
        return record.state in Escrowed
    return record is None and ctp_of(topic) is not None


class Gate:
    """Whether a validator's statuses may go to the broker now (the first two rules above)."""

    def __init__(self, validators: int):
        self.ordered = validators > 1  # one validator is its only publisher: its connection keeps the order
        self.reading = True  # a connection whose backlog (and our retained state) is not read yet
        self.announced = 0  # the highest block seen on spb/v1/ledger/blocks
        self.unannounced: set[int] = set()  # blocks this process decided, not yet seen announced

    def decided(self, height: int) -> None:
        if self.ordered and height > self.announced:  # a block caught up may have been announced already
            self.unannounced.add(height)

    def announced_block(self, height: int) -> None:
        """Block `height` appeared on spb/v1/ledger/blocks with a quorum of seals. Its publisher
        sent it after its statuses, and (by this rule) after the earlier blocks' announcements."""
        self.announced = max(self.announced, height)
        self.unannounced = {h for h in self.unannounced if h > height}

    def open(self, height: int, tip: int, caught_up: bool, overdue: bool = False) -> bool:
        """Whether statuses of block `height` may go now (a restore: height = tip + 1).
        `overdue`: they waited ANNOUNCE_WAIT_S for an earlier block's announcement, which
        all its publishers may have died before sending: in order, but without it."""
        if self.reading or not caught_up or tip < self.announced:
            return False
        return overdue or all(h >= height for h in self.unannounced)
