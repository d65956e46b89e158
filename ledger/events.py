"""What paho's network thread hands the ledger service's main loop, one small frozen class
per kind (as h11's events), so the loop dispatches on types rather than on tagged tuples."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Transaction:
    """A message from spb/v1/tx/{typ}; `ack` sends its PUBACK once its block is on disk."""

    typ: str
    raw: bytes
    ack: Callable[[], None]


@dataclass(frozen=True, slots=True)
class ConsensusMessage:
    """A message from spb/v1/consensus/..., acknowledged on arrival."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class BlockAnnounced:
    """A block on spb/v1/ledger/blocks: its publisher announced its statuses."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class StatusSeen:
    """A status a stand-in reads back to check that an announced block's statuses went out."""

    topic: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class ReadBack:
    """The echo of this validator's probe on a new connection: what the broker kept before it
    (see LedgerService._on_connect)."""

    connection: int  # which connect; a later one makes it stale
    session: bool  # the broker had our session
    stored: bytes | None  # what it retained on our spb/v1/ledger/state/v{I}, if anything
    resent: list[str]  # status topics in flight when the connection dropped


Event = Transaction | ConsensusMessage | BlockAnnounced | StatusSeen | ReadBack
