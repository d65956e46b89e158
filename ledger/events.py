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


Event = Transaction | ConsensusMessage | BlockAnnounced
