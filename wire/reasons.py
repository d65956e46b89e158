"""The reason codes of docs/PROTOCOL.md §4: the only words a rejection may use."""

from __future__ import annotations

# Stateless, in the normative order of §4 (first failure wins).
STATELESS = ("decode", "noncanonical", "type", "schema", "cert", "coe", "proof", "signature")
# Stateful, decided by the ledger after the stateless checks.
STATEFUL = (
    "unknown-ctp",
    "duplicate",
    "replay",
    "insufficient-funds",
    "not-held",
    "meter-mismatch",
    "not-payer",
    "energy-short",
    "expired",
    "too-early",
    "unknown-account",
)
# Not a verdict on the message (an extension of §4, docs/decisions/0008-bounded-inputs.md):
# the ledger had no room for it and did not decide it; the sender may send it again later.
BUSY = "busy"
TRANSIENT = (BUSY,)
REASONS = frozenset(STATELESS + STATEFUL + TRANSIENT)


class Reject(Exception):
    """A message failed a check; `reason` is a §4 code, `detail` is for humans and logs."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"not a reason code: {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
